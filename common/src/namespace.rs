//! Namespaces (`db.collection`) and the include/exclude filters of `/start`.
//!
//! The same filter decides which collections the planner copies and which change events the
//! appliers apply, so it lives here, shared by the coordinator and the workers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Databases that are never copied: MongoDB's own, and clustersync's internal one.
pub const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];

/// The database clustersync keeps its own data in, on both clusters (change-event spool on the
/// destination, commit markers on the source). Never copied, never verified.
pub const INTERNAL_DATABASE: &str = "__clustersync";

/// A database and collection name pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Namespace {
    pub db: String,
    pub coll: String,
}

/// Error for a malformed namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid namespace {value:?}: {reason}")]
pub struct NamespaceError {
    pub value: String,
    pub reason: String,
}

impl Namespace {
    pub fn new(db: impl Into<String>, coll: impl Into<String>) -> Self {
        Self { db: db.into(), coll: coll.into() }
    }

    /// Parses `db.collection` (the collection part may itself contain dots).
    pub fn parse(full: &str) -> Result<Self, NamespaceError> {
        let error = |reason: &str| NamespaceError { value: full.to_string(), reason: reason.to_string() };
        let (db, coll) = full.split_once('.').ok_or_else(|| error("expected <database>.<collection>"))?;
        validate_database_name(db).map_err(|reason| error(&reason))?;
        if coll.is_empty() {
            return Err(error("collection name is empty"));
        }
        Ok(Self::new(db, coll))
    }

    /// True for collections MongoDB manages itself (`system.*`), which are never copied.
    pub fn is_system_collection(&self) -> bool {
        self.coll.starts_with("system.")
    }

    /// True for namespaces clustersync must never copy, whatever the filters say.
    pub fn is_never_copied(&self) -> bool {
        is_never_copied_database(&self.db) || self.is_system_collection()
    }
}

/// True for `admin`, `local`, `config` and clustersync's internal database.
pub fn is_never_copied_database(db: &str) -> bool {
    SYSTEM_DATABASES.contains(&db) || db == INTERNAL_DATABASE
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.db, self.coll)
    }
}

/// Checks a database name the way MongoDB does (no `/\. "$` characters, no NUL, < 64 bytes).
pub fn validate_database_name(db: &str) -> Result<(), String> {
    if db.is_empty() {
        return Err("database name is empty".into());
    }
    if db.len() >= 64 {
        return Err(format!("database name {db:?} is longer than 63 bytes"));
    }
    if let Some(bad) = db.chars().find(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0')) {
        return Err(format!("database name {db:?} contains the forbidden character {bad:?}"));
    }
    Ok(())
}

/// A regular expression in MongoDB's `{pattern, options}` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexSpec {
    pub pattern: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub options: String,
}

impl RegexSpec {
    /// Compiles the expression. Options `i`, `m`, `s`, `x` and `u` are accepted (as in PCRE);
    /// anything else is an error naming the option.
    pub fn compile(&self) -> Result<regex::Regex, String> {
        let mut builder = regex::RegexBuilder::new(&self.pattern);
        for option in self.options.chars() {
            match option {
                'i' => builder.case_insensitive(true),
                'm' => builder.multi_line(true),
                's' => builder.dot_matches_new_line(true),
                'x' => builder.ignore_whitespace(true),
                'u' => builder.unicode(true),
                other => return Err(format!("unsupported regex option {other:?} (allowed: i, m, s, x, u)")),
            };
        }
        builder.build().map_err(|e| format!("invalid regex {:?}: {e}", self.pattern))
    }
}

/// One entry of `includeNamespaces` / `excludeNamespaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceFilterSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_regex: Option<RegexSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections_regex: Option<RegexSpec>,
}

/// A compiled filter entry.
#[derive(Debug, Clone)]
struct CompiledFilter {
    database: Option<String>,
    database_regex: Option<regex::Regex>,
    collections: Option<Vec<String>>,
    collections_regex: Option<regex::Regex>,
}

impl CompiledFilter {
    fn compile(spec: &NamespaceFilterSpec, which: &str, index: usize) -> Result<Self, String> {
        let at = |msg: String| format!("{which}[{index}]: {msg}");
        match (&spec.database, &spec.database_regex) {
            (None, None) => return Err(at("needs \"database\" or \"databaseRegex\"".into())),
            (Some(_), Some(_)) => return Err(at("give either \"database\" or \"databaseRegex\", not both".into())),
            (Some(db), None) => validate_database_name(db).map_err(at)?,
            (None, Some(_)) => {}
        }
        if let Some(db) = &spec.database
            && is_never_copied_database(db)
        {
            return Err(at(format!("database {db:?} is internal and is never synced")));
        }
        if let Some(collections) = &spec.collections {
            if collections.is_empty() {
                return Err(at("\"collections\" must not be empty when given".into()));
            }
            if let Some(empty) = collections.iter().position(String::is_empty) {
                return Err(at(format!("\"collections\"[{empty}] is an empty name")));
            }
        }
        Ok(Self {
            database: spec.database.clone(),
            database_regex: spec.database_regex.as_ref().map(RegexSpec::compile).transpose().map_err(at)?,
            collections: spec.collections.clone(),
            collections_regex: spec.collections_regex.as_ref().map(RegexSpec::compile).transpose().map_err(at)?,
        })
    }

    fn matches_database(&self, db: &str) -> bool {
        match (&self.database, &self.database_regex) {
            (Some(name), _) => name == db,
            (None, Some(regex)) => regex.is_match(db),
            (None, None) => false,
        }
    }

