//! A small blocking HTTP/1.1 client over a Unix socket, for `fvctl` and
//! tests.
//!
//! The connection is kept alive between requests and re-opened when the
//! server closed it; a request that met a connection the server had closed
//! while idle is retried once on a fresh one.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::http::{read_head, HeadError};
use crate::server::SocketStream;

/// Largest response head accepted, in bytes.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest response body accepted, in bytes.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;
/// Most header fields accepted in a response.
const MAX_RESPONSE_HEADERS: usize = 64;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed (connect, read, write, timeout).
    #[error("API socket I/O error: {0}")]
    Io(#[from] io::Error),
    /// The request could not be sent or the response was not valid HTTP.
    #[error("API protocol error: {0}")]
    Protocol(String),
}

/// A response received by [`Client::request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// Status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl ClientResponse {
    /// Deserializes the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

type Connection = BufReader<SocketStream>;

/// A blocking client for the API socket.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    timeout: Option<Duration>,
    conn: Option<Connection>,
    /// Whether `conn` has already carried a request.
    conn_used: bool,
}

/// How one attempt at a request ended without a response.
enum Failure {
    /// The connection was closed before any byte of a response.
    Closed(io::Error),
    /// Anything else.
    Error(ClientError),
}

impl Client {
    /// Connects to the API socket at `path`. No timeout is set.
    pub fn connect(path: &Path) -> io::Result<Client> {
        let mut client = Client {
            path: path.to_path_buf(),
            timeout: None,
            conn: None,
            conn_used: false,
        };
        client.conn = Some(client.open()?);
        Ok(client)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the read and write timeout (`None`: wait forever) for this and
    /// later connections. A zero duration is an error.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if let Some(conn) = &self.conn {
            set_timeouts(&conn.get_ref().0, timeout)?;
        }
        self.timeout = timeout;
        Ok(())
    }

    /// Sends a request and reads the response. `body` is sent as JSON.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<ClientResponse, ClientError> {
        let message = build_request(method, path, body)?;
        let (mut conn, reused) = match self.conn.take() {
            Some(conn) => (conn, self.conn_used),
            None => (self.open()?, false),
        };
        let outcome = match exchange(&mut conn, &message, method) {
            Err(Failure::Closed(_)) if reused => {
                // The server closed the idle connection before reading the
                // request: send it again on a new one.
                conn = self.open()?;
                exchange(&mut conn, &message, method)
            }
            outcome => outcome,
        };
        match outcome {
            Ok((response, keep_alive)) => {
                if keep_alive {
                    self.conn = Some(conn);
                    self.conn_used = true;
                }
                Ok(response)
            }
            Err(Failure::Closed(e)) => Err(ClientError::Io(e)),
            Err(Failure::Error(e)) => Err(e),
        }
    }

    fn open(&self) -> io::Result<Connection> {
        let stream = UnixStream::connect(&self.path)?;
        set_timeouts(&stream, self.timeout)?;
        Ok(BufReader::new(SocketStream(stream)))
    }
}

fn set_timeouts(stream: &UnixStream, timeout: Option<Duration>) -> io::Result<()> {
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)
}

/// Serializes a request; refuses a method or target that would break the
/// request line.
fn build_request(method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, ClientError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(token) {
        return Err(ClientError::Protocol(format!("invalid method {method:?}")));
    }
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ClientError::Protocol(format!(
            "invalid request path {path:?}"
        )));
    }
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if body.is_some() || matches!(method, "PUT" | "POST" | "PATCH") {
        head.push_str(&format!(
            "Content-Length: {}\r\n",
            body.map_or(0, <[u8]>::len)
        ));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body.unwrap_or_default());
    Ok(message)
}

/// Sends `message` and reads the response, telling whether the connection
/// can be reused.
fn exchange(
    conn: &mut Connection,
    message: &[u8],
    method: &str,
) -> Result<(ClientResponse, bool), Failure> {
    let sent = conn.get_mut().write_all(message);
    let write_error = match sent {
        Ok(()) => None,
        // The server may have answered (e.g. 413, 503) and closed before
        // reading everything: its response can still be read.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Some(e)
        }
        Err(e) => return Err(Failure::Error(e.into())),
    };
    match read_response(conn, method) {
        Ok(Some(response)) => Ok(response),
        Ok(None) => Err(Failure::Closed(write_error.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection without responding",
            )
        }))),
        Err(e) => Err(Failure::Error(match write_error {
            Some(write_error) => write_error.into(),
            None => e,
        })),
    }
}

/// Reads one response (skipping 1xx interim responses). `Ok(None)` when the
/// connection was closed before any byte of it.
fn read_response(
    conn: &mut Connection,
    method: &str,
) -> Result<Option<(ClientResponse, bool)>, ClientError> {
    loop {
        let head = match read_head(conn, MAX_RESPONSE_HEAD) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(None),
            Err(HeadError::TooLarge) => {
                return Err(protocol(format!(
                    "response head exceeds {MAX_RESPONSE_HEAD} bytes"
                )))
            }
            Err(HeadError::Truncated) => return Err(protocol("connection closed mid-response")),
            Err(HeadError::Io { error, .. }) => return Err(error.into()),
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(protocol("malformed response head")),
            Err(e) => return Err(protocol(format!("malformed response: {e}"))),
        }
        let (Some(status), Some(minor)) = (parsed.code, parsed.version) else {
            return Err(protocol("malformed status line"));
        };
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let mut length = None;
        let mut close = minor == 0;
        for h in parsed.headers.iter() {
            let value = String::from_utf8_lossy(h.value);
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(protocol("chunked responses are not supported"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| protocol(format!("invalid Content-Length {:?}", value.trim())))?;
                if length.is_some_and(|l| l != n) {
                    return Err(protocol("conflicting Content-Length headers"));
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") && minor == 0 {
                        close = false;
                    }
                }
            }
        }
        let bodyless = method == "HEAD" || status == 204 || status == 304;
        let body = match (bodyless, length) {
            (true, _) => Vec::new(),
            (false, Some(n)) => read_body(conn, n)?,
            (false, None) => {
                close = true;
                read_to_end(conn)?
            }
        };
        return Ok(Some((ClientResponse { status, body }, !close)));
    }
}

fn protocol(message: impl Into<String>) -> ClientError {
    ClientError::Protocol(message.into())
}

/// Reads a body of exactly `length` bytes.
fn read_body(conn: &mut Connection, length: usize) -> Result<Vec<u8>, ClientError> {
    if length > MAX_RESPONSE_BODY {
        return Err(protocol(format!(
            "response body of {length} bytes exceeds {MAX_RESPONSE_BODY}"
        )));
    }
    let mut body = Vec::new();
    let wanted = u64::try_from(length).unwrap_or(u64::MAX);
    let n = conn.by_ref().take(wanted).read_to_end(&mut body)?;
    if n != length {
        return Err(protocol(format!(
            "connection closed after {n} of {length} body bytes"
        )));
    }
    Ok(body)
}

/// Reads a body delimited by the end of the connection.
fn read_to_end(conn: &mut Connection) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    let cap = u64::try_from(MAX_RESPONSE_BODY).unwrap_or(u64::MAX);
    conn.by_ref().take(cap + 1).read_to_end(&mut body)?;
    if body.len() > MAX_RESPONSE_BODY {
        return Err(protocol(format!(
            "response body exceeds {MAX_RESPONSE_BODY} bytes"
        )));
    }
    Ok(body)
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
