//! Unit tests for the HTTP message layer, driven by byte strings.

use super::*;
use std::collections::VecDeque;

/// What a scripted stream does once its chunks are used up.
#[derive(Clone, Copy)]
enum End {
    Eof,
    Timeout,
    /// Reading past the script is a test failure.
    Panic,
}

/// A scripted duplex stream: reads return the chunks one at a time, writes
/// are collected.
struct Script {
    chunks: VecDeque<Vec<u8>>,
    end: End,
    output: Vec<u8>,
}

impl Script {
    fn new(chunks: &[&[u8]], end: End) -> BufReader<Script> {
        BufReader::new(Script {
            chunks: chunks.iter().map(|c| c.to_vec()).collect(),
            end,
            output: Vec::new(),
        })
    }
}

impl Read for Script {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(chunk) = self.chunks.front_mut() else {
            return match self.end {
                End::Eof => Ok(0),
                End::Timeout => Err(io::ErrorKind::WouldBlock.into()),
                End::Panic => panic!("read past the end of the script"),
            };
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        Ok(n)
    }
}

impl Write for Script {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn read_one(bytes: &[u8]) -> Result<Option<Request>, HttpError> {
    read_request(&mut Script::new(&[bytes], End::Eof), &Limits::default())
}

fn status_of(bytes: &[u8]) -> u16 {
    match read_one(bytes) {
        Err(e) => e.status,
        Ok(r) => panic!("expected an error, got {r:?}"),
    }
}

#[test]
fn valid_get() {
    let mut r = Script::new(
        &[b"GET /vm HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"],
        End::Eof,
    );
    let req = read_request(&mut r, &Limits::default()).unwrap().unwrap();
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/vm");
    assert_eq!(req.query, None);
    assert_eq!(req.version, HttpVersion::Http11);
    assert_eq!(req.header("HOST"), Some("localhost"));
    assert_eq!(req.headers.len(), 2);
    assert!(req.body.is_empty());
    assert!(req.wants_keep_alive());
    assert_eq!(read_request(&mut r, &Limits::default()), Ok(None));
}

#[test]
fn valid_put_with_body() {
    let req = read_one(b"PUT /vm/config HTTP/1.1\r\nContent-Length: 13\r\n\r\n{\"vcpus\": 2}\n")
        .unwrap()
        .unwrap();
    assert_eq!(req.method, "PUT");
    assert_eq!(req.body, b"{\"vcpus\": 2}\n");
}

#[test]
fn pipelined_requests() {
    let mut r = Script::new(
        &[b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b?x=1 HTTP/1.1\r\n\r\n"],
        End::Panic,
    );
    let limits = Limits::default();
    let first = read_request(&mut r, &limits).unwrap().unwrap();
    assert_eq!(
        (first.path.as_str(), first.body.as_slice()),
        ("/a", &b"abc"[..])
    );
    let second = read_request(&mut r, &limits).unwrap().unwrap();
    assert_eq!(second.path, "/b");
    assert_eq!(second.query.as_deref(), Some("x=1"));
    assert!(r.buffer().is_empty());
}

#[test]
fn byte_at_a_time() {
    let bytes = b"PUT /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nokGET / HTTP/1.1\r\n\r\n";
    let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    let mut r = Script::new(&chunks, End::Eof);
    let limits = Limits::default();
    assert_eq!(read_request(&mut r, &limits).unwrap().unwrap().body, b"ok");
    assert_eq!(read_request(&mut r, &limits).unwrap().unwrap().path, "/");
    assert_eq!(read_request(&mut r, &limits), Ok(None));
}

#[test]
fn leading_empty_lines_and_bare_lf() {
    let req = read_one(b"\r\n\r\nGET /x HTTP/1.1\nHost: a\n\n")
        .unwrap()
        .unwrap();
    assert_eq!(req.path, "/x");
    assert_eq!(req.header("host"), Some("a"));
    // Only empty lines, then EOF: a clean end.
    assert_eq!(read_one(b"\r\n\r\n"), Ok(None));
}

#[test]
fn head_too_big() {
    let mut bytes = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    bytes.extend(std::iter::repeat_n(b'a', 9000));
    bytes.extend_from_slice(b"\r\n\r\n");
    // Rejected once the limit is reached, without reading the rest.
    let mut r = Script::new(&[&bytes[..8192]], End::Panic);
    let err = read_request(&mut r, &Limits::default()).unwrap_err();
    assert_eq!(err.status, 431);
    assert_eq!(status_of(&bytes), 431);

    // A head of exactly the limit is fine.
    let exact = b"GET /abc HTTP/1.1\r\n\r\n";
    let mut limits = Limits {
        max_head: exact.len(),
        ..Limits::default()
    };
    let mut r = Script::new(&[exact], End::Eof);
    assert!(read_request(&mut r, &limits).unwrap().is_some());
    limits.max_head -= 1;
    let mut r = Script::new(&[exact], End::Eof);
    assert_eq!(read_request(&mut r, &limits).unwrap_err().status, 431);
    // Endless empty lines count too.
    let mut r = Script::new(&[&[b'\n'; 64]], End::Panic);
    assert_eq!(read_request(&mut r, &limits).unwrap_err().status, 431);
}

#[test]
fn too_many_headers() {
    let mut ok = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..64 {
        ok.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    let mut too_many = ok.clone();
    too_many.extend_from_slice(b"X-64: v\r\n\r\n");
    ok.extend_from_slice(b"\r\n");
    assert_eq!(read_one(&ok).unwrap().unwrap().headers.len(), 64);
    assert_eq!(status_of(&too_many), 431);
}

#[test]
fn body_too_big_is_refused_without_reading_it() {
    let head = b"PUT /x HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n";
    let mut r = Script::new(&[head], End::Panic);
    let err = read_request(&mut r, &Limits::default()).unwrap_err();
    assert_eq!(err.status, 413);
    // At the limit is accepted.
    let mut bytes = b"PUT /x HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    bytes.resize(bytes.len() + 1024 * 1024, b'x');
    assert_eq!(read_one(&bytes).unwrap().unwrap().body.len(), 1024 * 1024);
}

#[test]
fn chunked_is_not_supported() {
    let err =
        read_one(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .unwrap_err();
    assert_eq!(err.status, 501);
    assert_eq!(
        err.message,
        "chunked bodies are not supported; send Content-Length"
    );
}

#[test]
fn missing_content_length() {
    assert_eq!(status_of(b"PUT /x HTTP/1.1\r\n\r\n{\"a\":1}"), 411);
    assert_eq!(status_of(b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n{}"), 411);
    // No body at all: fine (e.g. `curl -X PUT` without data).
    let req = read_one(b"PUT /vm.pause HTTP/1.1\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(req.body.is_empty());
}

#[test]
fn bad_content_length() {
    for value in ["abc", "-1", "+5", "", "1.5", "0x10", "1 2"] {
        let bytes = format!("PUT /x HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
        assert_eq!(status_of(bytes.as_bytes()), 400, "{value:?}");
    }
    let huge = b"PUT /x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n";
    let mut r = Script::new(&[huge], End::Panic);
    assert_eq!(
        read_request(&mut r, &Limits::default()).unwrap_err().status,
        413
    );
    assert_eq!(
        status_of(b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        400
    );
    assert_eq!(
        status_of(b"PUT /x HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\nab"),
        400
    );
    let same = read_one(b"PUT /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab");
    assert_eq!(same.unwrap().unwrap().body, b"ab");
}

#[test]
fn garbage() {
    assert_eq!(status_of(b"\x00\x01\x02\xff garbage\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET / FOO/1.1\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET /\x7f HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n"), 400);
    assert_eq!(status_of(b"GET * HTTP/1.1\r\n\r\n"), 400);
    // Garbage without any line end: truncated at EOF, or too large.
    assert_eq!(status_of(b"\x16\x03\x01\x02\x00\x01\x00"), 400);
    assert_eq!(status_of(&[b'z'; 10_000]), 431);
}

#[test]
fn unsupported_version() {
    assert_eq!(status_of(b"GET / HTTP/2.0\r\n\r\n"), 505);
    assert_eq!(status_of(b"GET / HTTP/1.2\r\n\r\n"), 505);
    assert_eq!(reason(505), "HTTP Version Not Supported");
}

#[test]
fn truncated_request() {
    // EOF mid-body is an error, not a hang or a short body.
    let err = read_one(b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc").unwrap_err();
    assert_eq!(err.status, 400);
    // EOF mid-head.
    assert_eq!(status_of(b"GET /x HTTP/1.1\r\nHost: loc"), 400);
}

#[test]
fn timeouts() {
    let limits = Limits::default();
    // Idle: nothing received, the connection just ends.
    let mut r = Script::new(&[], End::Timeout);
    assert_eq!(read_request(&mut r, &limits), Ok(None));
    // Mid-head and mid-body: 408.
    let mut r = Script::new(&[b"GET / HTTP/1.1\r\n"], End::Timeout);
    assert_eq!(read_request(&mut r, &limits).unwrap_err().status, 408);
    let mut r = Script::new(
        &[b"PUT / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"],
        End::Timeout,
    );
    assert_eq!(read_request(&mut r, &limits).unwrap_err().status, 408);
}

#[test]
fn query_string_and_targets() {
    let req = read_one(b"GET /vm/info?verbose=1&x=%20y HTTP/1.1\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(req.path, "/vm/info");
    assert_eq!(req.query.as_deref(), Some("verbose=1&x=%20y"));
    let req = read_one(b"GET /? HTTP/1.1\r\n\r\n").unwrap().unwrap();
    assert_eq!((req.path.as_str(), req.query.as_deref()), ("/", Some("")));
    let req = read_one(b"GET http://localhost/vm?a HTTP/1.1\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(
        (req.path.as_str(), req.query.as_deref()),
        ("/vm", Some("a"))
    );
    let built = Request::new("PUT", "/a/b?c=d", b"{}".to_vec());
    assert_eq!(
        (built.path.as_str(), built.query.as_deref()),
        ("/a/b", Some("c=d"))
    );
}

#[test]
fn keep_alive_semantics() {
    let ka = |bytes: &[u8]| read_one(bytes).unwrap().unwrap().wants_keep_alive();
    assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    assert!(!ka(
        b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
    ));
    let req = read_one(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert_eq!(req.version, HttpVersion::Http10);
}

#[test]
fn expect_continue() {
    let mut r = Script::new(
        &[
            b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            b"ok",
        ],
        End::Eof,
    );
    let req = read_request(&mut r, &Limits::default()).unwrap().unwrap();
    assert_eq!(req.body, b"ok");
    assert_eq!(r.get_ref().output, b"HTTP/1.1 100 Continue\r\n\r\n");
    // Refused bodies get no 100 Continue.
    let mut r = Script::new(
        &[b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9999999\r\n\r\n"],
        End::Panic,
    );
    assert_eq!(
        read_request(&mut r, &Limits::default()).unwrap_err().status,
        413
    );
    assert!(r.get_ref().output.is_empty());
}

fn written(response: &Response, keep_alive: bool) -> String {
    let mut out = Vec::new();
    write_response(&mut out, response, keep_alive).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn write_responses() {
    let text = written(&Response::json(200, &serde_json::json!({"a": 1})), true);
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\nServer: ferrovisor\r\nContent-Type: application/json\r\n\
         Content-Length: 7\r\nConnection: keep-alive\r\n\r\n{\"a\":1}"
    );
    let text = written(&Response::empty(204), false);
    assert_eq!(
        text,
        "HTTP/1.1 204 No Content\r\nServer: ferrovisor\r\nConnection: close\r\n\r\n"
    );
    let mut closing = Response::error(404, "no such \"thing\"");
    closing.close = true;
    let text = written(&closing, true);
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
    assert!(text.contains("Connection: close\r\n"));
    assert!(text.ends_with("\r\n\r\n{\"error\":\"no such \\\"thing\\\"\"}"));

    let mut out = Vec::new();
    let response = Response::json(200, "body");
    write_response_inner(&mut out, &response, true, false).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Content-Length: 6\r\n") && text.ends_with("\r\n\r\n"));
}

#[test]
fn response_helpers() {
    let e = Response::error(422, "bad");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&e.body).unwrap(),
        serde_json::json!({"error": "bad"})
    );
    assert_eq!(e.content_type, Some("application/json"));
    let bad_key = std::collections::HashMap::from([((1, 2), 3)]);
    assert_eq!(Response::json(200, &bad_key).status, 500);
    for code in [
        200, 204, 400, 404, 405, 408, 409, 411, 413, 415, 422, 431, 500, 501, 503, 504, 505,
    ] {
        assert!(!reason(code).is_empty());
    }
    assert_eq!(reason(299), "Success");
}