    fn matches(&self, ns: &Namespace) -> bool {
        if !self.matches_database(&ns.db) {
            return false;
        }
        match (&self.collections, &self.collections_regex) {
            (None, None) => true,
            (listed, regex) => {
                listed.as_ref().is_some_and(|names| names.iter().any(|n| n == &ns.coll))
                    || regex.as_ref().is_some_and(|r| r.is_match(&ns.coll))
            }
        }
    }

    /// True if the filter covers the whole database (no collection restriction).
    fn covers_whole_database(&self, db: &str) -> bool {
        self.matches_database(db) && self.collections.is_none() && self.collections_regex.is_none()
    }
}

/// The namespace filter of one migration: included if it matches an include entry (or there are
/// none) and matches no exclude entry; internal and system namespaces are always out.
#[derive(Debug, Clone, Default)]
pub struct NamespaceFilter {
    include: Vec<CompiledFilter>,
    exclude: Vec<CompiledFilter>,
}

impl NamespaceFilter {
    /// Compiles the filters; errors name the offending entry (`includeNamespaces[1]: ...`).
    pub fn new(include: &[NamespaceFilterSpec], exclude: &[NamespaceFilterSpec]) -> Result<Self, String> {
        let include = include
            .iter()
            .enumerate()
            .map(|(i, spec)| CompiledFilter::compile(spec, "includeNamespaces", i))
            .collect::<Result<_, _>>()?;
        let exclude = exclude
            .iter()
            .enumerate()
            .map(|(i, spec)| CompiledFilter::compile(spec, "excludeNamespaces", i))
            .collect::<Result<_, _>>()?;
        Ok(Self { include, exclude })
    }

    /// Whether the namespace is synced.
    pub fn includes(&self, ns: &Namespace) -> bool {
        if ns.is_never_copied() {
            return false;
        }
        let included = self.include.is_empty() || self.include.iter().any(|f| f.matches(ns));
        included && !self.exclude.iter().any(|f| f.matches(ns))
    }

    /// Whether any collection of `db` may be synced (used for database-level events).
    pub fn may_include_database(&self, db: &str) -> bool {
        if is_never_copied_database(db) {
            return false;
        }
        let included = self.include.is_empty() || self.include.iter().any(|f| f.matches_database(db));
        included && !self.exclude.iter().any(|f| f.covers_whole_database(db))
    }

    /// True when no filter was given.
    pub fn is_unfiltered(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> NamespaceFilterSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn parses_namespaces() {
        let ns = Namespace::parse("sales.orders.2024").unwrap();
        assert_eq!(ns.db, "sales");
        assert_eq!(ns.coll, "orders.2024");
        assert_eq!(ns.to_string(), "sales.orders.2024");
        assert!(Namespace::parse("nodot").is_err());
        assert!(Namespace::parse("a$b.c").is_err());
        assert!(Namespace::parse("db.").is_err());
    }

    #[test]
    fn internal_and_system_namespaces_are_never_copied() {
        let filter = NamespaceFilter::default();
        assert!(filter.includes(&Namespace::new("app", "users")));
        assert!(!filter.includes(&Namespace::new("admin", "users")));
        assert!(!filter.includes(&Namespace::new("local", "oplog.rs")));
        assert!(!filter.includes(&Namespace::new("config", "chunks")));
        assert!(!filter.includes(&Namespace::new(INTERNAL_DATABASE, "spool")));
        assert!(!filter.includes(&Namespace::new("app", "system.views")));
    }

    #[test]
    fn include_and_exclude_follow_mongosync_semantics() {
        let include = [
            spec(serde_json::json!({"database": "sales", "collections": ["EMEA", "APAC"]})),
            spec(serde_json::json!({"database": "marketing"})),
            spec(
                serde_json::json!({"database": "acc", "collectionsRegex": {"pattern": "^accounts_.+$", "options": "i"}}),
            ),
        ];
        let exclude = [spec(serde_json::json!({"database": "marketing", "collections": ["secret"]}))];
        let filter = NamespaceFilter::new(&include, &exclude).unwrap();
        assert!(filter.includes(&Namespace::new("sales", "EMEA")));
        assert!(!filter.includes(&Namespace::new("sales", "AMER")));
        assert!(filter.includes(&Namespace::new("marketing", "anything")));
        assert!(!filter.includes(&Namespace::new("marketing", "secret")));
        assert!(!filter.includes(&Namespace::new("engineering", "x")));
        assert!(filter.includes(&Namespace::new("acc", "ACCOUNTS_eu")));
        assert!(!filter.includes(&Namespace::new("acc", "accounts_")));
        assert!(filter.may_include_database("marketing"));
        assert!(!filter.may_include_database("engineering"));
    }

    #[test]
    fn bad_filters_are_named() {
        let err = NamespaceFilter::new(&[spec(serde_json::json!({"collections": ["a"]}))], &[]).unwrap_err();
        assert!(err.contains("includeNamespaces[0]"), "{err}");
        let err = NamespaceFilter::new(
            &[],
            &[spec(serde_json::json!({"database": "a", "collectionsRegex": {"pattern": "(", "options": ""}}))],
        )
        .unwrap_err();
        assert!(err.contains("excludeNamespaces[0]") && err.contains("invalid regex"), "{err}");
        let err = NamespaceFilter::new(
            &[spec(serde_json::json!({"database": "a", "collectionsRegex": {"pattern": "x", "options": "q"}}))],
            &[],
        )
        .unwrap_err();
        assert!(err.contains("unsupported regex option"), "{err}");
        let err = NamespaceFilter::new(&[spec(serde_json::json!({"database": "admin"}))], &[]).unwrap_err();
        assert!(err.contains("internal"), "{err}");
        assert!(
            serde_json::from_value::<NamespaceFilterSpec>(serde_json::json!({"database": "a", "bogus": 1})).is_err()
        );
    }
}
