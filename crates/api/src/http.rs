//! HTTP/1.1 message layer over any blocking `Read + Write` stream.
//!
//! Only what the control plane needs: requests with a `Content-Length` body
//! (no chunked transfer coding), keep-alive, pipelining, and hard limits on
//! everything a client controls. Nothing here allocates more than the
//! configured [`Limits`] because of a number the client sent.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::Serialize;

/// Size limits applied while reading a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size of the request head (request line and headers), in bytes.
    pub max_head: usize,
    /// Maximum number of header fields.
    pub max_headers: usize,
    /// Maximum body size, in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8 * 1024,
            max_headers: 64,
            max_body: 1024 * 1024,
        }
    }
}

/// The HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersion {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    #[default]
    Http11,
}

/// A parsed HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// The method, as sent (case-sensitive), e.g. `GET`.
    pub method: String,
    /// The request path, without the query string (not percent-decoded).
    pub path: String,
    /// The query string (after `?`), if any.
    pub query: Option<String>,
    /// The protocol version.
    pub version: HttpVersion,
    /// Header fields in the order received (names as sent).
    pub headers: Vec<(String, String)>,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
}

impl Request {
    /// Builds an HTTP/1.1 request from a method and a target (`/path?query`),
    /// e.g. for testing handlers.
    pub fn new(method: &str, target: &str, body: Vec<u8>) -> Request {
        let (path, query) = split_target(target);
        Request {
            method: method.to_string(),
            path,
            query,
            version: HttpVersion::Http11,
            headers: Vec::new(),
            body,
        }
    }

    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection should stay open after this request:
    /// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`.
    pub fn wants_keep_alive(&self) -> bool {
        let has_token = |token: &str| {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, v)| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if has_token("close") {
            return false;
        }
        match self.version {
            HttpVersion::Http11 => true,
            HttpVersion::Http10 => has_token("keep-alive"),
        }
    }
}

/// Splits a request target into path and query; absolute-form targets
/// (`http://host/path`) are reduced to their path.
fn split_target(target: &str) -> (String, Option<String>) {
    let mut target = target;
    for scheme in ["http://", "https://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            target = rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    let target = target.split('#').next().unwrap_or_default();
    match target.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (target.to_string(), None),
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type` header, if any.
    pub content_type: Option<&'static str>,
    /// The body.
    pub body: Vec<u8>,
    /// Close the connection after sending this response.
    pub close: bool,
    /// The `Allow` header (methods a 405's resource takes).
    pub allow: Option<String>,
}

/// The `Content-Type` of JSON bodies.
pub const JSON: &str = "application/json";

impl Response {
    /// A response with `value` serialized as a JSON body. A value that fails
    /// to serialize gives a 500 error response instead.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                status,
                content_type: Some(JSON),
                body,
                close: false,
                allow: None,
            },
            Err(e) => Response::error(500, format!("failed to serialize the response: {e}")),
        }
    }

    /// A response without a body (e.g. 204 No Content).
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            content_type: None,
            body: Vec::new(),
            close: false,
            allow: None,
        }
    }

    /// An error response with the JSON body `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        #[derive(Serialize)]
        struct ErrorBody {
            error: String,
        }
        let body = ErrorBody {
            error: message.into(),
        };
        Response {
            status,
            content_type: Some(JSON),
            // Serializing a struct holding a String cannot fail.
            body: serde_json::to_vec(&body).unwrap_or_default(),
            close: false,
            allow: None,
        }
    }
}

/// The reason phrase for a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Server Error",
        },
    }
}

/// A request that could not be read; answer with `status` and close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (HTTP {status})")]
pub struct HttpError {
    /// The status code to answer with.
    pub status: u16,
    /// What went wrong, suitable for the client.
    pub message: String,
}

