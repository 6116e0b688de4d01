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
    {"collection": {"id": "coll0", "database": "db0", "collectionName": "c"}},
    {"client": {"id": "client1", "observeEvents": ["connectionCheckedOutEvent", "connectionCheckedInEvent"]}},
    {"database": {"id": "db1", "client": "client1", "databaseName": "selftest"}},
    {"collection": {"id": "coll1", "database": "db1", "collectionName": "c"}},
    {"session": {"id": "session0", "client": "client0"}}
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
      "description": "good cmap events",
      "operations": [
        {"name": "find", "object": "coll1", "arguments": {"filter": {}}},
        {"name": "assertNumberConnectionsCheckedOut", "object": "testRunner", "arguments": {"client": "client1", "connections": 0}}
      ],
      "expectEvents": [{"client": "client1", "eventType": "cmap", "events": [
        {"connectionCheckedOutEvent": {}}, {"connectionCheckedInEvent": {}}
      ]}]
    },
    {
      "description": "good session lsid",
      "operations": [
        {"name": "insertOne", "object": "coll0", "arguments": {"session": "session0", "document": {"_id": 3}}},
        {"name": "find", "object": "coll0", "arguments": {"session": "session0", "filter": {}}},
        {"name": "assertSameLsidOnLastTwoCommands", "object": "testRunner", "arguments": {"client": "client0"}}
      ],
      "expectEvents": [{"client": "client0", "events": [
        {"commandStartedEvent": {"commandName": "insert", "command": {"lsid": {"$$sessionLsid": "session0"}}}},
        {"commandStartedEvent": {"commandName": "find", "command": {"lsid": {"$$sessionLsid": "session0"}}}}
      ]}]
    },
    {
      "description": "bad session lsid",
      "operations": [
        {"name": "insertOne", "object": "coll0", "arguments": {"document": {"_id": 3}}},
        {"name": "assertSameLsidOnLastTwoCommands", "object": "testRunner", "arguments": {"client": "client0"}}
      ]
    },
    {
      "description": "good fail point",
      "operations": [
        {"name": "failPoint", "object": "testRunner", "arguments": {"client": "client0", "failPoint": {
          "configureFailPoint": "failCommand", "mode": "alwaysOn",
          "data": {"failCommands": ["insert"], "errorCode": 91}}}},
        {"name": "insertOne", "object": "coll0", "arguments": {"document": {"_id": 4}},
         "expectError": {"errorCode": 91, "errorCodeName": "ShutdownInProgress"}}
      ]
    },
    {
      "description": "good fail point was turned off",
      "operations": [
        {"name": "insertOne", "object": "coll0", "arguments": {"document": {"_id": 4}}}
      ]
    },
    {
      "description": "good emulated bulkWrite",
      "operations": [{"name": "bulkWrite", "object": "coll0", "arguments": {"ordered": false, "requests": [
          {"insertOne": {"document": {"_id": 1}}},
          {"insertOne": {"document": {"_id": 5}}},
          {"updateOne": {"filter": {"_id": 9}, "update": {"$set": {"z": 1}}, "upsert": true}},
          {"deleteOne": {"filter": {"_id": 5}}}]},
        "expectError": {"errorCode": 11000, "expectResult": {"insertedCount": 1, "upsertedCount": 1,
          "upsertedIds": {"2": 9}, "deletedCount": 1, "matchedCount": 0, "modifiedCount": 0}}}],
      "expectEvents": [{"client": "client0", "events": [
        {"commandStartedEvent": {"commandName": "insert", "command": {"insert": "c", "ordered": false}}},
        {"commandStartedEvent": {"commandName": "update", "command": {"update": "c"}}},
        {"commandStartedEvent": {"commandName": "delete", "command": {"delete": "c", "deletes": [{"q": {"_id": 5}, "limit": 1}]}}}
      ]}],
      "outcome": [{"databaseName": "selftest", "collectionName": "c", "documents": [{"_id": 1, "x": {"y": 1}}, {"_id": 9, "z": 1}]}]
    },
    {
      "description": "bad emulated bulkWrite counts",
      "operations": [{"name": "bulkWrite", "object": "coll0", "arguments": {"requests": [
          {"updateOne": {"filter": {"_id": 1}, "update": {"$set": {"x": 2}}}}]},
        "expectResult": {"matchedCount": 1, "modifiedCount": 0}}]
    },
    {
      "description": "bad emulated bulkWrite validation",
      "operations": [{"name": "bulkWrite", "object": "coll0", "arguments": {"requests": [
          {"updateOne": {"filter": {"_id": 1}, "update": {"x": 2}}}]},
        "expectError": {"isClientError": false}}]
    },
    {
      "description": "skipped operation",
      "operations": [{"name": "mapReduce", "object": "coll0", "arguments": {}}]
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
    assert_eq!(reports.len(), 19);
}
