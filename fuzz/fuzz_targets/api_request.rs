//! The API's parsers on hostile bytes: HTTP/1.1 request parsing with its
//! limits, then the body as a VM config (`vm.create`) and as a
//! `vm.shutdown` body. Any panic, overflow or runaway allocation is a bug.
#![no_main]

use std::io::{BufReader, Cursor, Read, Write};

use api::http::{read_request, Limits};
use libfuzzer_sys::fuzz_target;

/// Reads the fuzz input; swallows what the parser writes (100 Continue).
struct Peer(Cursor<Vec<u8>>);

impl Read for Peer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut reader = BufReader::new(Peer(Cursor::new(data.to_vec())));
    let limits = Limits::default();
    // Pipelined requests: parse until the input ends or an error.
    for _ in 0..8 {
        match read_request(&mut reader, &limits) {
            Ok(Some(request)) => {
                assert!(request.body.len() <= limits.max_body);
                if let Ok(value) = api::routes::parse_body::<serde_json::Value>(&request.body) {
                    let _ = vmm::config::from_document(value);
                }
                let _ = api::routes::parse_body::<api::routes::ShutdownBody>(&request.body);
            }
            Ok(None) | Err(_) => break,
        }
    }
    // The raw input as a config document too (no HTTP framing).
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = vmm::config::from_document(value);
    }
});