impl HttpError {
    /// Creates an error with a status code and a message.
    pub fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
        }
    }

    fn from_io(e: &io::Error) -> HttpError {
        if is_timeout(e) {
            HttpError::new(408, "timed out reading the request")
        } else {
            HttpError::new(400, format!("error reading the request: {e}"))
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Why a message head could not be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// No end of head within the size limit.
    TooLarge,
    /// End of stream in the middle of the head.
    Truncated,
    /// An I/O error; `started` tells whether the start line had begun.
    Io { error: io::Error, started: bool },
}

/// Reads one message head (start line and header fields, up to and
/// including the empty line) of at most `max` bytes, consuming exactly those
/// bytes from `reader`. Empty lines before the start line are skipped (and
/// count towards `max`). Returns `Ok(None)` on end of stream before the
/// start line; `started` in I/O errors tells whether it had begun.
pub(crate) fn read_head<R: BufRead>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, HeadError> {
    let mut head = Vec::new();
    let mut seen = 0usize;
    loop {
        let avail = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(HeadError::Io {
                    error,
                    started: !head.is_empty(),
                })
            }
        };
        if avail.is_empty() {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(HeadError::Truncated)
            };
        }
        if head.is_empty() {
            let blank = avail
                .iter()
                .take(max - seen)
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if blank > 0 {
                reader.consume(blank);
                seen += blank;
                if seen >= max {
                    return Err(HeadError::TooLarge);
                }
                continue;
            }
        }
        let old = head.len();
        let take = avail.len().min(max - seen);
        head.extend_from_slice(&avail[..take]);
        if let Some(end) = find_head_end(&head, old.saturating_sub(2)) {
            reader.consume(end - old);
            head.truncate(end);
            return Ok(Some(head));
        }
        reader.consume(take);
        seen += take;
        if seen >= max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The index just past the empty line ending a head (`\n\n` or `\n\r\n`),
/// searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find_map(|i| match &buf[i..] {
        [b'\n', b'\n', ..] => Some(i + 2),
        [b'\n', b'\r', b'\n', ..] => Some(i + 3),
        _ => None,
    })
}

/// Reads the next request from `reader`.
///
/// Returns `Ok(None)` when the stream ends, or the read times out, before
/// any byte of a new request (the end of a keep-alive connection). Errors
/// carry the status to answer with; the connection must then be closed.
/// The body is never read when it is refused (too large, unknown length).
/// The stream is written to only to send `100 Continue` when the client
/// asks for it.
pub fn read_request<S: Read + Write>(
    reader: &mut BufReader<S>,
    limits: &Limits,
) -> Result<Option<Request>, HttpError> {
    let head = match read_head(reader, limits.max_head) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(HeadError::TooLarge) => {
            return Err(HttpError::new(
                431,
                format!("request head exceeds {} bytes", limits.max_head),
            ))
        }
        Err(HeadError::Truncated) => {
            return Err(HttpError::new(400, "connection closed mid-request"))
        }
        Err(HeadError::Io { error, started }) => {
            return if !started && is_timeout(&error) {
                Ok(None)
            } else {
                Err(HttpError::from_io(&error))
            };
        }
    };
    let mut request = parse_head(&head, limits)?;

    let length = body_length(&request, limits)?;
    let length = match length {
        Some(length) => length,
        None => {
            let has_body = matches!(request.method.as_str(), "POST" | "PUT" | "PATCH");
            if has_body && !reader.buffer().is_empty() {
                return Err(HttpError::new(
                    411,
                    "a request body needs a Content-Length header",
                ));
            }
            0
        }
    };
    if length == 0 {
        return Ok(Some(request));
    }
    let expects_continue = request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue && request.version == HttpVersion::Http11 && reader.buffer().is_empty() {
        // If this fails, reading the body fails too and reports it.
        let stream = reader.get_mut();
        let _ = stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .and_then(|()| stream.flush());
    }
    let mut body = Vec::new();
    let wanted = u64::try_from(length).unwrap_or(u64::MAX);
    match reader.by_ref().take(wanted).read_to_end(&mut body) {
        Ok(n) if n == length => {}
        Ok(n) => {
            return Err(HttpError::new(
                400,
                format!("connection closed after {n} of {length} body bytes"),
            ))
        }
        Err(e) => return Err(HttpError::from_io(&e)),
    }
    request.body = body;
    Ok(Some(request))
}

