//! The VM configuration: one set of serde types for the command line, a
//! config file (`--config vm.toml` or JSON) and the HTTP API, with one
//! validation that every source goes through.
//!
//! The JSON names follow Cloud Hypervisor's where it has the same concept
//! (`payload.kernel`, `cpus.boot_vcpus`, `memory.size`, `disks[].path`).

mod file;
mod flags;
mod validate;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use file::{from_document, load_file};
pub use flags::{
    parse_balloon, parse_channel, parse_cpus, parse_disk, parse_memory, parse_net, parse_on_off,
    parse_on_reboot, parse_options, parse_serial, parse_size,
};
pub use validate::{parse_mac, MAX_VCPUS};

/// The whole configuration of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// What the VM boots.
    pub payload: PayloadConfig,
    /// vCPUs.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// Guest RAM.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// Where COM1 goes.
    #[serde(default)]
    pub serial: SerialConfig,
    /// Whether port 0xf4 ends the VMM (QEMU's isa-debug-exit).
    #[serde(default)]
    pub debug_exit: bool,
    /// What a guest reset does.
    #[serde(default)]
    pub on_reboot: RebootPolicy,
    /// The virtio memory balloon, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
    /// The virtio entropy device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
    /// virtio-blk disks, in PCI slot order.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Ports of the virtio-console (virtio-serial) device, in port order.
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    /// virtio-net cards on TAP devices, in PCI slot order after the disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
}

/// `--net`: one virtio-net card on a TAP device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The TAP interface to open (created if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// An open TAP queue descriptor (IFF_VNET_HDR) the VMM inherits, instead of `tap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// The guest's MAC (`52:54:00:12:34:56`); default: derived from the TAP and id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The host side's IPv4 address, set on the TAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Its netmask (with `ip`; default 255.255.255.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<std::net::Ipv4Addr>,
    /// Queues: receive and transmit, two per pair (even, 2 to 32).
    #[serde(default = "default_net_queues")]
    pub num_queues: u16,
    /// Size of each queue (a power of two, 2..=32768).
    #[serde(default = "default_queue_size")]
    pub queue_size: u16,
    /// Name of the device (default `net0`, `net1`, ... in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Offer TCP segmentation / UDP fragmentation offloads.
    #[serde(default = "default_true")]
    pub offload_tso: bool,
    /// Offer checksum offloads.
    #[serde(default = "default_true")]
    pub offload_csum: bool,
}

impl NetConfig {
    /// A card on TAP `tap` with every option at its default.
    pub fn with_tap(tap: &str) -> NetConfig {
        NetConfig {
            tap: Some(tap.into()),
            fd: None,
            mac: None,
            ip: None,
            mask: None,
            num_queues: default_net_queues(),
            queue_size: default_queue_size(),
            id: None,
            offload_tso: true,
            offload_csum: true,
        }
    }

    /// Its queue pairs.
    pub fn queue_pairs(&self) -> u16 {
        self.num_queues / 2
    }
}

fn default_net_queues() -> u16 {
    2
}

/// The kernel, its initramfs and command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// The kernel image (PVH ELF, ELF vmlinux, bzImage or multiboot ELF).
    pub kernel: PathBuf,
    /// The initramfs, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// The kernel command line.
    #[serde(default)]
    pub cmdline: String,
}

/// `--balloon`: a virtio-balloon device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// The initial balloon size (memory taken from the guest), in bytes.
    #[serde(default, deserialize_with = "file::size")]
    pub size: u64,
    /// The guest deflates the balloon when it runs out of memory.
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// The guest reports free pages, which go back to the host.
    #[serde(default)]
    pub free_page_reporting: bool,
    /// Name of the device (default `balloon0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `--rng`: a virtio-rng device fed from the host's getrandom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    /// Name of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `--channel`: one port of the virtio-console device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Port name (the guest's /dev/virtio-ports/NAME).
    pub name: String,
    /// Host side of the port.
    pub backend: ChannelBackend,
    /// Announce the port as a console (hvc).
    #[serde(default)]
    pub console: bool,
}

