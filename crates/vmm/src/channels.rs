//! The host side of `--channel` ports: Unix sockets the VMM listens on, or
//! files that collect the guest's output.

use std::os::unix::net::UnixListener;
use std::path::Path;

use virtio::console::{Console, ConsolePortConfig, PortBackend};

use crate::config::{ChannelBackend, ChannelConfig};
use crate::{ConfigError, Error};

fn listen(path: &Path) -> std::io::Result<UnixListener> {
    // A socket left by an earlier run is replaced; any other file is not.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}

/// Opens every channel's backend and builds the console device.
pub fn create(channels: &[ChannelConfig]) -> Result<Console, Error> {
    let mut ports = Vec::new();
    for c in channels {
        let (path, backend) = match &c.backend {
            ChannelBackend::Socket(path) => (path, listen(path).map(PortBackend::Socket)),
            ChannelBackend::File(path) => (
                path,
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map(PortBackend::File),
            ),
        };
        let backend = backend
            .map_err(|e| ConfigError::new("--channel", format!("{}: {e}", path.display())))?;
        ports.push(ConsolePortConfig {
            name: c.name.clone(),
            console: c.console,
            backend,
        });
    }
    Console::new(ports).map_err(|e| ConfigError::new("--channel", e.to_string()).into())
}
