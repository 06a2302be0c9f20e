//! The VM configuration and the parsers of its command-line flags
//! (Cloud Hypervisor style: `--cpus boot=2`, `--memory size=512M`,
//! `--serial file=/tmp/out`).

use std::path::PathBuf;

/// The whole configuration of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initramfs: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub cpus: CpusConfig,
    /// Guest RAM.
    pub memory: MemoryConfig,
    /// Where COM1 goes.
    pub serial: SerialConfig,
    /// Whether port 0xf4 ends the VMM (QEMU's isa-debug-exit).
    pub debug_exit: bool,
    /// What a guest reset does.
    pub on_reboot: RebootPolicy,
    /// Whether the guest gets a virtio entropy device.
    pub rng: bool,
    /// virtio-blk disks, in PCI slot order.
    pub disks: Vec<DiskConfig>,
    /// Ports of the virtio-console (virtio-serial) device, in port order.
    pub channels: Vec<ChannelConfig>,
}

/// `--channel`: one port of the virtio-console device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Port name (the guest's /dev/virtio-ports/NAME).
    pub name: String,
    /// Host side of the port.
    pub backend: ChannelBackend,
    /// Announce the port as a console (hvc).
    pub console: bool,
}

/// Host side of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelBackend {
    /// A Unix socket the VMM listens on (one client at a time, reconnects allowed).
    Socket(PathBuf),
    /// A file that receives the guest's output.
    File(PathBuf),
}

/// `--disk`: one virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub readonly: bool,
    /// Open with O_DIRECT (bypass the host page cache).
    pub direct: bool,
    /// GET_ID answer (at most 20 bytes).
    pub serial: Option<String>,
    /// Request queues.
    pub num_queues: u16,
    /// Size of each queue (a power of two, 2..=32768).
    pub queue_size: u16,
    /// Name of the device.
    pub id: Option<String>,
    /// Logical block size (512 or 4096; default: the host's).
    pub logical_block_size: Option<u32>,
    /// Physical block size (default: the host's).
    pub physical_block_size: Option<u32>,
    /// Offer discard and write-zeroes.
    pub discard: bool,
    /// PCI slot (1..=31); default: the next free one.
    pub addr: Option<u8>,
}

/// `--cpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    pub boot: u32,
}

/// `--memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
}

/// `--serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialConfig {
    /// The VMM's stdin and stdout (a terminal is put in raw mode).
    Tty,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// A Unix socket the VMM listens on; one client at a time.
    Socket(PathBuf),
    /// No serial port backend (the UART exists; output is discarded).
    Off,
}

/// `--on-reboot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootPolicy {
    /// Rebuild the VM and boot again.
    Restart,
    /// End the VMM with status 0.
    Exit,
}

/// A flag whose value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    /// The flag, for example `--cpus`.
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

/// Splits `a=1,b=2` into pairs, refusing keys outside `known` and repeated keys.
pub fn parse_options<'a>(
    flag: &'static str,
    value: &'a str,
    known: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, ConfigError> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for item in value.split(',').filter(|s| !s.is_empty()) {
        let (key, val) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::new(flag, format!("'{item}' is not key=value")))?;
        if !known.contains(&key) {
            return Err(ConfigError::new(
                flag,
                format!("unknown option '{key}' (expected {})", known.join(", ")),
            ));
        }
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(ConfigError::new(flag, format!("'{key}' given twice")));
        }
        pairs.push((key, val));
    }
    Ok(pairs)
}

