//! Ferrovisor's control plane: HTTP/1.1 over a Unix socket.
//!
//! - [`http`]: the HTTP/1.1 message layer (request parsing with limits,
//!   response writing) over any blocking stream.
//! - [`server`]: the Unix-socket server (socket creation with safe
//!   permissions, one thread per connection, graceful shutdown).
//! - [`client`]: a small blocking client for `fvctl` and tests.
//! - [`routes`]: the endpoints under `/api/v1/`, mapped to the VMM controller.
//! - [`openapi`]: the OpenAPI document and a checker of answers against it.

pub mod client;
pub mod http;
pub mod openapi;
pub mod routes;
pub mod server;
