//! Wire protocol: message framing, OP_MSG / OP_QUERY / OP_REPLY / OP_COMPRESSED,
//! CRC-32C checksums, zlib and snappy compression, and a raw BSON writer used to
//! build replies from stored document bytes without re-encoding them.

use std::collections::HashMap;
use std::io::{Read, Write};

use bson::{Document, RawDocumentBuf};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// OP_REPLY (legacy reply).
pub const OP_REPLY: i32 = 1;
/// OP_QUERY (legacy handshake).
pub const OP_QUERY: i32 = 2004;
/// OP_COMPRESSED.
pub const OP_COMPRESSED: i32 = 2012;
/// OP_MSG.
pub const OP_MSG: i32 = 2013;

/// OP_MSG flag: a CRC-32C checksum follows the sections.
pub const FLAG_CHECKSUM: u32 = 1;
/// OP_MSG flag: more messages follow without a request.
pub const FLAG_MORE_TO_COME: u32 = 1 << 1;
/// OP_MSG flag: the client accepts exhaust replies.
pub const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;

/// Largest message accepted (48 MB as advertised in hello plus slack).
pub const MAX_MESSAGE_SIZE: usize = 48_000_000 + 16 * 1024 * 1024;

/// Compressor ids.
pub const COMPRESSOR_NOOP: u8 = 0;
/// Snappy compressor id.
pub const COMPRESSOR_SNAPPY: u8 = 1;
/// Zlib compressor id.
pub const COMPRESSOR_ZLIB: u8 = 2;

/// The kind of a request, which decides the reply format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// OP_MSG with its flag bits.
    Msg(u32),
    /// Legacy OP_QUERY (handshake only).
    Query,
}

/// A decoded command request.
#[derive(Debug)]
pub struct Request {
    /// The client's request id (our responseTo).
    pub request_id: i32,
    /// OP_MSG or OP_QUERY.
    pub kind: RequestKind,
    /// The command body (section kind 0).
    pub body: Document,
    /// Kind-1 document sequences, by identifier.
    pub sequences: HashMap<String, Vec<RawDocumentBuf>>,
    /// The compressor the request used, if it was compressed.
    pub compressor: Option<u8>,
    /// For OP_QUERY: the full collection name (e.g. `admin.$cmd`).
    pub query_ns: Option<String>,
}

fn rd_i32(b: &[u8], at: usize) -> Result<i32> {
    b.get(at..at + 4)
        .map(|s| i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| Error::parse("truncated message"))
}

/// Reads one whole message (header included) into `buf` (reused across calls).
/// Returns false on clean EOF.
pub async fn read_message_into<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let n = i32::from_le_bytes(len);
    if n < 16 || n as usize > MAX_MESSAGE_SIZE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad message length {n}")));
    }
    buf.clear();
    buf.resize(n as usize, 0);
    buf[..4].copy_from_slice(&len);
    r.read_exact(&mut buf[4..]).await?;
    Ok(true)
}

/// Reads one whole message (header included) from the stream. Returns None on clean EOF.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = i32::from_le_bytes(len);
    if n < 16 || n as usize > MAX_MESSAGE_SIZE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad message length {n}")));
    }
    let mut buf = vec![0u8; n as usize];
    buf[..4].copy_from_slice(&len);
    r.read_exact(&mut buf[4..]).await?;
    Ok(Some(buf))
}

fn decompress(id: u8, data: &[u8], size: usize) -> Result<Vec<u8>> {
    match id {
        COMPRESSOR_NOOP => Ok(data.to_vec()),
        COMPRESSOR_SNAPPY => {
            snap::raw::Decoder::new().decompress_vec(data).map_err(|e| Error::parse(format!("snappy: {e}")))
        }
        COMPRESSOR_ZLIB => {
            let mut out = Vec::with_capacity(size);
            flate2::read::ZlibDecoder::new(data)
                .read_to_end(&mut out)
                .map_err(|e| Error::parse(format!("zlib: {e}")))?;
            Ok(out)
        }
        other => Err(Error::parse(format!("unsupported compressor id {other}"))),
    }
}

fn compress(id: u8, data: &[u8]) -> Vec<u8> {
    match id {
        COMPRESSOR_SNAPPY => snap::raw::Encoder::new().compress_vec(data).unwrap_or_else(|_| data.to_vec()),
        COMPRESSOR_ZLIB => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = e.write_all(data);
            e.finish().unwrap_or_default()
        }
        _ => data.to_vec(),
    }
}

fn read_cstring(b: &[u8], at: usize) -> Result<(String, usize)> {
    let end = b[at..].iter().position(|&c| c == 0).ok_or_else(|| Error::parse("unterminated cstring"))?;
    Ok((String::from_utf8_lossy(&b[at..at + end]).into_owned(), at + end + 1))
}

