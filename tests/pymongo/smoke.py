#!/usr/bin/env python3
"""Smoke test: pymongo against fake-mongod.

Starts ``target/<profile>/fake-mongod --port 0 --replSet rs0`` (or uses
``$MONGODB_URI``), then, both with ``directConnection=true`` and with replica
set discovery: writes, reads, runs an aggregation and receives an insert, an
update and a delete on a change stream. Exits non-zero with a clear message on
any failure.

Usage: python3 tests/pymongo/smoke.py [--binary PATH]
"""

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

try:
    import pymongo
    from bson import ObjectId
except ImportError:
    sys.exit("smoke: pymongo is not installed (pip install -r tests/pymongo/requirements.txt)")

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
PORT_PATTERNS = [
    re.compile(r"mongodb://[^\s/]*?:(\d+)"),
    re.compile(r"(?:127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\]):(\d+)"),
    re.compile(r"port\D{1,3}(\d{2,5})", re.IGNORECASE),
]


class SmokeFailure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise SmokeFailure(message)


def find_binary(explicit):
    if explicit:
        path = Path(explicit)
        check(path.is_file(), f"fake-mongod binary {path} does not exist")
        return path
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    candidates = [p for p in (target / "release" / "fake-mongod", target / "debug" / "fake-mongod") if p.is_file()]
    check(candidates, f"no fake-mongod binary under {target}/{{release,debug}}: build it with `cargo build -p fake-mongod`")
    return max(candidates, key=lambda p: p.stat().st_mtime)


class Server:
    """fake-mongod as a subprocess; learns its port from what it prints."""

    def __init__(self, binary):
        self.lines = []
        self.port = None
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [str(binary), "--port", "0", "--replSet", "rs0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
        )
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        with self.cond:
            while self.port is None:
                if self.proc.poll() is not None:
                    raise SmokeFailure(f"fake-mongod exited with {self.proc.returncode} before listening:\n" + self.output())
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise SmokeFailure(f"fake-mongod did not report a port within {START_TIMEOUT}s:\n" + self.output())
                self.cond.wait(min(left, 0.2))

    def _read(self, stream):
        for line in stream:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                if self.port is None:
                    for pat in PORT_PATTERNS:
                        m = pat.search(line)
                        if m and int(m.group(1)) > 0:
                            self.port = int(m.group(1))
                            break
                self.cond.notify_all()

    def output(self):
        with self.cond:
            return "\n".join(self.lines[-40:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def next_change(stream, deadline, what):
    while time.monotonic() < deadline:
        change = stream.try_next()
        if change is not None:
            return change
        time.sleep(0.05)
    raise SmokeFailure(f"change stream: no {what} event within the time limit")


def exercise(uri, label):
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000, appname=f"pymongo-smoke-{label}")
    try:
        hello = client.admin.command("hello")
        check(hello.get("ok") == 1, f"hello failed: {hello}")
        db = client[f"pymongo_smoke_{label}"]
        coll = db["items"]
        coll.drop()

        # change stream first, so it sees the writes below
        with coll.watch(max_await_time_ms=200) as stream:
            res = coll.insert_many([{"_id": i, "group": i % 2, "value": i * 10} for i in range(1, 6)])
            check(res.inserted_ids == [1, 2, 3, 4, 5], f"insert_many returned {res.inserted_ids}")
            oid = ObjectId()
            coll.insert_one({"_id": oid, "group": 9, "value": 1})
            upd = coll.update_one({"_id": 2}, {"$set": {"value": 21}, "$inc": {"n": 1}})
            check((upd.matched_count, upd.modified_count) == (1, 1), f"update_one: matched {upd.matched_count}, modified {upd.modified_count}")
            dele = coll.delete_one({"_id": oid})
            check(dele.deleted_count == 1, f"delete_one deleted {dele.deleted_count}")

            # reads
            doc = coll.find_one({"_id": 2})
            check(doc == {"_id": 2, "group": 0, "value": 21, "n": 1}, f"find_one returned {doc}")
            docs = list(coll.find({"group": 1}).sort("_id", -1))
            check([d["_id"] for d in docs] == [5, 3, 1], f"find/sort returned {docs}")
            check(coll.count_documents({}) == 5, f"count_documents returned {coll.count_documents({})}")

            # aggregation
            agg = list(coll.aggregate([
                {"$match": {"value": {"$gte": 10}}},
                {"$group": {"_id": "$group", "total": {"$sum": "$value"}, "n": {"$sum": 1}}},
                {"$sort": {"_id": 1}},
            ]))
            check(agg == [{"_id": 0, "total": 61, "n": 2}, {"_id": 1, "total": 90, "n": 3}], f"aggregate returned {agg}")

            # change events: 5 inserts from insert_many, the insert, the update, the delete
            deadline = time.monotonic() + 15
            seen = [next_change(stream, deadline, f"#{i + 1}") for i in range(8)]
            kinds = [c["operationType"] for c in seen]
            check(kinds == ["insert"] * 6 + ["update", "delete"], f"change stream events were {kinds}")
            ins = seen[5]
            check(ins["documentKey"] == {"_id": oid}, f"insert event documentKey {ins.get('documentKey')}")
            check(ins["fullDocument"] == {"_id": oid, "group": 9, "value": 1}, f"insert event fullDocument {ins.get('fullDocument')}")
            check(ins["ns"] == {"db": db.name, "coll": "items"}, f"insert event ns {ins.get('ns')}")
            upd_ev = seen[6]
            check(upd_ev["documentKey"] == {"_id": 2}, f"update event documentKey {upd_ev.get('documentKey')}")
            desc = upd_ev.get("updateDescription", {})
            check(desc.get("updatedFields") == {"value": 21, "n": 1}, f"update event updateDescription {desc}")
            check(seen[7]["documentKey"] == {"_id": oid}, f"delete event documentKey {seen[7].get('documentKey')}")
            check(all("_id" in c for c in seen), "change events without a resume token")
        coll.drop()
    finally:
        client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", help="path to the fake-mongod binary")
    args = parser.parse_args()

    server = None
    passed = 0
    try:
        uri = os.environ.get("MONGODB_URI")
        if uri:
            rest = uri.split("://", 1)[-1]
            sep = "&" if "?" in uri else ("?" if "/" in rest else "/?")
            direct = f"{uri}{sep}directConnection=true" if "directConnection" not in uri else uri
            variants = [("direct", direct), ("discovery", uri)]
        else:
            server = Server(find_binary(args.binary))
            base = f"mongodb://127.0.0.1:{server.port}/"
            variants = [
                ("direct", base + "?directConnection=true"),
                ("discovery", base),
                ("replset", base + "?replicaSet=rs0"),
            ]
        for label, uri in variants:
            try:
                exercise(uri, label)
            except SmokeFailure as e:
                raise SmokeFailure(f"[{label}: {uri}] {e}") from None
            except pymongo.errors.PyMongoError as e:
                raise SmokeFailure(f"[{label}: {uri}] pymongo error: {type(e).__name__}: {e}") from None
            print(f"smoke: {label}: ok ({uri})")
            passed += 1
    except SmokeFailure as e:
        out = server.output() if server else ""
        print(f"smoke: FAILED: {e}", file=sys.stderr)
        if out:
            print("smoke: last fake-mongod output:\n" + out, file=sys.stderr)
        print(f"smoke: {passed} passed, 1 failed")
        return 1
    finally:
        if server:
            server.stop()
    print(f"smoke: {passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
