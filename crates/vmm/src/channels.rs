//! The host side of `--channel` ports: Unix sockets the VMM listens on, or
//! files that collect the guest's output.

use virtio::console::{Console, ConsolePortConfig, PortBackend};

use crate::config::{ChannelBackend, ChannelConfig};
use crate::console::listen;
use crate::{ConfigError, Error};

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