fn doc_len(b: &[u8], at: usize) -> Result<usize> {
    let n = rd_i32(b, at)?;
    if n < 5 || at + n as usize > b.len() {
        return Err(Error::parse("bad document length"));
    }
    Ok(n as usize)
}

/// Parses a framed message (header included) into a request.
pub fn parse_message(msg: &[u8]) -> Result<Request> {
    let request_id = rd_i32(msg, 4)?;
    let op = rd_i32(msg, 12)?;
    match op {
        OP_COMPRESSED => {
            let original = rd_i32(msg, 16)?;
            let size = rd_i32(msg, 20)? as usize;
            let id = *msg.get(24).ok_or_else(|| Error::parse("truncated"))?;
            let inner = decompress(id, &msg[25..], size)?;
            let mut full = Vec::with_capacity(16 + inner.len());
            full.extend_from_slice(&((16 + inner.len()) as i32).to_le_bytes());
            full.extend_from_slice(&request_id.to_le_bytes());
            full.extend_from_slice(&0i32.to_le_bytes());
            full.extend_from_slice(&original.to_le_bytes());
            full.extend_from_slice(&inner);
            let mut r = parse_message(&full)?;
            r.compressor = Some(id);
            Ok(r)
        }
        OP_MSG => {
            let flags = rd_i32(msg, 16)? as u32;
            let mut end = msg.len();
            if flags & FLAG_CHECKSUM != 0 {
                end -= 4;
                let want = u32::from_le_bytes([msg[end], msg[end + 1], msg[end + 2], msg[end + 3]]);
                let got = crc32c::crc32c(&msg[..end]);
                if want != got {
                    return Err(Error::parse("OP_MSG checksum mismatch"));
                }
            }
            let mut at = 20;
            let mut body = None;
            let mut sequences: HashMap<String, Vec<RawDocumentBuf>> = HashMap::new();
            while at < end {
                let kind = msg[at];
                at += 1;
                match kind {
                    0 => {
                        let n = doc_len(msg, at)?;
                        let raw = bson::RawDocument::from_bytes(&msg[at..at + n])?;
                        body = Some(Document::try_from(raw)?);
                        at += n;
                    }
                    1 => {
                        let size = rd_i32(msg, at)? as usize;
                        let sec_end = at + size;
                        if sec_end > end {
                            return Err(Error::parse("bad document sequence size"));
                        }
                        let (ident, mut p) = read_cstring(msg, at + 4)?;
                        let mut docs = Vec::new();
                        while p < sec_end {
                            let n = doc_len(msg, p)?;
                            docs.push(RawDocumentBuf::from_bytes(msg[p..p + n].to_vec())?);
                            p += n;
                        }
                        sequences.entry(ident).or_default().extend(docs);
                        at = sec_end;
                    }
                    k => return Err(Error::parse(format!("unknown OP_MSG section kind {k}"))),
                }
            }
            Ok(Request {
                request_id,
                kind: RequestKind::Msg(flags),
                body: body.ok_or_else(|| Error::parse("OP_MSG without a body section"))?,
                sequences,
                compressor: None,
                query_ns: None,
            })
        }
        OP_QUERY => {
            let (ns, at) = read_cstring(msg, 20)?;
            let at = at + 8;
            let n = doc_len(msg, at)?;
            let raw = bson::RawDocument::from_bytes(&msg[at..at + n])?;
            let mut body = Document::try_from(raw)?;
            if let Ok(inner) = body.get_document("$query") {
                body = inner.clone();
            }
            Ok(Request {
                request_id,
                kind: RequestKind::Query,
                body,
                sequences: HashMap::new(),
                compressor: None,
                query_ns: Some(ns),
            })
        }
        other => Err(Error::parse(format!("unsupported opcode {other}"))),
    }
}

fn header(buf: &mut Vec<u8>, request_id: i32, response_to: i32, op: i32) {
    buf.extend_from_slice(&0i32.to_le_bytes());
    buf.extend_from_slice(&request_id.to_le_bytes());
    buf.extend_from_slice(&response_to.to_le_bytes());
    buf.extend_from_slice(&op.to_le_bytes());
}

fn finish_len(buf: &mut [u8]) {
    let n = buf.len() as i32;
    buf[..4].copy_from_slice(&n.to_le_bytes());
}

