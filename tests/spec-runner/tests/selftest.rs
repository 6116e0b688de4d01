//! Checks the runner itself against the in-process fake-mongod with small
//! hand-written unified test files: correct expectations must pass, and each
//! kind of wrong expectation must fail (a runner that passes everything is
//! worse than none).

use spec_runner::runner::{Runner, Status};
use spec_runner::server::InProcess;
use spec_runner::spec::{TestFile, parse_json_document};

const FILE: &str = r#"{
  "description": "runner self-test",
  "schemaVersion": "1.0",
  "createEntities": [
    {"client": {"id": "client0", "observeEvents": ["commandStartedEvent"]}},
    {"database": {"id": "db0", "client": "client0", "databaseName": "selftest"}},
    {"collection": {"id": "coll0", "database": "db0", "collectionName": "c"}}
  ],
  "initialData": [{"databaseName": "selftest", "collectionName": "c", "documents": [{"_id": 1, "x": {"y": 1}}]}],
  "tests": [
    {
      "description": "good",
      "operations": [
        {"name": "insertOne", "object": "coll0", "arguments": {"document": {"_id": 2}},
         "expectResult": {"$$unsetOrMatches": {"insertedId": {"$$unsetOrMatches": 2}}}},
        {"name": "find", "object": "coll0", "arguments": {"filter": {"_id": 1}},
         "expectResult": [{"_id": 1, "x": {"y": {"$numberLong": "1"}}}]}
      ],
      "expectEvents": [{"client": "client0", "events": [
        {"commandStartedEvent": {"commandName": "insert", "databaseName": "selftest", "command": {"insert": "c", "documents": [{"_id": 2}]}}},
        {"commandStartedEvent": {"commandName": "find", "command": {"find": "c", "filter": {"_id": 1}}}}
      ]}],
      "outcome": [{"databaseName": "selftest", "collectionName": "c", "documents": [{"_id": 1, "x": {"y": 1}}, {"_id": 2}]}]
    },
    {
      "description": "bad result",
      "operations": [{"name": "find", "object": "coll0", "arguments": {"filter": {}}, "expectResult": [{"_id": 2}]}]
    },
    {
      "description": "bad nested extra key",
      "operations": [{"name": "find", "object": "coll0", "arguments": {"filter": {}}, "expectResult": [{"_id": 1, "x": {}}]}]
    },
    {
      "description": "bad event",
      "operations": [{"name": "find", "object": "coll0", "arguments": {"filter": {}}}],
      "expectEvents": [{"client": "client0", "events": [{"commandStartedEvent": {"commandName": "aggregate"}}]}]
    },
    {
      "description": "bad event count",
      "operations": [{"name": "find", "object": "coll0", "arguments": {"filter": {}}}],
      "expectEvents": [{"client": "client0", "events": []}]
    },
    {
      "description": "bad outcome",
      "operations": [],
      "outcome": [{"databaseName": "selftest", "collectionName": "c", "documents": [{"_id": 1, "x": {"y": 2}}]}]
    },
    {
      "description": "bad expectError",
      "operations": [{"name": "find", "object": "coll0", "arguments": {"filter": {}}, "expectError": {"isError": true}}]
    },
    {
      "description": "bad error code",
      "operations": [{"name": "insertOne", "object": "coll0", "arguments": {"document": {"_id": 1}},
                      "expectError": {"errorCode": 12345}}]
    },
    {
      "description": "good error code",
      "operations": [{"name": "insertOne", "object": "coll0", "arguments": {"document": {"_id": 1}},
                      "expectError": {"errorCode": 11000, "isClientError": false}}]
    },
    {
      "description": "skipped operation",
      "operations": [{"name": "bulkWrite", "object": "coll0", "arguments": {"requests": []}}]
    },
    {
      "description": "skipped by requirement",
      "runOnRequirements": [{"minServerVersion": "99.0"}],
      "operations": []
    }
  ]
}"#;

#[test]
fn runner_passes_good_and_fails_bad_expectations() {
    let server = InProcess::start().expect("fake-mongod starts");
    let uri = server.uri();
    let file = TestFile {
        rel_path: "selftest/selftest.json".into(),
        suite: "selftest".into(),
        doc: parse_json_document(FILE).unwrap(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reports = rt.block_on(async {
        let runner = Runner::connect(&uri, false).await.expect("runner connects");
        runner.run_file(&file, None).await
    });
    drop(rt);
    server.stop();
    for r in &reports {
        let desc = r.id.split(" :: ").nth(1).unwrap();
        let ok = match &r.status {
            Status::Pass => desc.starts_with("good"),
            Status::Fail(_) => desc.starts_with("bad"),
            Status::Skip(_) => desc.starts_with("skipped"),
        };
        assert!(ok, "{desc}: unexpected {:?}", r.status);
    }
    assert_eq!(reports.len(), 11);
}