/// Parses a complete request head.
fn parse_head(head: &[u8], limits: &Limits) -> Result<Request, HttpError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::new(400, "malformed request head"));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(
                431,
                format!("more than {} header fields", limits.max_headers),
            ));
        }
        Err(httparse::Error::Version) if has_http_version_token(head) => {
            return Err(HttpError::new(
                505,
                "only HTTP/1.0 and HTTP/1.1 are supported",
            ));
        }
        Err(e) => return Err(HttpError::new(400, format!("malformed request: {e}"))),
    }
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HttpError::new(400, "malformed request line"));
    };
    let version = if minor == 0 {
        HttpVersion::Http10
    } else {
        HttpVersion::Http11
    };
    let mut fields = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Err(HttpError::new(
                400,
                format!("header {} is not valid UTF-8", h.name),
            ));
        };
        fields.push((h.name.to_string(), value.to_string()));
    }
    let (path, query) = split_target(target);
    if !path.starts_with('/') {
        return Err(HttpError::new(400, "the request target must be a path"));
    }
    Ok(Request {
        method: method.to_string(),
        path,
        query,
        version,
        headers: fields,
        body: Vec::new(),
    })
}

/// Whether the request line's third word looks like an HTTP version, so a
/// version error means an unsupported version rather than garbage.
fn has_http_version_token(head: &[u8]) -> bool {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    let line = head[start..].split(|&b| b == b'\n').next().unwrap_or(&[]);
    line.split(|&b| b == b' ')
        .nth(2)
        .is_some_and(|word| word.starts_with(b"HTTP/"))
}

/// The declared body length, `None` without `Content-Length`. Refuses
/// transfer codings, invalid or conflicting lengths, and bodies over the
/// limit.
fn body_length(request: &Request, limits: &Limits) -> Result<Option<usize>, HttpError> {
    if request.header("transfer-encoding").is_some() {
        return Err(HttpError::new(
            501,
            "chunked bodies are not supported; send Content-Length",
        ));
    }
    let mut length: Option<u64> = None;
    let values = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .flat_map(|(_, v)| v.split(','));
    for value in values {
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::new(
                400,
                format!("invalid Content-Length {value:?}"),
            ));
        }
        // All digits: the only possible failure is overflow.
        let Ok(n) = value.parse::<u64>() else {
            return Err(too_large(limits));
        };
        if length.is_some_and(|l| l != n) {
            return Err(HttpError::new(400, "conflicting Content-Length headers"));
        }
        length = Some(n);
    }
    match length {
        None => Ok(None),
        Some(n) => match usize::try_from(n) {
            Ok(n) if n <= limits.max_body => Ok(Some(n)),
            _ => Err(too_large(limits)),
        },
    }
}

fn too_large(limits: &Limits) -> HttpError {
    HttpError::new(
        413,
        format!("request body exceeds {} bytes", limits.max_body),
    )
}

/// Writes `response`. The connection is announced as closing when
/// `keep_alive` is false or `response.close` is set.
pub fn write_response<W: Write>(
    w: &mut W,
    response: &Response,
    keep_alive: bool,
) -> io::Result<()> {
    write_response_inner(w, response, keep_alive, true)
}

/// Writes `response`, leaving out the body when `include_body` is false
/// (answers to `HEAD`). 1xx, 204 and 304 responses never carry a body.
pub(crate) fn write_response_inner<W: Write>(
    w: &mut W,
    response: &Response,
    keep_alive: bool,
    include_body: bool,
) -> io::Result<()> {
    let status = response.status;
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: ferrovisor\r\n",
        reason(status)
    );
    if let Some(content_type) = response.content_type {
        out.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if !bodyless {
        out.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    }
    if let Some(allow) = &response.allow {
        // Header values never carry line breaks.
        let allow: String = allow.chars().filter(|c| !c.is_control()).collect();
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    if keep_alive && !response.close {
        out.push_str("Connection: keep-alive\r\n");
    } else {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if include_body && !bodyless {
        bytes.extend_from_slice(&response.body);
    }
    w.write_all(&bytes)?;
    w.flush()
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
