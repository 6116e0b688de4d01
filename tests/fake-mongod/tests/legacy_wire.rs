//! Raw wire checks without a driver: the legacy OP_QUERY handshake answered with OP_REPLY,
//! OP_MSG checksums, and starting/stopping the server from plain (non-async) tests.

use std::io::{Read, Write};
use std::net::TcpStream;

use bson::{Document, doc};

fn read_reply(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let n = i32::from_le_bytes(len) as usize;
    let mut buf = vec![0u8; n];
    buf[..4].copy_from_slice(&len);
    s.read_exact(&mut buf[4..]).unwrap();
    buf
}

#[test]
fn legacy_is_master_over_op_query_gets_op_reply() {
    let server = fake_mongod::FakeMongod::start_default().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let q = bson::to_vec(&doc! {"isMaster": 1, "client": {"application": {"name": "legacy"}}}).unwrap();
    let mut msg = Vec::new();
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&7i32.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&2004i32.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(b"admin.$cmd\0");
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&(-1i32).to_le_bytes());
    msg.extend_from_slice(&q);
    let n = msg.len() as i32;
    msg[..4].copy_from_slice(&n.to_le_bytes());
    s.write_all(&msg).unwrap();
    let reply = read_reply(&mut s);
    assert_eq!(i32::from_le_bytes(reply[8..12].try_into().unwrap()), 7, "responseTo");
    assert_eq!(i32::from_le_bytes(reply[12..16].try_into().unwrap()), 1, "OP_REPLY");
    assert_eq!(i32::from_le_bytes(reply[32..36].try_into().unwrap()), 1, "numberReturned");
    let d = Document::from_reader(&mut &reply[36..]).unwrap();
    assert!(d.get_bool("ismaster").unwrap());
    assert_eq!(d.get_str("setName").unwrap(), "rs0");
    assert!(d.get_document("$clusterTime").is_ok());

    // OP_MSG with a CRC-32C checksum
    let body = bson::to_vec(&doc! {"ping": 1, "$db": "admin"}).unwrap();
    let mut m = Vec::new();
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(&8i32.to_le_bytes());
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(&2013i32.to_le_bytes());
    m.extend_from_slice(&1u32.to_le_bytes());
    m.push(0);
    m.extend_from_slice(&body);
    let n = (m.len() + 4) as i32;
    m[..4].copy_from_slice(&n.to_le_bytes());
    let crc = crc32c::crc32c(&m);
    m.extend_from_slice(&crc.to_le_bytes());
    s.write_all(&m).unwrap();
    let reply = read_reply(&mut s);
    assert_eq!(i32::from_le_bytes(reply[12..16].try_into().unwrap()), 2013);
    let d = Document::from_reader(&mut &reply[21..]).unwrap();
    assert_eq!(d.get_f64("ok").unwrap(), 1.0);
    drop(s);
    server.shutdown();
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_the_handle_inside_a_current_thread_runtime_does_not_block() {
    let server = fake_mongod::FakeMongod::start_default().unwrap();
    let port = server.port();
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok());
    drop(server);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err());
}
