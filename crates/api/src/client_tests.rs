//! Tests of the client, against the server and against scripted servers.

use super::*;
use crate::http::{self, Limits, Request, Response};
use crate::server::tests::{echo, start, TestDir};
use crate::server::{Handler, Server, ServerOptions};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// A one-connection server at `dir`'s socket running `script`.
fn scripted(
    dir: &TestDir,
    script: impl FnOnce(UnixStream) + Send + 'static,
) -> (UnixListener, JoinHandle<()>) {
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let accepting = listener.try_clone().unwrap();
    let thread = thread::spawn(move || {
        let (stream, _) = accepting.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        script(stream);
    });
    (listener, thread)
}

/// A scripted server that reads one request and answers `answer` verbatim.
fn answering(dir: &TestDir, answer: &'static [u8]) -> (UnixListener, JoinHandle<()>) {
    scripted(dir, move |stream| {
        let mut reader = BufReader::new(SocketStream(stream));
        http::read_request(&mut reader, &Limits::default())
            .unwrap()
            .unwrap();
        reader.get_mut().write_all(answer).unwrap();
    })
}

fn client(dir: &TestDir) -> Client {
    let mut client = Client::connect(&dir.socket()).unwrap();
    client.set_timeout(Some(Duration::from_secs(5))).unwrap();
    client
}

#[test]
fn round_trips_with_the_server() {
    let dir = TestDir::new("client-json");
    let handler: Arc<dyn Handler> = Arc::new(|req: &Request| match req.method.as_str() {
        "GET" => Response::json(200, &serde_json::json!({"path": req.path})),
        "PUT" => {
            let value: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            Response::json(200, &value)
        }
        _ => Response::error(405, "method not allowed"),
    });
    let handle = Server::bind(&dir.socket()).unwrap().serve(handler).unwrap();
    let mut client = Client::connect(handle.path()).unwrap();
    assert_eq!(client.path(), handle.path());

    let response = client.request("GET", "/vm?x=1", None).unwrap();
    assert!(response.is_success());
    let value: serde_json::Value = response.json().unwrap();
    assert_eq!(value, serde_json::json!({"path": "/vm"}));

    let response = client
        .request("PUT", "/vm/config", Some(br#"{"vcpus":4}"#))
        .unwrap();
    assert_eq!(response.text(), r#"{"vcpus":4}"#);

    let response = client.request("DELETE", "/vm", None).unwrap();
    assert_eq!(response.status, 405);
    assert!(!response.is_success());
    let error: serde_json::Value = response.json().unwrap();
    assert_eq!(error["error"], "method not allowed");
}

#[test]
fn sends_well_formed_requests() {
    let dir = TestDir::new("client-format");
    let (_listener, server) = scripted(&dir, |stream| {
        let mut reader = BufReader::new(SocketStream(stream));
        let limits = Limits::default();
        let mut next = || {
            let request = http::read_request(&mut reader, &limits).unwrap().unwrap();
            http::write_response(reader.get_mut(), &Response::empty(204), true).unwrap();
            request
        };
        let put = next();
        assert_eq!(put.header("host"), Some("localhost"));
        assert_eq!(put.header("content-length"), Some("0"));
        assert_eq!(put.header("content-type"), None);
        let post = next();
        assert_eq!(post.header("content-type"), Some("application/json"));
        assert_eq!(post.body, b"{}");
        let get = next();
        assert_eq!(get.header("content-length"), None);
    });
    let mut client = client(&dir);
    // All three on the one accepted connection.
    assert_eq!(
        client.request("PUT", "/vm.pause", None).unwrap().status,
        204
    );
    assert_eq!(
        client.request("POST", "/x", Some(b"{}")).unwrap().status,
        204
    );
    assert_eq!(client.request("GET", "/x", None).unwrap().status, 204);
    server.join().unwrap();
}

#[test]
fn refuses_requests_that_would_break_the_request_line() {
    let dir = TestDir::new("client-invalid");
    let _handle = Server::bind(&dir.socket()).unwrap().serve(echo()).unwrap();
    let mut client = client(&dir);
    for (method, path) in [
        ("GET", "/a b"),
        ("GET", "/a\r\nX: y"),
        ("GET", "relative"),
        ("G T", "/"),
        ("", "/"),
    ] {
        let err = client.request(method, path, None).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    }
    assert_eq!(
        client.request("GET", "/ok", None).unwrap().text(),
        "GET /ok"
    );
}

#[test]
fn reconnects_when_the_server_closes() {
    let dir = TestDir::new("client-close");
    let handler: Arc<dyn Handler> = Arc::new(|req: &Request| {
        let mut response = Response::json(200, &req.path);
        response.close = true;
        response
    });
    let handle = Server::bind(&dir.socket()).unwrap().serve(handler).unwrap();
    let mut client = client(&dir);
    for i in 0..3 {
        let path = format!("/{i}");
        let response = client.request("GET", &path, None).unwrap();
        assert_eq!(response.json::<String>().unwrap(), path);
    }
    drop(handle);
}

#[test]
fn retries_once_after_an_idle_close() {
    let options = ServerOptions {
        read_timeout: Duration::from_millis(100),
        ..ServerOptions::default()
    };
    let (dir, _handle) = start("client-idle", options);
    let mut client = client(&dir);
    assert_eq!(
        client.request("PUT", "/a", Some(b"1")).unwrap().text(),
        "PUT /a1"
    );
    // The server closes the idle connection meanwhile.
    thread::sleep(Duration::from_millis(400));
    assert_eq!(
        client.request("PUT", "/b", Some(b"2")).unwrap().text(),
        "PUT /b2"
    );
}

#[test]
fn reads_the_answer_of_a_server_at_its_limit() {
    let options = ServerOptions {
        max_connections: 0,
        ..ServerOptions::default()
    };
    let (dir, _handle) = start("client-503", options);
    let response = client(&dir).request("GET", "/", None).unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(
        response.json::<serde_json::Value>().unwrap()["error"],
        "too many connections"
    );
}

#[test]
fn skips_interim_responses_and_reads_close_delimited_bodies() {
    let dir = TestDir::new("client-interim");
    let (_listener, server) = answering(
        &dir,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nServer: x\r\n\r\nhello",
    );
    let response = client(&dir).request("GET", "/", None).unwrap();
    assert_eq!((response.status, response.text().as_str()), (200, "hello"));
    server.join().unwrap();
}

#[test]
fn refuses_oversized_and_malformed_responses() {
    let cases: [&'static [u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ];
    for (i, answer) in cases.into_iter().enumerate() {
        let dir = TestDir::new(&format!("client-bad-{i}"));
        let (_listener, server) = answering(&dir, answer);
        let err = client(&dir).request("GET", "/", None).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "case {i}: {err}");
        server.join().unwrap();
    }

    let dir = TestDir::new("client-bighead");
    let (_listener, server) = scripted(&dir, |mut stream| {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n");
        let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
        for _ in 0..70 {
            if stream.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
    let err = client(&dir).request("GET", "/", None).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
    server.join().unwrap();
}

#[test]
fn times_out_on_a_silent_server() {
    let dir = TestDir::new("client-timeout");
    let (listener, server) = scripted(&dir, |mut stream| {
        let mut buf = [0u8; 1024];
        // Read the request, never answer; return when the client leaves.
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut client = Client::connect(&dir.socket()).unwrap();
    client
        .set_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let err = client.request("GET", "/", None).unwrap_err();
    match &err {
        ClientError::Io(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
        other => panic!("unexpected {other}"),
    }
    drop(client);
    server.join().unwrap();
    drop(listener);
}
