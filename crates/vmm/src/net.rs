//! The host side of the VM's network cards: TAP queues opened (or adopted
//! by fd), given their host address and brought up once, before the guest
//! runs; each VM instance (a reboot builds a new one) gets duplicates.

use std::os::fd::RawFd;

use virtio::net::{tap, Net, NetConfig as DeviceConfig, TapQueue};

use crate::config::NetConfig;
use crate::{ConfigError, Error};

/// The TAP queues of one card and what the guest is told about them.
pub(crate) struct NetBackend {
    taps: Vec<TapQueue>,
    mac: [u8; 6],
    mtu: u32,
}

fn config_error(e: impl std::fmt::Display) -> Error {
    ConfigError::new("--net", e.to_string()).into()
}

impl NetBackend {
    /// Opens and configures the TAP of `net` (already validated).
    pub(crate) fn open(net: &NetConfig) -> Result<NetBackend, Error> {
        let pairs = usize::from(net.queue_pairs());
        let (taps, name) = match (&net.tap, net.fd) {
            (Some(name), _) => (
                TapQueue::open_named(name, pairs).map_err(config_error)?,
                name.clone(),
            ),
            (None, Some(fd)) => {
                check_inheritable(fd)?;
                // SAFETY: `fd=N` hands the descriptor to the VMM: nothing
                // else in the process uses or closes it, and
                // `check_inheritable` made sure it is open and not one of
                // the standard streams.
                let (q, name) = unsafe { TapQueue::adopt_fd(fd) }.map_err(config_error)?;
                (vec![q], name)
            }
            (None, None) => return Err(config_error("tap=NAME or fd=N is required")),
        };
        let address = net.ip.map(|ip| {
            (
                ip,
                net.mask
                    .unwrap_or(std::net::Ipv4Addr::new(255, 255, 255, 0)),
            )
        });
        if net.tap.is_some() || address.is_some() {
            tap::configure_host(&name, address).map_err(config_error)?;
        }
        let mtu = tap::mtu(&name).map_err(config_error)?;
        let mac = match net.mac.as_deref().and_then(crate::config::parse_mac) {
            Some(mac) => mac,
            None => virtio::net::derive_mac(&name, net.id.as_deref().unwrap_or("net")),
        };
        Ok(NetBackend { taps, mac, mtu })
    }

    /// A device for one VM instance, on duplicates of the TAP queues.
    pub(crate) fn device(&self, net: &NetConfig) -> std::io::Result<Net> {
        let taps = self
            .taps
            .iter()
            .map(TapQueue::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        let config = DeviceConfig {
            mac: self.mac,
            queue_pairs: net.queue_pairs(),
            queue_size: net.queue_size,
            offload_tso: net.offload_tso,
            offload_csum: net.offload_csum,
            mtu: self.mtu,
        };
        Net::new(config, taps).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }
}

/// Refuses `fd=N` for the standard streams or a descriptor that is not open.
fn check_inheritable(fd: RawFd) -> Result<(), Error> {
    if fd <= 2 {
        return Err(config_error(format!(
            "fd={fd}: a standard stream, not a TAP"
        )));
    }
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(config_error(format!("fd={fd}: not an open descriptor")));
    }
    Ok(())
}
