//! Parsing of request bodies, with errors that say exactly what is wrong and where.
//!
//! Bodies are read as raw bytes whatever the `Content-Type` (mongosync's documented calls use
//! `curl --data`, which sends `application/x-www-form-urlencoded`). A body must be one JSON
//! object; endpoints without parameters also accept an empty body. Trailing commas before `]`
//! or `}` are tolerated, because mongosync's own `/start` examples have them.

use clustersync_common::model::StartOptions;
use serde_json::{Map, Value};

use crate::control::ControlError;

/// Top-level fields of the `/start` body.
pub const START_FIELDS: [&str; 9] = [
    "source",
    "destination",
    "buildIndexes",
    "enableUserWriteBlocking",
    "includeNamespaces",
    "excludeNamespaces",
    "reversible",
    "sharding",
    "verification",
];

/// Values of `buildIndexes`.
pub const BUILD_INDEXES_VALUES: [&str; 5] =
    ["beforeDataCopy", "afterDataCopy", "excludeHashed", "excludeHashedAfterCopy", "never"];

/// String values of `enableUserWriteBlocking` (booleans are accepted too).
pub const WRITE_BLOCKING_VALUES: [&str; 3] = ["sourceAndDestination", "destinationOnly", "none"];

/// "a string", "an array", ... for messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Removes commas that directly precede `]` or `}` (outside strings).
fn strip_trailing_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut pending_comma: Option<String> = None;
    for character in text.chars() {
        if in_string {
            out.push(character);
            if escaped {
                escaped = false;
            } else if character == '\\' {
                escaped = true;
            } else if character == '"' {
                in_string = false;
            }
            continue;
        }
        if let Some(held) = pending_comma.as_mut() {
            if character.is_whitespace() {
                held.push(character);
                continue;
            }
            let held = pending_comma.take().unwrap_or_default();
            if character == ']' || character == '}' {
                // Drop the comma, keep the whitespace (so positions in later errors stay close).
                out.push_str(&held[1..]);
            } else {
                out.push_str(&held);
            }
        }
        match character {
            ',' => pending_comma = Some(",".to_string()),
            '"' => {
                in_string = true;
                out.push(character);
            }
            _ => out.push(character),
        }
    }
    if let Some(held) = pending_comma {
        out.push_str(&held);
    }
    out
}

/// Parses a body into a JSON object. `Ok(None)` for an empty (or all-whitespace) body.
///
/// # Errors
///
/// `InvalidRequest` for malformed JSON (with line and column) or a non-object.
pub fn parse_object(bytes: &[u8]) -> Result<Option<Map<String, Value>>, ControlError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|error| ControlError::invalid_request(format!("the request body is not UTF-8: {error}")))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(strict_error) => serde_json::from_str(&strip_trailing_commas(text)).map_err(|_| {
            ControlError::invalid_request(format!("the request body is not valid JSON: {strict_error}"))
        })?,
    };
    match value {
        Value::Object(object) => Ok(Some(object)),
        other => Err(ControlError::invalid_request(format!(
            "the request body must be a JSON object, got {}",
            json_type(&other)
        ))),
    }
}

/// Checks the body of an endpoint without parameters: nothing, or `{}`.
///
/// # Errors
///
/// `InvalidRequest` for malformed JSON, a non-object, or any field.
pub fn parse_empty(endpoint: &str, bytes: &[u8]) -> Result<(), ControlError> {
    match parse_object(bytes)? {
        None => Ok(()),
        Some(object) if object.is_empty() => Ok(()),
        Some(object) => {
            let fields: Vec<String> = object.keys().map(|key| format!("{key:?}")).collect();
            Err(ControlError::invalid_request(format!(
                "unknown field{} {}: /{endpoint} takes no parameters (send {{}} or no body)",
                if fields.len() > 1 { "s" } else { "" },
                fields.join(", ")
            )))
        }
    }
}

fn type_error(field: &str, expected: &str, got: &Value) -> ControlError {
    ControlError::invalid_request(format!("field {field:?} must be {expected}, got {}", json_type(got)))
}