/// Host side of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBackend {
    /// A Unix socket the VMM listens on (one client at a time, reconnects allowed).
    Socket(PathBuf),
    /// A file that receives the guest's output.
    File(PathBuf),
}

/// `--disk`: one virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub readonly: bool,
    /// Open with O_DIRECT (bypass the host page cache).
    #[serde(default)]
    pub direct: bool,
    /// GET_ID answer (at most 20 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Request queues.
    #[serde(default = "default_num_queues")]
    pub num_queues: u16,
    /// Size of each queue (a power of two, 2..=32768).
    #[serde(default = "default_queue_size")]
    pub queue_size: u16,
    /// Name of the device (default `disk0`, `disk1`, ... in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Logical block size (512 or 4096; default: the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_block_size: Option<u32>,
    /// Physical block size (default: the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_block_size: Option<u32>,
    /// Offer discard and write-zeroes.
    #[serde(default = "default_true")]
    pub discard: bool,
    /// PCI slot (1..=31); default: the next free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<u8>,
    /// Image format (Cloud Hypervisor's `image_type`); default raw. Never
    /// probed: a raw disk stays raw whatever the guest writes into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<ImageType>,
    /// Let a qcow2 image open the backing files its header names (Cloud
    /// Hypervisor's `backing_files`); off, such an image is refused, so an
    /// image from elsewhere cannot make the VMM read a host file.
    #[serde(default, skip_serializing_if = "is_false")]
    pub backing_files: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Format of a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    /// Raw file or block device.
    Raw,
    /// qcow2 (with its backing chain).
    Qcow2,
    /// VHD, fixed or dynamic (read-only; `vpc` is qemu-img's name for it).
    #[serde(alias = "vpc")]
    Vhd,
    /// VMDK: monolithicSparse, streamOptimized, flat and split extents
    /// (read-only).
    Vmdk,
}

impl DiskConfig {
    /// A disk at `path` with every option at its default.
    pub fn new(path: PathBuf) -> DiskConfig {
        DiskConfig {
            path,
            readonly: false,
            direct: false,
            serial: None,
            num_queues: default_num_queues(),
            queue_size: default_queue_size(),
            id: None,
            logical_block_size: None,
            physical_block_size: None,
            discard: true,
            addr: None,
            image_type: None,
            backing_files: false,
        }
    }
}

fn default_num_queues() -> u16 {
    1
}

fn default_queue_size() -> u16 {
    256
}

fn default_true() -> bool {
    true
}

/// `--cpus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    #[serde(rename = "boot_vcpus")]
    pub boot: u32,
    /// vCPUs the guest's tables allow for (boot and later; default: boot).
    #[serde(rename = "max_vcpus", default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Sockets × cores × threads (default: one socket of single-threaded cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyConfig>,
    /// `host` (every feature KVM can virtualize here) or a named model.
    #[serde(default = "default_model")]
    pub model: String,
    /// Feature changes after the model: `+avx512f`, `-x2apic`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// KVM's paravirtual interface (signature leaf, kvmclock, PV EOI, ...).
    #[serde(default = "default_true")]
    pub kvm_pv: bool,
}

/// `topology=SOCKETS:CORES:THREADS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// Packages.
    pub sockets: u32,
    /// Cores per package.
    pub cores_per_socket: u32,
    /// Threads per core.
    pub threads_per_core: u32,
}

fn default_model() -> String {
    "host".into()
}

impl CpusConfig {
    /// `boot` vCPUs, every other option at its default.
    pub fn with_boot(boot: u32) -> CpusConfig {
        CpusConfig {
            boot,
            max: None,
            topology: None,
            model: default_model(),
            features: Vec::new(),
            kvm_pv: true,
        }
    }

    /// vCPUs the guest may ever have.
    pub fn max_vcpus(&self) -> u32 {
        self.max.unwrap_or(self.boot)
    }

    /// The topology (default: one socket of `max` single-threaded cores).
    pub fn topology(&self) -> arch::cpuid::Topology {
        match self.topology {
            Some(t) => arch::cpuid::Topology {
                sockets: t.sockets,
                cores: t.cores_per_socket,
                threads: t.threads_per_core,
            },
            None => arch::cpuid::Topology::single_socket(self.max_vcpus()),
        }
    }
}

