//! The host side of a NIC: TAP queues opened (or adopted by fd) and
//! configured once, before the guest runs. Workers then only `readv` and
//! `writev` them; the one run-time ioctl is `TUNSETOFFLOAD` when the driver
//! (re)negotiates its receive offloads.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::header::HEADER_LEN;

/// Why a TAP device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or not a valid name.
    #[error("interface name '{0}': 1 to 15 bytes, no '/', ':', whitespace or NUL")]
    Name(String),
    /// /dev/net/tun could not be opened.
    #[error("opening /dev/net/tun")]
    OpenTun(#[source] io::Error),
    /// An ioctl on the TAP (or a socket about it) failed.
    #[error("{what} on {name}")]
    Ioctl {
        /// The request that failed.
        what: &'static str,
        /// The interface.
        name: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// `fd=N` is not an open TAP with a virtio-net header.
    #[error("fd {fd}: {why}")]
    BadFd {
        /// The descriptor given.
        fd: RawFd,
        /// What is wrong with it.
        why: String,
    },
}

/// One queue of a TAP device, non-blocking, with a 12-byte virtio-net header
/// in front of every frame.
#[derive(Debug)]
pub struct TapQueue {
    file: File,
}

impl AsRawFd for TapQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Offload bits of `TUNSETOFFLOAD` (what the TAP may hand the guest).
pub mod offload {
    /// Partial checksums.
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    /// TCP/IPv4 segmentation.
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    /// TCP/IPv6 segmentation.
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    /// TSO with ECN.
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
    /// UDP fragmentation offload.
    pub const UFO: u32 = libc::TUN_F_UFO;
}

/// `struct ifreq` with the union viewed as flags, an int or an address.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    fn set_ipv4(&mut self, addr: Ipv4Addr) {
        // struct sockaddr_in: family, port, address.
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[4..8].copy_from_slice(&addr.octets());
    }
}

fn check_name(name: &str) -> Result<(), TapError> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(TapError::Name(name.to_string()));
    }
    Ok(())
}

