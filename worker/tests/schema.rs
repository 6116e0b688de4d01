//! Destination schema rules against the test server: indexes relaxed during the sync and
//! restored at commit, capped limits and validators, views, the DDL appliers, write blocking.

mod support;

use bson::{Bson, Document, doc};
use clustersync_common::extjson::ExtDoc;
use clustersync_common::ids::CollectionId;
use clustersync_common::model::{BuildIndexes, CollectionKind, PlannedCollection};
use clustersync_common::namespace::Namespace;
use clustersync_worker::error::WorkerError;
use clustersync_worker::schema::{self, SYNC_CAPPED_SIZE, SYNC_TTL_SECONDS};
use support::{World, collection_options, index_named, indexes, insert};

async fn planned(world: &World, ns: &Namespace, kind: CollectionKind) -> PlannedCollection {
    let options = collection_options(world.source(), ns).await.expect("source collection exists");
    PlannedCollection {
        id: CollectionId(1),
        ns: ns.clone(),
        kind,
        options: ExtDoc(options),
        source_uuid: None,
        estimated_documents: 0,
        estimated_bytes: 0,
        partitions: 1,
    }
}

async fn command(client: &mongodb::Client, db: &str, command: Document) -> Document {
    client.database(db).run_command(command.clone()).await.unwrap_or_else(|e| panic!("{command}: {e}"))
}

fn flag(spec: &Document, name: &str) -> bool {
    matches!(spec.get(name), Some(Bson::Boolean(true)))
}

