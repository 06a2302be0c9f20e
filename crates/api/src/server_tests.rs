//! Tests of the Unix-socket server.

use super::*;
use crate::client::Client;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::AtomicUsize;
use std::sync::Barrier;
use std::time::Instant;

/// A private temporary directory, removed on drop.
pub(crate) struct TestDir {
    pub(crate) path: PathBuf,
}

impl TestDir {
    pub(crate) fn new(tag: &str) -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("ferrovisor-api-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        // Explicit mode: a concurrent `bind` may have the umask at 0177.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        TestDir { path }
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.path.join("api.sock")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Answers `METHOD PATH` followed by the request body.
pub(crate) fn echo() -> Arc<dyn Handler> {
    Arc::new(|req: &Request| {
        let mut body = format!("{} {}", req.method, req.path).into_bytes();
        body.extend_from_slice(&req.body);
        Response {
            status: 200,
            content_type: Some("text/plain"),
            body,
            close: false,
            allow: None,
        }
    })
}

/// Serves `echo` at a socket in a fresh directory.
pub(crate) fn start(tag: &str, options: ServerOptions) -> (TestDir, ServerHandle) {
    let dir = TestDir::new(tag);
    let server = Server::bind(&dir.socket()).unwrap();
    let handle = server.serve_with(echo(), options).unwrap();
    (dir, handle)
}

/// Connects with a 5 s timeout so that a failing test does not hang.
fn raw(path: &Path) -> UnixStream {
    let stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Sends `bytes` and reads everything until the server closes.
fn exchange(path: &Path, bytes: &[u8]) -> String {
    let mut stream = raw(path);
    stream.write_all(bytes).unwrap();
    read_all(&mut stream)
}

/// Reads until the end of the stream. A peer closing with unread data
/// pending makes Linux report ECONNRESET after the data, in place of EOF.
fn read_all(stream: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read failed: {e}"),
        }
    }
    String::from_utf8(out).unwrap()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn socket_mode_is_0600_and_removed_on_drop() {
    let dir = TestDir::new("mode");
    let server = Server::bind(&dir.socket()).unwrap();
    assert_eq!(server.path(), dir.socket());
    let meta = fs::symlink_metadata(dir.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    drop(server);
    assert!(!dir.socket().exists());
}

#[test]
fn world_writable_parent_is_refused() {
    let dir = TestDir::new("insecure");
    fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o777)).unwrap();
    let err = Server::bind(&dir.socket()).unwrap_err();
    assert!(
        matches!(err, ServerError::InsecureDirectory { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains(&*dir.path.to_string_lossy()), "{message}");
    assert!(message.contains("private directory"), "{message}");
    assert!(!dir.socket().exists());
}

#[test]
fn stale_socket_is_replaced() {
    let dir = TestDir::new("stale");
    drop(UnixListener::bind(dir.socket()).unwrap());
    assert!(dir.socket().exists());
    let handle = Server::bind(&dir.socket()).unwrap().serve(echo()).unwrap();
    let mut client = Client::connect(handle.path()).unwrap();
    assert_eq!(client.request("GET", "/x", None).unwrap().text(), "GET /x");
}

#[test]
fn live_socket_and_other_files_are_refused() {
    let dir = TestDir::new("live");
    let _other = UnixListener::bind(dir.socket()).unwrap();
    let err = Server::bind(&dir.socket()).unwrap_err();
    assert!(matches!(err, ServerError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("already in use"));
    assert!(dir.socket().exists());

    let file = dir.path.join("file");
    fs::write(&file, b"keep me").unwrap();
    let err = Server::bind(&file).unwrap_err();
    assert!(matches!(err, ServerError::NotASocket { .. }), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn shutdown_stops_accepting_and_removes_the_socket() {
    let (dir, handle) = start("shutdown", ServerOptions::default());
    let mut client = Client::connect(handle.path()).unwrap();
    assert_eq!(client.request("GET", "/", None).unwrap().status, 200);
    handle.shutdown();
    assert!(!dir.socket().exists());
    assert!(UnixStream::connect(dir.socket()).is_err());
    // The open connection was left to finish on its own.
    assert_eq!(
        client.request("GET", "/still", None).unwrap().text(),
        "GET /still"
    );
}

#[test]
fn many_concurrent_clients_are_served() {
    // More clients than connection slots: the burst waits in the queue.
    const CLIENTS: usize = 100;
    let options = ServerOptions::default();
    assert!(options.max_connections < CLIENTS);
    let (_dir, handle) = start("concurrent", options);
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let path = handle.path().to_path_buf();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut client = Client::connect(&path).unwrap();
                client.set_timeout(Some(Duration::from_secs(30))).unwrap();
                // Everybody holds a connection before anybody sends.
                barrier.wait();
                for j in 0..3 {
                    let body = format!("{{\"client\":{i},\"n\":{j}}}");
                    let response = client
                        .request("PUT", "/echo", Some(body.as_bytes()))
                        .unwrap();
                    assert_eq!(response.status, 200);
                    assert_eq!(response.text(), format!("PUT /echo{body}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn half_open_client_does_not_block_others() {
    let options = ServerOptions {
        read_timeout: Duration::from_millis(500),
        ..ServerOptions::default()
    };
    let (_dir, handle) = start("halfopen", options);
    let mut stalled = raw(handle.path());
    stalled
        .write_all(b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nab")
        .unwrap();
    let mut stalled_head = raw(handle.path());
    stalled_head.write_all(b"GET /x HTTP/1.1\r\nHo").unwrap();

    let started = Instant::now();
    let mut client = Client::connect(handle.path()).unwrap();
    assert_eq!(
        client.request("GET", "/ok", None).unwrap().text(),
        "GET /ok"
    );
    assert!(started.elapsed() < Duration::from_millis(400));

    // The stalled ones get 408 once the read timeout passes.
    for stream in [&mut stalled, &mut stalled_head] {
        let text = read_all(stream);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    }
}

#[test]
fn idle_connection_is_closed_silently() {
    let options = ServerOptions {
        read_timeout: Duration::from_millis(100),
        ..ServerOptions::default()
    };
    let (_dir, handle) = start("idle", options);
    let mut stream = raw(handle.path());
    assert_eq!(read_all(&mut stream), "");
    wait_until("the connection to end", || handle.active_connections() == 0);
}

#[test]
fn connections_over_the_limit_get_503() {
    let options = ServerOptions {
        max_connections: 3,
        queue_timeout: Duration::from_millis(100),
        ..ServerOptions::default()
    };
    let (_dir, handle) = start("limit", options);
    let idle: Vec<_> = (0..3).map(|_| raw(handle.path())).collect();
    let text = exchange(handle.path(), b"GET / HTTP/1.1\r\n\r\n");
    assert!(
        text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\n{\"error\":\"too many connections\"}"),
        "{text}"
    );
    assert_eq!(handle.active_connections(), 3);

    drop(idle);
    wait_until("the idle connections to end", || {
        handle.active_connections() == 0
    });
    let mut client = Client::connect(handle.path()).unwrap();
    assert_eq!(client.request("GET", "/", None).unwrap().status, 200);
}

#[test]
fn huge_body_gets_413_without_sending_it() {
    let (_dir, handle) = start("huge", ServerOptions::default());
    let text = exchange(
        handle.path(),
        b"PUT /x HTTP/1.1\r\nContent-Length: 104857600\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.contains("Connection: close\r\n"));

    // A client busy writing the body still gets the answer.
    let mut client = Client::connect(handle.path()).unwrap();
    client.set_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = vec![b' '; 4 * 1024 * 1024];
    let response = client.request("PUT", "/x", Some(&body)).unwrap();
    assert_eq!(response.status, 413);
    assert!(response.text().contains("exceeds"));
}

#[test]
fn protocol_errors_are_answered_then_closed() {
    let (_dir, handle) = start("garbage", ServerOptions::default());
    let text = exchange(
        handle.path(),
        b"\x01\x02 garbage\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    let text = exchange(
        handle.path(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 501 "), "{text}");
}

#[test]
fn pipelining_head_and_http10() {
    let (_dir, handle) = start("pipeline", ServerOptions::default());
    let text = exchange(
        handle.path(),
        b"PUT /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nxyHEAD /b HTTP/1.1\r\n\r\n\
          GET /c HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let responses: Vec<_> = text.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(responses.len(), 3, "{text}");
    assert!(responses[0].ends_with("\r\n\r\nPUT /axy"));
    assert!(responses[1].contains("Content-Length: 7\r\n"));
    assert!(responses[1].ends_with("\r\n\r\n"));
    assert!(responses[2].ends_with("Connection: close\r\n\r\nGET /c"));
    // HTTP/1.0 closes after one response.
    let text = exchange(handle.path(), b"GET /d HTTP/1.0\r\n\r\n");
    assert!(text.ends_with("Connection: close\r\n\r\nGET /d"), "{text}");
}

#[test]
fn handler_panic_gives_500() {
    let dir = TestDir::new("panic");
    let handler: Arc<dyn Handler> = Arc::new(|req: &Request| -> Response {
        if req.path == "/panic" {
            panic!("handler bug");
        }
        Response::empty(204)
    });
    let handle = Server::bind(&dir.socket()).unwrap().serve(handler).unwrap();
    let mut client = Client::connect(handle.path()).unwrap();
    assert_eq!(client.request("GET", "/panic", None).unwrap().status, 500);
    assert_eq!(client.request("GET", "/fine", None).unwrap().status, 204);
}

#[test]
fn responded_is_called_after_answering() {
    struct Hooked(AtomicUsize);
    impl Handler for Hooked {
        fn handle(&self, _: &Request) -> Response {
            Response::empty(204)
        }
        fn responded(&self, request: &Request, response: &Response) {
            assert_eq!((request.path.as_str(), response.status), ("/x", 204));
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dir = TestDir::new("responded");
    let hooked = Arc::new(Hooked(AtomicUsize::new(0)));
    let handler: Arc<dyn Handler> = hooked.clone();
    let handle = Server::bind(&dir.socket()).unwrap().serve(handler).unwrap();
    let mut client = Client::connect(handle.path()).unwrap();
    assert_eq!(client.request("GET", "/x", None).unwrap().status, 204);
    wait_until("the hook", || hooked.0.load(Ordering::SeqCst) == 1);
}
