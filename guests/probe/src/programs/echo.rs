//! `probe=echo`: echoes COM1 input until a line reading `quit`.

use super::Outcome;
use crate::start_info::StartInfo;
use crate::{say, serial};

const QUIT: &[u8] = b"quit";

pub fn run(_info: &StartInfo) -> Outcome {
    say!("echo ready");
    let mut line = [0u8; 64];
    let mut len = 0;
    let mut overlong = false;
    let mut bytes: u64 = 0;
    let last = loop {
        let Some(byte) = serial::try_read_byte() else {
            core::hint::spin_loop();
            continue;
        };
        bytes += 1;
        serial::write_bytes(&[byte]);
        if byte == b'\r' || byte == b'\n' {
            if !overlong && &line[..len] == QUIT {
                break byte;
            }
            len = 0;
            overlong = false;
        } else if len < line.len() {
            line[len] = byte;
            len += 1;
        } else {
            overlong = true;
        }
    };
    // Start the verdict lines at the beginning of a line.
    if last != b'\n' {
        serial::write_bytes(b"\n");
    }
    say!("echo done bytes={}", bytes);
    Ok(())
}
