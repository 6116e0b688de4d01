//! BSON values inside JSON store values.
//!
//! Store values are JSON so an operator can read them with `etcdctl get`. BSON values that must
//! keep their exact type (an `_id` bound is an `Int64` or an `ObjectId`, not "a number") are
//! written as MongoDB canonical Extended JSON and read back losslessly.

use bson::{Bson, Document, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A BSON value stored as canonical Extended JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtBson(pub Bson);

impl Serialize for ExtBson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.clone().into_canonical_extjson().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ExtBson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Bson::try_from(value).map(ExtBson).map_err(serde::de::Error::custom)
    }
}

/// A BSON document stored as canonical Extended JSON.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExtDoc(pub Document);

impl Serialize for ExtDoc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Bson::Document(self.0.clone()).into_canonical_extjson().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ExtDoc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match Bson::try_from(value).map_err(serde::de::Error::custom)? {
            Bson::Document(doc) => Ok(ExtDoc(doc)),
            other => Err(serde::de::Error::custom(format!("expected a document, found {:?}", other.element_type()))),
        }
    }
}

/// A MongoDB operation time (`Timestamp(t, i)`), ordered like MongoDB orders optimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct OpTime {
    /// Seconds since the epoch.
    pub t: u32,
    /// Ordinal within the second.
    pub i: u32,
}

impl From<Timestamp> for OpTime {
    fn from(ts: Timestamp) -> Self {
        Self { t: ts.time, i: ts.increment }
    }
}

impl From<OpTime> for Timestamp {
    fn from(op: OpTime) -> Self {
        Timestamp { time: op.t, increment: op.i }
    }
}

impl std::fmt::Display for OpTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Timestamp({}, {})", self.t, self.i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId};

    #[test]
    fn typed_values_survive_a_json_round_trip() {
        let values = [
            Bson::Int32(5),
            Bson::Int64(5),
            Bson::Double(5.0),
            Bson::ObjectId(ObjectId::new()),
            Bson::String("x".into()),
            Bson::MinKey,
            Bson::MaxKey,
            Bson::Decimal128("1.5".parse().unwrap()),
            Bson::Document(doc! {"a": 1_i64, "b": [1, "two"]}),
        ];
        for value in values {
            let json = serde_json::to_string(&ExtBson(value.clone())).unwrap();
            let back: ExtBson = serde_json::from_str(&json).unwrap();
            assert_eq!(back.0, value, "{json}");
        }
        let doc = ExtDoc(doc! {"_data": "8264ab"});
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(serde_json::from_str::<ExtDoc>(&json).unwrap(), doc);
        assert!(serde_json::from_str::<ExtDoc>("5").is_err());
    }

    #[test]
    fn optimes_order_like_mongodb() {
        let a = OpTime { t: 10, i: 5 };
        let b = OpTime { t: 11, i: 1 };
        assert!(a < b);
        assert!(OpTime { t: 10, i: 6 } > a);
        let ts: Timestamp = a.into();
        assert_eq!(OpTime::from(ts), a);
    }
}