/// Parses and checks the `/start` body into [`StartOptions`]: required fields, unknown fields,
/// types and enumerated values. Rules that involve several options or the clusters are checked
/// by [`Control::start`](crate::control::Control::start).
///
/// `"verification": true|false` is accepted as a shorthand for `{"enabled": true|false}`.
///
/// # Errors
///
/// `InvalidRequest` (syntax, shape, types, unknown or missing fields), `InvalidOption` (a
/// value outside its allowed set), `InvalidNamespaceFilter` (a malformed filter entry).
pub fn parse_start(bytes: &[u8]) -> Result<StartOptions, ControlError> {
    let Some(mut object) = parse_object(bytes)? else {
        return Err(ControlError::invalid_request(
            "the request body is empty: /start needs a JSON object with at least \"source\" and \"destination\", \
             e.g. {\"source\": \"cluster0\", \"destination\": \"cluster1\"}",
        ));
    };

    let unknown: Vec<String> =
        object.keys().filter(|key| !START_FIELDS.contains(&key.as_str())).map(|key| format!("{key:?}")).collect();
    if !unknown.is_empty() {
        return Err(ControlError::invalid_request(format!(
            "unknown field{} {} (accepted fields: {})",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            START_FIELDS.join(", ")
        )));
    }

    for field in ["source", "destination"] {
        match object.get(field) {
            None => {
                return Err(ControlError::invalid_request(format!(
                    "missing required field {field:?} (\"cluster0\" or \"cluster1\")"
                )));
            }
            Some(Value::String(_)) => {}
            Some(other) => return Err(type_error(field, "a string (\"cluster0\" or \"cluster1\")", other)),
        }
    }

    match object.get("buildIndexes") {
        None | Some(Value::Null) => {}
        Some(Value::String(value)) if BUILD_INDEXES_VALUES.contains(&value.as_str()) => {}
        Some(Value::String(value)) => {
            return Err(ControlError::invalid_option(format!(
                "buildIndexes must be one of {}, got {value:?}",
                quoted_list(&BUILD_INDEXES_VALUES)
            )));
        }
        Some(other) => return Err(type_error("buildIndexes", "a string", other)),
    }
    if object.get("buildIndexes") == Some(&Value::Null) {
        object.remove("buildIndexes");
    }

    match object.get("enableUserWriteBlocking") {
        None | Some(Value::Bool(_)) => {}
        Some(Value::String(value)) if WRITE_BLOCKING_VALUES.contains(&value.as_str()) => {}
        Some(Value::String(value)) => {
            return Err(ControlError::invalid_option(format!(
                "enableUserWriteBlocking must be one of {}, true or false, got {value:?}",
                quoted_list(&WRITE_BLOCKING_VALUES)
            )));
        }
        Some(other) => return Err(type_error("enableUserWriteBlocking", "a string or a boolean", other)),
    }

    match object.get("reversible") {
        None | Some(Value::Bool(_)) => {}
        Some(other) => return Err(type_error("reversible", "a boolean", other)),
    }

    for field in ["includeNamespaces", "excludeNamespaces"] {
        match object.get(field) {
            None | Some(Value::Array(_)) => {}
            Some(other) => return Err(type_error(field, "an array of filter documents", other)),
        }
    }

    match object.get("sharding") {
        None | Some(Value::Object(_)) => {}
        Some(other) => return Err(type_error("sharding", "an object", other)),
    }

    match object.get("verification").cloned() {
        None | Some(Value::Object(_)) => {}
        Some(Value::Bool(enabled)) => {
            object.insert("verification".into(), serde_json::json!({ "enabled": enabled }));
        }
        Some(other) => return Err(type_error("verification", "an object such as {\"enabled\": false}", &other)),
    }

    serde_path_to_error::deserialize::<_, StartOptions>(Value::Object(object)).map_err(|error| {
        let path = error.path().to_string();
        let reason = format!("invalid {path}: {}", error.inner());
        if path.starts_with("includeNamespaces") || path.starts_with("excludeNamespaces") {
            ControlError::InvalidNamespaceFilter { reason }
        } else {
            ControlError::invalid_request(reason)
        }
    })
}