/// Frames a reply body (raw BSON bytes) as OP_MSG or OP_REPLY, compressing it if asked.
pub fn encode_reply(
    kind: RequestKind,
    request_id: i32,
    response_to: i32,
    body: &[u8],
    compressor: Option<u8>,
    more_to_come: bool,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(body.len() + 32);
    match kind {
        RequestKind::Msg(_) => {
            header(&mut buf, request_id, response_to, OP_MSG);
            let flags: u32 = if more_to_come { FLAG_MORE_TO_COME } else { 0 };
            buf.extend_from_slice(&flags.to_le_bytes());
            buf.push(0);
            buf.extend_from_slice(body);
        }
        RequestKind::Query => {
            header(&mut buf, request_id, response_to, OP_REPLY);
            buf.extend_from_slice(&8i32.to_le_bytes()); // AwaitCapable
            buf.extend_from_slice(&0i64.to_le_bytes());
            buf.extend_from_slice(&0i32.to_le_bytes());
            buf.extend_from_slice(&1i32.to_le_bytes());
            buf.extend_from_slice(body);
        }
    }
    finish_len(&mut buf);
    match compressor {
        Some(id) if id != COMPRESSOR_NOOP => {
            let original_op = rd_i32(&buf, 12).unwrap_or(OP_MSG);
            let inner = &buf[16..];
            let comp = compress(id, inner);
            let mut out = Vec::with_capacity(comp.len() + 25);
            header(&mut out, request_id, response_to, OP_COMPRESSED);
            out.extend_from_slice(&original_op.to_le_bytes());
            out.extend_from_slice(&(inner.len() as i32).to_le_bytes());
            out.push(id);
            out.extend_from_slice(&comp);
            finish_len(&mut out);
            out
        }
        _ => buf,
    }
}

/// Appends BSON elements to a growing document without re-encoding embedded raw documents.
#[derive(Debug)]
pub struct RawWriter {
    buf: Vec<u8>,
    /// Start offsets of the open (sub)documents.
    stack: Vec<usize>,
}

impl Default for RawWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl RawWriter {
    /// Starts a new top-level document.
    pub fn new() -> Self {
        Self::with_capacity(256)
    }

    /// Starts a new top-level document with a capacity hint.
    pub fn with_capacity(n: usize) -> Self {
        let mut buf = Vec::with_capacity(n);
        buf.extend_from_slice(&[0, 0, 0, 0]);
        RawWriter { buf, stack: vec![0] }
    }

    fn key(&mut self, t: u8, key: &str) {
        self.buf.push(t);
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.push(0);
    }

    /// Appends every field of `doc`.
    pub fn fields(&mut self, doc: &Document) {
        let mut tmp = Vec::with_capacity(64);
        if doc.to_writer(&mut tmp).is_ok() && tmp.len() >= 5 {
            self.buf.extend_from_slice(&tmp[4..tmp.len() - 1]);
        }
    }

    /// Appends an embedded document given as raw bytes.
    pub fn raw_doc(&mut self, key: &str, bytes: &[u8]) {
        self.key(0x03, key);
        self.buf.extend_from_slice(bytes);
    }

    /// Opens an embedded document.
    pub fn begin_doc(&mut self, key: &str) {
        self.key(0x03, key);
        self.stack.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
    }

    /// Opens an embedded array.
    pub fn begin_array(&mut self, key: &str) {
        self.key(0x04, key);
        self.stack.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
    }

    /// Closes the innermost open document or array.
    pub fn end(&mut self) {
        self.buf.push(0);
        if let Some(start) = self.stack.pop() {
            let n = (self.buf.len() - start) as i32;
            self.buf[start..start + 4].copy_from_slice(&n.to_le_bytes());
        }
    }

    /// Current encoded size.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing but the header was written.
    pub fn is_empty(&self) -> bool {
        self.buf.len() <= 4
    }

    /// Closes every open level and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        while !self.stack.is_empty() {
            self.end();
        }
        self.buf
    }
}

/// Encodes a document to bytes.
pub fn doc_bytes(doc: &Document) -> Vec<u8> {
    let mut v = Vec::with_capacity(128);
    let _ = doc.to_writer(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn raw_writer_builds_valid_bson() {
        let inner = doc_bytes(&doc! {"a": 1});
        let mut w = RawWriter::new();
        w.begin_doc("cursor");
        w.begin_array("firstBatch");
        w.raw_doc("0", &inner);
        w.raw_doc("1", &inner);
        w.end();
        w.fields(&doc! {"id": 0i64, "ns": "db.c"});
        w.end();
        w.fields(&doc! {"ok": 1.0});
        let bytes = w.finish();
        let d = Document::from_reader(&mut bytes.as_slice()).unwrap();
        assert_eq!(d, doc! {"cursor": {"firstBatch": [{"a": 1}, {"a": 1}], "id": 0i64, "ns": "db.c"}, "ok": 1.0});
    }

    #[test]
    fn compression_round_trip() {
        let body = doc_bytes(&doc! {"hello": 1, "x": "y".repeat(100)});
        for id in [COMPRESSOR_SNAPPY, COMPRESSOR_ZLIB] {
            let msg = encode_reply(RequestKind::Msg(0), 5, 7, &body, Some(id), false);
            let r = parse_message(&msg).unwrap();
            assert_eq!(r.body.get_i32("hello").unwrap(), 1);
            assert_eq!(r.compressor, Some(id));
        }
    }
}