/// A source collection with one index of every kind the sync relaxes.
async fn people(world: &World, db: &str) -> Namespace {
    let ns = Namespace::new(db, "people");
    insert(
        world.source(),
        &ns,
        (0..20).map(|i| doc! {"_id": i, "email": format!("u{i}@x"), "created": bson::DateTime::now(), "nick": i % 3, "h": i}).collect(),
    )
    .await;
    command(
        world.source(),
        db,
        doc! {"createIndexes": "people", "indexes": [
            {"key": {"email": 1}, "name": "email_1", "unique": true},
            {"key": {"created": 1}, "name": "created_1", "expireAfterSeconds": 3600},
            {"key": {"nick": 1}, "name": "nick_1", "hidden": true},
            {"key": {"h": "hashed"}, "name": "h_hashed"},
            {"key": {"nick": -1, "email": 1}, "name": "partial", "partialFilterExpression": {"nick": {"$gt": 0}}, "sparse": true},
        ]},
    )
    .await;
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_relaxed_during_the_sync_and_restored_at_commit() {
    let world = World::start().await;
    world.reset("idx").await;
    let ns = people(&world, "idx").await;
    let plan = planned(&world, &ns, CollectionKind::Collection).await;
    schema::create_collection_for_sync(&world.clusters, &plan).await.expect("create");
    schema::create_collection_for_sync(&world.clusters, &plan).await.expect("create again (retry)");
    let built =
        schema::build_indexes_for_sync(&world.clusters, &ns, BuildIndexes::BeforeDataCopy).await.expect("build");
    assert_eq!(built, 5);
    // A retry finds them all and succeeds.
    schema::build_indexes_for_sync(&world.clusters, &ns, BuildIndexes::BeforeDataCopy).await.expect("build again");

    let during = indexes(world.destination(), &ns).await;
    let email = index_named(&during, "email_1").expect("email_1");
    assert!(!flag(email, "unique") && !flag(email, "prepareUnique"), "{email}");
    let created = index_named(&during, "created_1").expect("created_1");
    assert_eq!(created.get("expireAfterSeconds").and_then(Bson::as_i32), Some(SYNC_TTL_SECONDS), "{created}");
    assert!(!flag(index_named(&during, "nick_1").expect("nick_1"), "hidden"));
    assert!(index_named(&during, "h_hashed").is_some());
    let partial = index_named(&during, "partial").expect("partial");
    assert_eq!(partial.get_document("partialFilterExpression").ok(), Some(&doc! {"nick": {"$gt": 0}}));
    assert!(flag(partial, "sparse"));

    // Meanwhile the source changes: an index is dropped, another created.
    command(world.source(), "idx", doc! {"dropIndexes": "people", "index": "partial"}).await;
    command(
        world.source(),
        "idx",
        doc! {"createIndexes": "people", "indexes": [{"key": {"late": 1}, "name": "late_1"}]},
    )
    .await;
    // The data is on the destination (no duplicates).
    insert(world.destination(), &ns, (0..20).map(|i| doc! {"_id": i, "email": format!("u{i}@x")}).collect()).await;

    schema::restore_collection_at_commit(&world.clusters, &ns, BuildIndexes::BeforeDataCopy).await.expect("restore");
    let after = indexes(world.destination(), &ns).await;
    let email = index_named(&after, "email_1").expect("email_1");
    assert!(flag(email, "unique"), "{email}");
    let created = index_named(&after, "created_1").expect("created_1");
    assert_eq!(created.get("expireAfterSeconds").and_then(Bson::as_i32), Some(3600), "{created}");
    assert!(flag(index_named(&after, "nick_1").expect("nick_1"), "hidden"));
    assert!(index_named(&after, "partial").is_none(), "dropped on the source, dropped at commit");
    assert!(index_named(&after, "late_1").is_some(), "created on the source, built at commit");
    // Idempotent: a new leader may run the step again.
    schema::restore_collection_at_commit(&world.clusters, &ns, BuildIndexes::BeforeDataCopy)
        .await
        .expect("restore again");
    assert_eq!(indexes(world.destination(), &ns).await.len(), after.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_indexes_are_left_out_with_exclude_hashed_and_nothing_is_built_with_never() {
    let world = World::start().await;
    world.reset("hashed").await;
    let ns = people(&world, "hashed").await;
    let plan = planned(&world, &ns, CollectionKind::Collection).await;
    schema::create_collection_for_sync(&world.clusters, &plan).await.expect("create");
    assert_eq!(schema::build_indexes_for_sync(&world.clusters, &ns, BuildIndexes::Never).await.expect("never"), 0);
    assert_eq!(indexes(world.destination(), &ns).await.len(), 1, "only _id with never");
    assert_eq!(
        schema::build_indexes_for_sync(&world.clusters, &ns, BuildIndexes::ExcludeHashed).await.expect("build"),
        4
    );
    assert!(index_named(&indexes(world.destination(), &ns).await, "h_hashed").is_none());
    // Commit restores the rest but still no hashed index.
    schema::restore_collection_at_commit(&world.clusters, &ns, BuildIndexes::ExcludeHashed).await.expect("restore");
    let after = indexes(world.destination(), &ns).await;
    assert!(index_named(&after, "h_hashed").is_none());
    assert!(flag(index_named(&after, "email_1").expect("email_1"), "unique"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_on_the_destination_fail_the_unique_restore_with_a_named_error() {
    let world = World::start().await;
    world.reset("dups").await;
    let ns = people(&world, "dups").await;
    let plan = planned(&world, &ns, CollectionKind::Collection).await;
    schema::create_collection_for_sync(&world.clusters, &plan).await.expect("create");
    schema::build_indexes_for_sync(&world.clusters, &ns, BuildIndexes::BeforeDataCopy).await.expect("build");
    // Accepted during the sync: the index is not unique there.
    insert(world.destination(), &ns, vec![doc! {"_id": 1, "email": "same"}, doc! {"_id": 2, "email": "same"}]).await;
    let error = schema::restore_collection_at_commit(&world.clusters, &ns, BuildIndexes::BeforeDataCopy)
        .await
        .expect_err("duplicates cannot become unique");
    match error {
        WorkerError::Fatal { name, description } => {
            assert_eq!(name, "CannotConvertIndexToUnique");
            assert!(description.contains("dups.people"), "{description}");
            assert!(description.contains("email_1"), "{description}");
            assert!(description.contains("email"), "{description}");
        }
        other => panic!("expected a fatal error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_limits_and_validators_are_relaxed_then_restored() {
    let world = World::start().await;
    world.reset("capped").await;
    let ns = Namespace::new("capped", "log");
    command(
        world.source(),
        "capped",
        doc! {"create": "log", "capped": true, "size": 4096, "max": 10,
        "validator": {"level": {"$exists": true}}, "validationLevel": "moderate"},
    )
    .await;
    let plan = planned(&world, &ns, CollectionKind::Collection).await;
    schema::create_collection_for_sync(&world.clusters, &plan).await.expect("create");
    let during = collection_options(world.destination(), &ns).await.expect("destination options");
    assert_eq!(during.get_bool("capped"), Ok(true));
    assert_eq!(during.get("size").and_then(Bson::as_i64), Some(SYNC_CAPPED_SIZE), "{during}");
    assert!(!during.contains_key("max") && !during.contains_key("validator"), "{during}");
    // More documents than the source's limit, and one the source's validator would refuse.
    insert(world.destination(), &ns, (0..25).map(|i| doc! {"_id": i}).collect()).await;
    let count = world.destination().database("capped").collection::<Document>("log").count_documents(doc! {}).await;
    assert_eq!(count.expect("count"), 25);

    schema::restore_collection_at_commit(&world.clusters, &ns, BuildIndexes::BeforeDataCopy).await.expect("restore");
    let after = collection_options(world.destination(), &ns).await.expect("destination options");
    let source = collection_options(world.source(), &ns).await.expect("source options");
    for option in ["size", "max", "validator", "validationLevel"] {
        assert_eq!(
            after.get(option).map(Bson::to_string),
            source.get(option).map(Bson::to_string),
            "{option}: {after} vs {source}"
        );
    }
    schema::restore_collection_at_commit(&world.clusters, &ns, BuildIndexes::BeforeDataCopy).await.expect("idempotent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_created_with_their_definition() {
    let world = World::start().await;
    world.reset("views").await;
    let base = Namespace::new("views", "base");
    insert(world.source(), &base, vec![doc! {"_id": 1, "x": 1}]).await;
    command(
        world.source(),
        "views",
        doc! {"create": "big_x", "viewOn": "base", "pipeline": [{"$match": {"x": {"$gt": 0}}}]},
    )
    .await;
    let view = Namespace::new("views", "big_x");
    let plan = planned(&world, &view, CollectionKind::View).await;
    // The view may be created before its source collection exists.
    schema::create_collection_for_sync(&world.clusters, &plan).await.expect("create view");
    schema::create_collection_for_sync(&world.clusters, &plan).await.expect("create view again");
    let options = collection_options(world.destination(), &view).await.expect("view exists");
    assert_eq!(options.get_str("viewOn"), Ok("base"));
    assert_eq!(options.get_array("pipeline").map(Vec::len), Ok(1));
    // Views hold no data: the namespace counts as empty.
    assert!(schema::destination_namespace_is_empty(&world.clusters, &view).await.expect("empty"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_appliers_are_idempotent_and_follow_the_sync_rules() {
    let world = World::start().await;
    world.reset("ddl").await;
    world.reset("ddl2").await;
    let a = Namespace::new("ddl", "a");
    let b = Namespace::new("ddl", "b");

    // create: capped relaxed, applied twice.
    let description =
        doc! {"capped": true, "size": 8192, "max": 5, "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}};
    schema::apply_create(&world.clusters, &a, &description).await.expect("create");
    schema::apply_create(&world.clusters, &a, &description).await.expect("create again");
    let options = collection_options(world.destination(), &a).await.expect("created");
    assert_eq!(options.get("size").and_then(Bson::as_i64), Some(SYNC_CAPPED_SIZE));

    // createIndexes: relaxed, idempotent; a conflicting spec under the same name is named.
    let unique = doc! {"v": 2, "key": {"k": 1}, "name": "k_1", "unique": true};
    schema::apply_create_indexes(&world.clusters, &a, std::slice::from_ref(&unique), BuildIndexes::BeforeDataCopy)
        .await
        .expect("create index");
    schema::apply_create_indexes(&world.clusters, &a, &[unique], BuildIndexes::BeforeDataCopy).await.expect("again");
    assert!(!flag(index_named(&indexes(world.destination(), &a).await, "k_1").expect("k_1"), "unique"));
    let conflicting = doc! {"key": {"other": 1}, "name": "k_1"};
    let error = schema::apply_create_indexes(&world.clusters, &a, &[conflicting], BuildIndexes::BeforeDataCopy)
        .await
        .expect_err("conflict");
    assert!(error.to_string().contains("k_1"), "{error}");

    // modify: index flags and validators wait for the commit, other options apply.
    schema::apply_modify(&world.clusters, &a, &doc! {"index": {"name": "k_1", "hidden": true}}).await.expect("modify");
    assert!(!flag(index_named(&indexes(world.destination(), &a).await, "k_1").expect("k_1"), "hidden"));
    schema::apply_modify(
        &world.clusters,
        &a,
        &doc! {"validator": {"x": 1}, "changeStreamPreAndPostImages": {"enabled": true}},
    )
    .await
    .expect("modify options");
    let options = collection_options(world.destination(), &a).await.expect("exists");
    assert!(!options.contains_key("validator"), "{options}");
    assert_eq!(options.get_document("changeStreamPreAndPostImages").ok(), Some(&doc! {"enabled": true}));

    // dropIndexes: missing indexes are fine.
    let names = schema::index_names_of(&doc! {"indexes": [{"name": "k_1", "key": {"k": 1}}]});
    schema::apply_drop_indexes(&world.clusters, &a, &names).await.expect("drop index");
    schema::apply_drop_indexes(&world.clusters, &a, &names).await.expect("drop index again");
    assert!(index_named(&indexes(world.destination(), &a).await, "k_1").is_none());

    // rename: applied twice is fine; onto an existing target without dropTarget is not.
    schema::apply_rename(&world.clusters, &a, &b, false).await.expect("rename");
    schema::apply_rename(&world.clusters, &a, &b, false).await.expect("rename again");
    assert!(collection_options(world.destination(), &a).await.is_none());
    assert!(collection_options(world.destination(), &b).await.is_some());
    schema::apply_create(&world.clusters, &a, &doc! {}).await.expect("create a again");
    assert!(schema::apply_rename(&world.clusters, &a, &b, false).await.is_err());
    schema::apply_rename(&world.clusters, &a, &b, true).await.expect("rename with dropTarget");

    // drop: twice is fine.
    schema::apply_drop(&world.clusters, &b).await.expect("drop");
    schema::apply_drop(&world.clusters, &b).await.expect("drop again");

    // dropDatabase: user collections and views go, system collections stay.
    let c = Namespace::new("ddl2", "c");
    insert(world.destination(), &c, vec![doc! {"_id": 1}]).await;
    command(world.destination(), "ddl2", doc! {"create": "v", "viewOn": "c", "pipeline": []}).await;
    insert(world.destination(), &Namespace::new("ddl2", "system.js"), vec![doc! {"_id": "f", "value": 1}]).await;
    schema::apply_drop_database(&world.clusters, "ddl2").await.expect("drop database");
    schema::apply_drop_database(&world.clusters, "ddl2").await.expect("drop database again");
    let left = world.destination().database("ddl2").list_collection_names().await.expect("list");
    assert!(left.iter().all(|name| name.starts_with("system.")), "{left:?}");
    assert!(left.contains(&"system.js".to_string()), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_emptiness_is_checked_per_namespace_and_overall() {
    let world = World::start().await;
    world.reset("empty").await;
    let ns = Namespace::new("empty", "c");
    assert!(schema::destination_namespace_is_empty(&world.clusters, &ns).await.expect("missing is empty"));
    world.destination().database("empty").create_collection("c").await.expect("create");
    assert!(schema::destination_namespace_is_empty(&world.clusters, &ns).await.expect("empty collection"));
    assert!(schema::destination_is_empty_of_user_data(&world.clusters).await.expect("no user data"));
    insert(world.destination(), &ns, vec![doc! {"_id": 1}]).await;
    assert!(!schema::destination_namespace_is_empty(&world.clusters, &ns).await.expect("not empty"));
    assert!(!schema::destination_is_empty_of_user_data(&world.clusters).await.expect("user data"));
    let found = schema::destination_user_data_namespaces(&world.clusters, 10).await.expect("list");
    assert_eq!(found, vec![ns]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_write_blocking_blocks_other_clients_but_not_clustersync() {
    let world = World::start().await;
    world.reset("blocking").await;
    let Some(server) = world.destination_server.clone() else {
        // Against a real deployment every client of the test has the same privileges.
        panic!("this test needs the in-process test servers");
    };
    let other = mongodb::Client::with_uri_str(server.uri()).await.expect("plain client");
    let other_collection = other.database("blocking").collection::<Document>("c");
    schema::set_user_write_blocking(world.destination(), true).await.expect("block");
    schema::set_user_write_blocking(world.destination(), true).await.expect("block again");
    let refused = other_collection.insert_one(doc! {"_id": 1}).await;
    assert!(refused.is_err(), "a user write went through while blocked");
    insert(world.destination(), &Namespace::new("blocking", "c"), vec![doc! {"_id": 2}]).await;
    schema::set_user_write_blocking(world.destination(), false).await.expect("unblock");
    other_collection.insert_one(doc! {"_id": 3}).await.expect("user writes are back");
}