impl Default for CpusConfig {
    fn default() -> CpusConfig {
        CpusConfig::with_boot(1)
    }
}

/// `--memory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Guest RAM in bytes (a config file may also say `"512M"`).
    #[serde(deserialize_with = "file::size")]
    pub size: u64,
    /// Advise transparent hugepages (MADV_HUGEPAGE); off: MADV_NOHUGEPAGE.
    #[serde(default = "default_true")]
    pub thp: bool,
    /// Back guest RAM with hugetlbfs pages of `hugepage_size`.
    #[serde(default)]
    pub hugepages: bool,
    /// 2 MiB or 1 GiB (with `hugepages`).
    #[serde(default = "default_hugepage_size", deserialize_with = "file::size")]
    pub hugepage_size: u64,
    /// Let the kernel's samepage merging (KSM) share identical pages.
    #[serde(default)]
    pub mergeable: bool,
    /// Shared memory (a memfd) instead of private anonymous memory.
    #[serde(default)]
    pub shared: bool,
    /// Populate all of guest RAM before the guest starts.
    #[serde(default)]
    pub prefault: bool,
    /// A file (on tmpfs, hugetlbfs or disk) that backs guest RAM, shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

fn default_hugepage_size() -> u64 {
    2 << 20
}

impl MemoryConfig {
    /// `size` bytes with every option at its default.
    pub fn with_size(size: u64) -> MemoryConfig {
        MemoryConfig {
            size,
            thp: true,
            hugepages: false,
            hugepage_size: default_hugepage_size(),
            mergeable: false,
            shared: false,
            prefault: false,
            file: None,
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> MemoryConfig {
        MemoryConfig::with_size(512 << 20)
    }
}

/// `--serial`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum SerialConfig {
    /// The VMM's stdin and stdout (a terminal is put in raw mode).
    #[default]
    Tty,
    /// Output appended to a file; no input.
    File {
        /// The file.
        path: PathBuf,
    },
    /// A Unix socket the VMM listens on; one client at a time.
    Socket {
        /// The socket.
        path: PathBuf,
    },
    /// No serial port backend (the UART exists; output is discarded).
    Off,
}

/// `--on-reboot`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RebootPolicy {
    /// Rebuild the VM and boot again.
    #[default]
    Restart,
    /// Stop the VM (the VMM exits with status 0 unless it serves an API).
    Exit,
}

/// A setting that cannot be used: the flag (or config field) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    /// The flag, for example `--cpus`, or the config file field.
    pub flag: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error about `flag`.
    pub fn new(flag: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            flag,
            message: message.into(),
        }
    }
}

/// The largest guest RAM accepted (64 TiB).
pub const MAX_MEMORY: u64 = 64 << 40;

impl VmConfig {
    /// A configuration booting `kernel` with every other setting at its default.
    pub fn with_kernel(kernel: PathBuf) -> VmConfig {
        VmConfig {
            payload: PayloadConfig {
                kernel,
                initramfs: None,
                cmdline: String::new(),
            },
            cpus: CpusConfig::default(),
            memory: MemoryConfig::default(),
            serial: SerialConfig::default(),
            debug_exit: false,
            on_reboot: RebootPolicy::default(),
            balloon: None,
            rng: None,
            disks: Vec::new(),
            channels: Vec::new(),
            net: Vec::new(),
        }
    }

    /// Checks every setting (whatever its source) and gives unnamed devices
    /// their default ids, so that `vm.info` shows the names removal will use.
    pub fn validate(mut self) -> Result<VmConfig, ConfigError> {
        validate::check(&self)?;
        validate::assign_ids(&mut self);
        validate::check_unique_ids(&self)?;
        Ok(self)
    }
}

/// The id of the virtio-console device that carries the channels.
pub const CONSOLE_DEVICE_ID: &str = "channels";
/// The id of the COM1 UART.
pub const SERIAL_DEVICE_ID: &str = "serial0";