fn quoted_list(values: &[&str]) -> String {
    values.iter().map(|value| format!("{value:?}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use clustersync_common::model::{BuildIndexes, WriteBlocking};

    use super::*;

    fn start_error(body: &str) -> ControlError {
        parse_start(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn the_documented_examples_parse() {
        let options = parse_start(br#"{"source": "cluster0", "destination": "cluster1"}"#).unwrap();
        assert_eq!(options.build_indexes, BuildIndexes::BeforeDataCopy);
        let options =
            parse_start(br#"{"source": "cluster0", "destination": "cluster1", "reversible": true, "enableUserWriteBlocking": true}"#)
                .unwrap();
        assert_eq!(options.enable_user_write_blocking, WriteBlocking::SourceAndDestination);
        // mongosync's sharding example has a trailing comma in the key array.
        let options = parse_start(
            br#"{ "source": "cluster0", "destination": "cluster1",
                 "sharding": { "createSupportingIndexes": true, "shardingEntries": [
                   { "database": "accounts", "collection": "us_east",
                     "shardCollection": { "key": [ { "location": 1 }, { "region": 1 }, ] } } ] } }"#,
        )
        .unwrap();
        assert_eq!(options.sharding.unwrap().sharding_entries[0].shard_collection.key.len(), 2);
        let options =
            parse_start(br#"{"source": "cluster0", "destination": "cluster1", "verification": false}"#).unwrap();
        assert!(!options.verification.enabled);
    }

    #[test]
    fn malformed_bodies_say_where() {
        let error = start_error(r#"{"source": "cluster0" "destination": "cluster1"}"#);
        assert_eq!(error.name(), "InvalidRequest");
        assert!(error.to_string().contains("line 1 column"), "{error}");
        let error = start_error("");
        assert!(error.to_string().contains("body is empty"), "{error}");
        let error = start_error("[1]");
        assert!(error.to_string().contains("must be a JSON object, got an array"), "{error}");
        assert!(parse_start(&[0xff, 0xfe]).unwrap_err().to_string().contains("UTF-8"));
    }

    #[test]
    fn fields_are_checked_by_name() {
        let error = start_error(r#"{"source": "cluster0", "destination": "cluster1", "colour": 1, "loadLevel": 2}"#);
        assert_eq!(error.name(), "InvalidRequest");
        assert!(error.to_string().contains("\"colour\", \"loadLevel\""), "{error}");
        let error = start_error(r#"{"destination": "cluster1"}"#);
        assert!(error.to_string().contains("missing required field \"source\""), "{error}");
        let error = start_error(r#"{"source": 0, "destination": "cluster1"}"#);
        assert!(error.to_string().contains("\"source\" must be a string") && error.to_string().contains("number"));
        let error = start_error(r#"{"source": "cluster0", "destination": "cluster1", "reversible": "yes"}"#);
        assert!(error.to_string().contains("\"reversible\" must be a boolean, got a string"), "{error}");
        let error = start_error(r#"{"source": "cluster0", "destination": "cluster1", "buildIndexes": "sometimes"}"#);
        assert_eq!(error.name(), "InvalidOption");
        assert!(error.to_string().contains("\"afterDataCopy\"") && error.to_string().contains("sometimes"), "{error}");
        let error = start_error(r#"{"source": "cluster0", "destination": "cluster1", "buildIndexes": 1}"#);
        assert_eq!(error.name(), "InvalidRequest");
        let error =
            start_error(r#"{"source": "cluster0", "destination": "cluster1", "enableUserWriteBlocking": "both"}"#);
        assert_eq!(error.name(), "InvalidOption");
        let error = start_error(r#"{"source": "cluster0", "destination": "cluster1", "enableUserWriteBlocking": 1}"#);
        assert_eq!(error.name(), "InvalidRequest");
        let error =
            start_error(r#"{"source": "cluster0", "destination": "cluster1", "verification": {"enabled": "no"}}"#);
        assert_eq!(error.name(), "InvalidRequest");
        assert!(error.to_string().contains("verification.enabled"), "{error}");
        let error = start_error(
            r#"{"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": [{"database": "a", "collection": "b"}]}}"#,
        );
        assert!(
            error.to_string().contains("sharding.shardingEntries[0]") && error.to_string().contains("shardCollection"),
            "{error}"
        );
        let error = start_error(
            r#"{"source": "cluster0", "destination": "cluster1", "includeNamespaces": [{"database": "a", "collection": ["b"]}]}"#,
        );
        assert_eq!(error.name(), "InvalidNamespaceFilter");
        assert!(
            error.to_string().contains("includeNamespaces[0]") && error.to_string().contains("collection"),
            "{error}"
        );
        let error =
            start_error(r#"{"source": "cluster0", "destination": "cluster1", "excludeNamespaces": {"database": "a"}}"#);
        assert!(error.to_string().contains("must be an array"), "{error}");
    }

    #[test]
    fn bodiless_endpoints_accept_nothing_or_an_empty_object() {
        parse_empty("pause", b"").unwrap();
        parse_empty("pause", b"  \n").unwrap();
        parse_empty("pause", b"{ }").unwrap();
        let error = parse_empty("pause", br#"{"force": true}"#).unwrap_err();
        assert!(error.to_string().contains("\"force\"") && error.to_string().contains("/pause takes no parameters"));
        assert!(parse_empty("commit", b"{").unwrap_err().to_string().contains("not valid JSON"));
        assert!(parse_empty("commit", b"null").unwrap_err().to_string().contains("got null"));
    }

    #[test]
    fn trailing_commas_are_removed_outside_strings_only() {
        assert_eq!(strip_trailing_commas(r#"[1, 2, ]"#), "[1, 2 ]");
        assert_eq!(strip_trailing_commas(r#"{"a": ",]",}"#), r#"{"a": ",]"}"#);
        assert_eq!(strip_trailing_commas(r#"{"a": "x\",}"}"#), r#"{"a": "x\",}"}"#);
        assert_eq!(strip_trailing_commas("[1,,]"), "[1,]");
    }
}