/// Parses a size with an optional binary suffix: `512M`, `4G`, `65536`, `64K`.
pub fn parse_size(flag: &'static str, text: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::new(flag, format!("'{text}' is not a size (e.g. 512M, 4G)"));
    let (digits, shift) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&text[..i], shift)
        }
        _ => (text, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Parses `--cpus boot=N`.
pub fn parse_cpus(value: &str) -> Result<CpusConfig, ConfigError> {
    const FLAG: &str = "--cpus";
    let mut boot = None;
    for (key, val) in parse_options(FLAG, value, &["boot"])? {
        if key == "boot" {
            let n: u32 = val
                .parse()
                .map_err(|_| ConfigError::new(FLAG, format!("boot={val}: not a number")))?;
            boot = Some(n);
        }
    }
    let boot = boot.ok_or_else(|| ConfigError::new(FLAG, "boot=N is required"))?;
    if boot == 0 {
        return Err(ConfigError::new(
            FLAG,
            "boot=0: a VM needs at least one vCPU",
        ));
    }
    Ok(CpusConfig { boot })
}

/// Parses `--memory size=SIZE`.
pub fn parse_memory(value: &str) -> Result<MemoryConfig, ConfigError> {
    const FLAG: &str = "--memory";
    let mut size = None;
    for (key, val) in parse_options(FLAG, value, &["size"])? {
        if key == "size" {
            size = Some(parse_size(FLAG, val)?);
        }
    }
    let size = size.ok_or_else(|| ConfigError::new(FLAG, "size=SIZE is required"))?;
    let min = arch::layout::MIN_MEMORY;
    if size < min {
        return Err(ConfigError::new(
            FLAG,
            format!("size={size}: at least {} MiB is needed", min >> 20),
        ));
    }
    if size > MAX_MEMORY {
        return Err(ConfigError::new(
            FLAG,
            format!("size={size}: at most {} TiB is supported", MAX_MEMORY >> 40),
        ));
    }
    if size % 4096 != 0 {
        return Err(ConfigError::new(
            FLAG,
            format!("size={size}: must be a multiple of 4 KiB"),
        ));
    }
    Ok(MemoryConfig { size })
}

/// Parses `--serial tty|off|file=PATH|socket=PATH`.
pub fn parse_serial(value: &str) -> Result<SerialConfig, ConfigError> {
    const FLAG: &str = "--serial";
    match value {
        "tty" => return Ok(SerialConfig::Tty),
        "off" => return Ok(SerialConfig::Off),
        _ => {}
    }
    let expected = || {
        ConfigError::new(
            FLAG,
            format!("'{value}': expected tty, off, file=PATH or socket=PATH"),
        )
    };
    let pairs = parse_options(FLAG, value, &["file", "socket"]).map_err(|_| expected())?;
    match pairs.as_slice() {
        [("file", p)] if !p.is_empty() => Ok(SerialConfig::File(PathBuf::from(p))),
        [("socket", p)] if !p.is_empty() => Ok(SerialConfig::Socket(PathBuf::from(p))),
        _ => Err(ConfigError::new(
            FLAG,
            format!("'{value}': expected tty, off, file=PATH or socket=PATH"),
        )),
    }
}

fn parse_on_off(flag: &'static str, key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(ConfigError::new(
            flag,
            format!("{key}={value}: expected on or off"),
        )),
    }
}

fn parse_number<T: std::str::FromStr>(
    flag: &'static str,
    key: &str,
    value: &str,
) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::new(flag, format!("{key}={value}: not a valid number")))
}