fn ioctl_ptr<T>(fd: RawFd, request: libc::Ioctl, arg: *mut T) -> io::Result<()> {
    // SAFETY: every caller passes a request whose argument is the pointed-to
    // type (an ifreq or an int), valid for the duration of the call.
    let r = unsafe { libc::ioctl(fd, request, arg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl_value(fd: RawFd, request: libc::Ioctl, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the request takes its argument by value; no memory is shared.
    let r = unsafe { libc::ioctl(fd, request, arg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor this module owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl TapQueue {
    /// Opens `queues` queues of TAP device `name` (created if missing), each
    /// with IFF_VNET_HDR, IFF_MULTI_QUEUE when there are several.
    pub fn open_named(name: &str, queues: usize) -> Result<Vec<TapQueue>, TapError> {
        check_name(name)?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut out = Vec::with_capacity(queues);
        for _ in 0..queues.max(1) {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags_cloexec()
                .open("/dev/net/tun")
                .map_err(TapError::OpenTun)?;
            let mut req = IfReq::new(name);
            req.set_short(flags as i16);
            ioctl_ptr(file.as_raw_fd(), libc::TUNSETIFF, &mut req).map_err(|source| {
                TapError::Ioctl {
                    what: "TUNSETIFF",
                    name: name.into(),
                    source,
                }
            })?;
            let q = TapQueue { file };
            q.finish_setup(name)?;
            out.push(q);
        }
        Ok(out)
    }

    /// Adopts descriptor `fd` (a TAP queue opened with IFF_VNET_HDR by the
    /// caller); it is closed with the device. Returns the queue and its
    /// interface name.
    ///
    /// # Safety
    /// `fd` must be an open descriptor nothing else owns or will close.
    pub unsafe fn adopt_fd(fd: RawFd) -> Result<(TapQueue, String), TapError> {
        let bad = |why: String| TapError::BadFd { fd, why };
        // SAFETY: the caller hands over sole ownership of `fd`.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq::new("");
        ioctl_ptr(owned.as_raw_fd(), libc::TUNGETIFF, &mut req)
            .map_err(|e| bad(format!("not a TAP device (TUNGETIFF: {e})")))?;
        let flags = i32::from(req.short());
        if flags & libc::IFF_TAP == 0 {
            return Err(bad("a TUN device, not TAP".into()));
        }
        if flags & libc::IFF_VNET_HDR == 0 {
            return Err(bad("opened without IFF_VNET_HDR".into()));
        }
        let name = req.name();
        // SAFETY: F_SETFD on the descriptor just adopted.
        unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        let q = TapQueue {
            file: File::from(owned),
        };
        q.finish_setup(&name)?;
        Ok((q, name))
    }

    fn finish_setup(&self, name: &str) -> Result<(), TapError> {
        let io = |what| {
            move |source| TapError::Ioctl {
                what,
                name: name.into(),
                source,
            }
        };
        let mut size = HEADER_LEN as libc::c_int;
        ioctl_ptr(self.as_raw_fd(), libc::TUNSETVNETHDRSZ, &mut size)
            .map_err(io("TUNSETVNETHDRSZ"))?;
        self.set_offload(0).map_err(io("TUNSETOFFLOAD"))?;
        set_nonblocking(self.as_raw_fd()).map_err(io("O_NONBLOCK"))?;
        Ok(())
    }

    /// Tells the TAP which offloads it may hand to the guest (`offload::*`).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        ioctl_value(
            self.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    }

    /// The offloads of `offload::*` this kernel's TAP accepts (UFO is not
    /// everywhere); leaves the queue with none set.
    pub fn supported_offloads(&self) -> u32 {
        let base = offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN;
        let mut supported = 0;
        for candidate in [base | offload::UFO, base, offload::CSUM] {
            if self.set_offload(candidate).is_ok() {
                supported = candidate;
                break;
            }
        }
        let _ = self.set_offload(0);
        supported
    }

    /// `readv` into `iovecs`: the frame's length with its header, or the error
    /// (`WouldBlock` when the TAP is empty).
    pub fn read_vectored(&self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        let count = iovecs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: each iovec describes guest memory (or a local buffer) that
        // stays mapped and unaliased by Rust references during the call.
        let r = unsafe { libc::readv(self.as_raw_fd(), iovecs.as_ptr(), count) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// `writev` of one frame with its header.
    pub fn write_vectored(&self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        let count = iovecs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: each iovec describes mapped guest memory (or a local
        // buffer) that the kernel only reads.
        let r = unsafe { libc::writev(self.as_raw_fd(), iovecs.as_ptr(), count) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// Another handle on the same queue (for the control queue's offload changes).
    pub fn try_clone(&self) -> io::Result<TapQueue> {
        Ok(TapQueue {
            file: self.file.try_clone()?,
        })
    }
}

trait CloexecOpen {
    fn custom_flags_cloexec(&mut self) -> &mut Self;
}

impl CloexecOpen for std::fs::OpenOptions {
    fn custom_flags_cloexec(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_CLOEXEC)
    }
}

/// A socket to configure interface `name` with.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Gives interface `name` the host address `ip`/`mask` (when asked) and
/// brings it up if it is down.
pub fn configure_host(name: &str, address: Option<(Ipv4Addr, Ipv4Addr)>) -> Result<(), TapError> {
    check_name(name)?;
    let io = |what| {
        move |source| TapError::Ioctl {
            what,
            name: name.into(),
            source,
        }
    };
    let sock = control_socket().map_err(io("socket"))?;
    let fd = sock.as_raw_fd();
    if let Some((ip, mask)) = address {
        let mut req = IfReq::new(name);
        req.set_ipv4(ip);
        ioctl_ptr(fd, libc::SIOCSIFADDR, &mut req).map_err(io("SIOCSIFADDR"))?;
        let mut req = IfReq::new(name);
        req.set_ipv4(mask);
        ioctl_ptr(fd, libc::SIOCSIFNETMASK, &mut req).map_err(io("SIOCSIFNETMASK"))?;
    }
    let mut req = IfReq::new(name);
    ioctl_ptr(fd, libc::SIOCGIFFLAGS, &mut req).map_err(io("SIOCGIFFLAGS"))?;
    // An interface already up (a TAP an unprivileged user was given) is
    // left alone: changing its flags needs CAP_NET_ADMIN.
    if req.short() & libc::IFF_UP as i16 == 0 {
        let flags = req.short() | (libc::IFF_UP | libc::IFF_RUNNING) as i16;
        req.set_short(flags);
        ioctl_ptr(fd, libc::SIOCSIFFLAGS, &mut req).map_err(io("SIOCSIFFLAGS"))?;
    }
    Ok(())
}

/// The MTU of interface `name`.
pub fn mtu(name: &str) -> Result<u32, TapError> {
    check_name(name)?;
    let io = |source| TapError::Ioctl {
        what: "SIOCGIFMTU",
        name: name.into(),
        source,
    };
    let sock = control_socket().map_err(io)?;
    let mut req = IfReq::new(name);
    ioctl_ptr(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req).map_err(io)?;
    Ok(req.int().max(68) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        for bad in ["", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(matches!(check_name(bad), Err(TapError::Name(_))), "{bad}");
        }
        assert!(check_name("fvtap0").is_ok());
    }

    #[test]
    fn adopting_a_non_tap_fd_is_refused() {
        let f = File::open("/dev/null").unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
        // SAFETY: `fd` was just released by the File and is owned by nobody else.
        let err = unsafe { TapQueue::adopt_fd(fd) }.unwrap_err();
        assert!(err.to_string().contains("not a TAP"), "{err}");
    }
}