/// Parses `--disk path=FILE,readonly=on|off,direct=on|off,serial=ID,num_queues=N,
/// queue_size=N,id=NAME,logical_block_size=N,physical_block_size=N,discard=on|off,addr=SLOT`.
pub fn parse_disk(value: &str) -> Result<DiskConfig, ConfigError> {
    const FLAG: &str = "--disk";
    const KEYS: [&str; 11] = [
        "path",
        "readonly",
        "direct",
        "serial",
        "num_queues",
        "queue_size",
        "id",
        "logical_block_size",
        "physical_block_size",
        "discard",
        "addr",
    ];
    let mut disk = DiskConfig {
        path: PathBuf::new(),
        readonly: false,
        direct: false,
        serial: None,
        num_queues: 1,
        queue_size: 256,
        id: None,
        logical_block_size: None,
        physical_block_size: None,
        discard: true,
        addr: None,
    };
    for (key, val) in parse_options(FLAG, value, &KEYS)? {
        match key {
            "path" => disk.path = PathBuf::from(val),
            "readonly" => disk.readonly = parse_on_off(FLAG, key, val)?,
            "direct" => disk.direct = parse_on_off(FLAG, key, val)?,
            "discard" => disk.discard = parse_on_off(FLAG, key, val)?,
            "serial" => disk.serial = Some(val.to_string()),
            "id" => disk.id = Some(val.to_string()),
            "num_queues" => disk.num_queues = parse_number(FLAG, key, val)?,
            "queue_size" => disk.queue_size = parse_number(FLAG, key, val)?,
            "logical_block_size" => disk.logical_block_size = Some(parse_number(FLAG, key, val)?),
            "physical_block_size" => disk.physical_block_size = Some(parse_number(FLAG, key, val)?),
            _ => disk.addr = Some(parse_number(FLAG, key, val)?),
        }
    }
    if disk.path.as_os_str().is_empty() {
        return Err(ConfigError::new(FLAG, "path=FILE is required"));
    }
    if !(1..=64).contains(&disk.num_queues) {
        return Err(ConfigError::new(
            FLAG,
            format!("num_queues={}: must be 1 to 64", disk.num_queues),
        ));
    }
    if !disk.queue_size.is_power_of_two() || !(2..=32768).contains(&disk.queue_size) {
        return Err(ConfigError::new(
            FLAG,
            format!(
                "queue_size={}: must be a power of two from 2 to 32768",
                disk.queue_size
            ),
        ));
    }
    for (key, size) in [
        ("logical_block_size", disk.logical_block_size),
        ("physical_block_size", disk.physical_block_size),
    ] {
        if let Some(size) = size {
            if !size.is_power_of_two() || !(512..=65536).contains(&size) {
                return Err(ConfigError::new(
                    FLAG,
                    format!("{key}={size}: must be a power of two from 512 to 65536"),
                ));
            }
        }
    }
    if let (Some(l), Some(p)) = (disk.logical_block_size, disk.physical_block_size) {
        if p < l {
            return Err(ConfigError::new(
                FLAG,
                "physical_block_size must not be smaller than logical_block_size",
            ));
        }
    }
    if disk.addr.is_some_and(|a| !(1..=31).contains(&a)) {
        return Err(ConfigError::new(FLAG, "addr: PCI slots 1 to 31"));
    }
    Ok(disk)
}

/// Parses `--channel name=NAME,socket=PATH|path=FILE[,console=on]`.
pub fn parse_channel(value: &str) -> Result<ChannelConfig, ConfigError> {
    const FLAG: &str = "--channel";
    let mut name = None;
    let mut backend = None;
    let mut console = false;
    for (key, val) in parse_options(FLAG, value, &["name", "socket", "path", "console"])? {
        match key {
            "name" => name = Some(val.to_string()),
            "socket" | "path" if backend.is_some() => {
                return Err(ConfigError::new(FLAG, "give one of socket= and path="))
            }
            "socket" => backend = Some(ChannelBackend::Socket(PathBuf::from(val))),
            "path" => backend = Some(ChannelBackend::File(PathBuf::from(val))),
            _ => console = parse_on_off(FLAG, key, val)?,
        }
    }
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ConfigError::new(FLAG, "name=NAME is required"))?;
    if name.len() > 255 || name.contains('/') || name.chars().any(char::is_control) {
        return Err(ConfigError::new(
            FLAG,
            format!("name={name}: at most 255 characters, no '/' or control characters"),
        ));
    }
    let backend =
        backend.ok_or_else(|| ConfigError::new(FLAG, "socket=PATH or path=FILE is required"))?;
    Ok(ChannelConfig {
        name,
        backend,
        console,
    })
}

/// Parses `--on-reboot restart|exit`.
pub fn parse_on_reboot(value: &str) -> Result<RebootPolicy, ConfigError> {
    match value {
        "restart" => Ok(RebootPolicy::Restart),
        "exit" => Ok(RebootPolicy::Exit),
        other => Err(ConfigError::new(
            "--on-reboot",
            format!("'{other}': expected restart or exit"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("x", "512M"), Ok(512 << 20));
        assert_eq!(parse_size("x", "4g"), Ok(4 << 30));
        assert_eq!(parse_size("x", "4096"), Ok(4096));
        assert!(parse_size("x", "").is_err());
        assert!(parse_size("x", "M").is_err());
        assert!(parse_size("x", "12Q").is_err());
        assert!(parse_size("x", "-1M").is_err());
        assert!(parse_size("x", "99999999999999T").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("boot=4"), Ok(CpusConfig { boot: 4 }));
        let e = parse_cpus("boot=0").unwrap_err();
        assert_eq!(e.flag, "--cpus");
        assert!(parse_cpus("boot=x").is_err());
        assert!(parse_cpus("bogus=1")
            .unwrap_err()
            .message
            .contains("unknown option 'bogus'"));
        assert!(parse_cpus("boot=1,boot=2").is_err());
        assert!(parse_cpus("").is_err());
        assert!(parse_cpus("4").is_err());
    }

    #[test]
    fn memory() {
        assert_eq!(
            parse_memory("size=512M"),
            Ok(MemoryConfig { size: 512 << 20 })
        );
        assert!(parse_memory("size=1M")
            .unwrap_err()
            .message
            .contains("at least"));
        assert!(parse_memory("size=65T")
            .unwrap_err()
            .message
            .contains("at most"));
        assert!(parse_memory("size=16777217")
            .unwrap_err()
            .message
            .contains("4 KiB"));
        assert!(parse_memory("").is_err());
    }

    #[test]
    fn disks() {
        let d = parse_disk("path=/img,readonly=on,direct=on,serial=abc,num_queues=4,queue_size=128,logical_block_size=4096,addr=5").unwrap();
        assert_eq!(
            (d.readonly, d.direct, d.num_queues, d.queue_size, d.addr),
            (true, true, 4, 128, Some(5))
        );
        assert_eq!(d.logical_block_size, Some(4096));
        assert_eq!(parse_disk("path=/img").unwrap().queue_size, 256);
        for bad in [
            "",
            "readonly=on",
            "path=/a,readonly=maybe",
            "path=/a,num_queues=0",
            "path=/a,queue_size=100",
            "path=/a,queue_size=65536",
            "path=/a,logical_block_size=1000",
            "path=/a,logical_block_size=4096,physical_block_size=512",
            "path=/a,addr=0",
            "path=/a,addr=32",
            "path=/a,frobnicate=1",
        ] {
            assert_eq!(parse_disk(bad).unwrap_err().flag, "--disk", "{bad}");
        }
    }

    #[test]
    fn channels() {
        let c = parse_channel("name=org.example.agent,socket=/tmp/a.sock").unwrap();
        assert_eq!(c.backend, ChannelBackend::Socket("/tmp/a.sock".into()));
        assert!(
            parse_channel("name=log,path=/tmp/log,console=on")
                .unwrap()
                .console
        );
        for bad in [
            "",
            "name=x",
            "socket=/s",
            "name=a/b,socket=/s",
            "name=x,socket=/a,path=/b",
            "name=x,socket=/a,console=yes",
        ] {
            assert_eq!(parse_channel(bad).unwrap_err().flag, "--channel", "{bad}");
        }
    }

    #[test]
    fn serial() {
        assert_eq!(parse_serial("tty"), Ok(SerialConfig::Tty));
        assert_eq!(parse_serial("off"), Ok(SerialConfig::Off));
        assert_eq!(
            parse_serial("file=/tmp/x"),
            Ok(SerialConfig::File("/tmp/x".into()))
        );
        assert_eq!(
            parse_serial("socket=/tmp/s"),
            Ok(SerialConfig::Socket("/tmp/s".into()))
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("file=a,socket=b").is_err());
        assert!(parse_serial("pty").is_err());
        assert_eq!(parse_on_reboot("exit"), Ok(RebootPolicy::Exit));
        assert!(parse_on_reboot("halt").is_err());
    }
}
