//! The checks every configuration passes, whether it came from flags, a
//! config file or the API, and the default device ids.

use std::collections::HashSet;

use super::{
    ChannelConfig, ConfigError, CpusConfig, DiskConfig, MemoryConfig, SerialConfig, VmConfig,
    MAX_MEMORY,
};

/// Checks the whole configuration.
pub(super) fn check(config: &VmConfig) -> Result<(), ConfigError> {
    if config.payload.kernel.as_os_str().is_empty() {
        return Err(ConfigError::new("--kernel", "a kernel path is required"));
    }
    if config.payload.cmdline.len() > 64 * 1024 {
        return Err(ConfigError::new(
            "--cmdline",
            "longer than 64 KiB (the boot protocols allow far less)",
        ));
    }
    cpus(&config.cpus)?;
    memory(&config.memory)?;
    match &config.serial {
        SerialConfig::File { path } | SerialConfig::Socket { path }
            if path.as_os_str().is_empty() =>
        {
            return Err(ConfigError::new("--serial", "the path is empty"));
        }
        _ => {}
    }
    if config.disks.len() > 31 || config.channels.len() > 31 {
        return Err(ConfigError::new(
            "--disk",
            "at most 31 disks and 31 channels (one PCI bus)",
        ));
    }
    for (i, d) in config.disks.iter().enumerate() {
        disk(d).map_err(|e| ConfigError::new(e.flag, format!("[{i}]: {}", e.message)))?;
    }
    if let Some(i) = config.rng.as_ref().and_then(|r| r.id.as_deref()) {
        id("--rng", i)?;
    }
    if let Some(b) = &config.balloon {
        if let Some(i) = b.id.as_deref() {
            id("--balloon", i)?;
        }
        if b.size >= config.memory.size {
            return Err(ConfigError::new(
                "--balloon",
                format!(
                    "size={}: must be below the guest's memory ({})",
                    b.size, config.memory.size
                ),
            ));
        }
    }
    if config.net.len() > 16 {
        return Err(ConfigError::new("--net", "at most 16 network cards"));
    }
    let mut macs = HashSet::new();
    for (i, n) in config.net.iter().enumerate() {
        net(n).map_err(|e| ConfigError::new(e.flag, format!("[{i}]: {}", e.message)))?;
        if let Some(mac) = n.mac.as_deref().and_then(parse_mac) {
            if !macs.insert(mac) {
                return Err(ConfigError::new(
                    "--net",
                    format!("[{i}]: mac={}: given twice", n.mac.as_deref().unwrap_or("")),
                ));
            }
        }
    }
    let mut names = HashSet::new();
    for (i, c) in config.channels.iter().enumerate() {
        channel(c).map_err(|e| ConfigError::new(e.flag, format!("[{i}]: {}", e.message)))?;
        if !names.insert(c.name.as_str()) {
            return Err(ConfigError::new(
                "--channel",
                format!("name={}: given twice", c.name),
            ));
        }
    }
    Ok(())
}

/// Checks `--cpus`.
pub(super) fn cpus(cpus: &CpusConfig) -> Result<(), ConfigError> {
    const FLAG: &str = "--cpus";
    if cpus.boot == 0 {
        return Err(ConfigError::new(
            FLAG,
            "boot=0: a VM needs at least one vCPU",
        ));
    }
    let max = cpus.max_vcpus();
    if max < cpus.boot {
        return Err(ConfigError::new(
            FLAG,
            format!("max={max}: must not be below boot={}", cpus.boot),
        ));
    }
    if max > MAX_VCPUS {
        return Err(ConfigError::new(
            FLAG,
            format!("max={max}: at most {MAX_VCPUS} vCPUs"),
        ));
    }
    if let Some(t) = cpus.topology {
        let parts = [t.sockets, t.cores_per_socket, t.threads_per_core];
        let product = parts.iter().try_fold(1u32, |p, &n| p.checked_mul(n));
        if parts.contains(&0) || product != Some(max) {
            return Err(ConfigError::new(
                FLAG,
                format!(
                    "topology={}:{}:{}: sockets x cores x threads must equal max={max}",
                    t.sockets, t.cores_per_socket, t.threads_per_core
                ),
            ));
        }
    }
    if cpus.model != "host" && arch::cpuid::models::by_name(&cpus.model).is_none() {
        let names: Vec<&str> = arch::cpuid::MODELS.iter().map(|m| m.name).collect();
        return Err(ConfigError::new(
            FLAG,
            format!("model={}: unknown (host, {})", cpus.model, names.join(", ")),
        ));
    }
    for f in &cpus.features {
        arch::cpuid::FeatureChange::parse(f)
            .map_err(|e| ConfigError::new(FLAG, format!("features: {e}")))?;
    }
    Ok(())
}

/// The most vCPUs a configuration may ask for (KVM may allow fewer).
pub const MAX_VCPUS: u32 = 4096;

/// Checks `--memory`.
pub(super) fn memory(memory: &MemoryConfig) -> Result<(), ConfigError> {
    const FLAG: &str = "--memory";
    let size = memory.size;
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
    if memory.hugepages {
        let page = memory.hugepage_size;
        if page != 2 << 20 && page != 1 << 30 {
            return Err(ConfigError::new(
                FLAG,
                format!("hugepage_size={page}: 2M or 1G"),
            ));
        }
        if size % page != 0 {
            return Err(ConfigError::new(
                FLAG,
                format!("size={size}: must be a multiple of hugepage_size={page}"),
            ));
        }
    }
    if memory.mergeable && (memory.shared || memory.file.is_some()) {
        return Err(ConfigError::new(
            FLAG,
            "mergeable=on needs private memory: KSM does not merge shared or file pages",
        ));
    }
    if memory
        .file
        .as_ref()
        .is_some_and(|f| f.as_os_str().is_empty())
    {
        return Err(ConfigError::new(FLAG, "file=: the path is empty"));
    }
    Ok(())
}

fn id(flag: &'static str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ConfigError::new(
            flag,
            format!("id={id}: 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'"),
        ));
    }
    Ok(())
}

/// Checks one `--disk`.
pub(super) fn disk(disk: &DiskConfig) -> Result<(), ConfigError> {
    const FLAG: &str = "--disk";
    if disk.path.as_os_str().is_empty() {
        return Err(ConfigError::new(FLAG, "path=FILE is required"));
    }
    if disk.direct && !matches!(disk.image_type, None | Some(super::ImageType::Raw)) {
        return Err(ConfigError::new(
            FLAG,
            "direct=on is for raw images (other formats go through the page cache)",
        ));
    }
    if matches!(
        disk.image_type,
        Some(super::ImageType::Vhd | super::ImageType::Vmdk)
    ) && !disk.readonly
    {
        return Err(ConfigError::new(
            FLAG,
            "image_type=vhd and vmdk disks are read-only here: add readonly=on, \
             or convert the image (fvimg convert -O qcow2)",
        ));
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
    if let Some(serial) = &disk.serial {
        if serial.len() > 20 {
            return Err(ConfigError::new(
                FLAG,
                format!("serial={serial}: at most 20 bytes"),
            ));
        }
    }
    if let Some(i) = &disk.id {
        id(FLAG, i)?;
    }
    Ok(())
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Checks one `--net`.
pub(super) fn net(net: &super::NetConfig) -> Result<(), ConfigError> {
    const FLAG: &str = "--net";
    match (&net.tap, net.fd) {
        (Some(_), Some(_)) => return Err(ConfigError::new(FLAG, "give one of tap= and fd=")),
        (None, None) => return Err(ConfigError::new(FLAG, "tap=NAME or fd=N is required")),
        (Some(name), None) => {
            let bad = name.is_empty()
                || name.len() > 15
                || name
                    .bytes()
                    .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
            if bad {
                return Err(ConfigError::new(
                    FLAG,
                    format!("tap={name}: 1 to 15 bytes, no '/', ':' or whitespace"),
                ));
            }
        }
        (None, Some(fd)) => {
            if fd < 0 {
                return Err(ConfigError::new(FLAG, format!("fd={fd}: not a descriptor")));
            }
            if net.num_queues != 2 {
                return Err(ConfigError::new(
                    FLAG,
                    "fd=N carries one queue pair: num_queues=2",
                ));
            }
        }
    }
    let max = 2 * virtio::net::MAX_QUEUE_PAIRS as u16;
    if net.num_queues < 2 || net.num_queues % 2 != 0 || net.num_queues > max {
        return Err(ConfigError::new(
            FLAG,
            format!(
                "num_queues={}: an even number from 2 to {max} (a receive and a transmit queue per pair)",
                net.num_queues
            ),
        ));
    }
    if !net.queue_size.is_power_of_two() || !(2..=32768).contains(&net.queue_size) {
        return Err(ConfigError::new(
            FLAG,
            format!(
                "queue_size={}: must be a power of two from 2 to 32768",
                net.queue_size
            ),
        ));
    }
    if let Some(mac) = &net.mac {
        match parse_mac(mac) {
            None => {
                return Err(ConfigError::new(
                    FLAG,
                    format!("mac={mac}: expected six hex bytes, aa:bb:cc:dd:ee:ff"),
                ))
            }
            Some(m) if m[0] & 1 != 0 => {
                return Err(ConfigError::new(
                    FLAG,
                    format!("mac={mac}: a multicast address"),
                ))
            }
            Some(_) => {}
        }
    }
    if net.mask.is_some() && net.ip.is_none() {
        return Err(ConfigError::new(FLAG, "mask= needs ip="));
    }
    if let Some(mask) = net.mask {
        let bits = u32::from(mask);
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(ConfigError::new(
                FLAG,
                format!("mask={mask}: not a contiguous netmask"),
            ));
        }
    }
    if let Some(i) = &net.id {
        id(FLAG, i)?;
    }
    Ok(())
}

/// Checks one `--channel`.
pub(super) fn channel(channel: &ChannelConfig) -> Result<(), ConfigError> {
    const FLAG: &str = "--channel";
    let name = &channel.name;
    if name.is_empty() {
        return Err(ConfigError::new(FLAG, "name=NAME is required"));
    }
    if name.len() > 255 || name.contains('/') || name.chars().any(char::is_control) {
        return Err(ConfigError::new(
            FLAG,
            format!("name={name}: at most 255 characters, no '/' or control characters"),
        ));
    }
    let (super::ChannelBackend::Socket(path) | super::ChannelBackend::File(path)) =
        &channel.backend;
    if path.as_os_str().is_empty() {
        return Err(ConfigError::new(FLAG, format!("name={name}: empty path")));
    }
    Ok(())
}

/// Names unnamed devices: `disk0`, `disk1`, ... by position, `rng0`.
pub(super) fn assign_ids(config: &mut VmConfig) {
    for (i, disk) in config.disks.iter_mut().enumerate() {
        if disk.id.is_none() {
            disk.id = Some(format!("disk{i}"));
        }
    }
    for (i, net) in config.net.iter_mut().enumerate() {
        if net.id.is_none() {
            net.id = Some(format!("net{i}"));
        }
    }
    if let Some(rng) = &mut config.rng {
        if rng.id.is_none() {
            rng.id = Some("rng0".into());
        }
    }
    if let Some(balloon) = &mut config.balloon {
        if balloon.id.is_none() {
            balloon.id = Some("balloon0".into());
        }
    }
}

/// Refuses two devices with one id.
pub(super) fn check_unique_ids(config: &VmConfig) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    let ids = config
        .disks
        .iter()
        .filter_map(|d| d.id.as_deref())
        .chain(config.net.iter().filter_map(|n| n.id.as_deref()))
        .chain(config.rng.iter().filter_map(|r| r.id.as_deref()))
        .chain(config.balloon.iter().filter_map(|b| b.id.as_deref()))
        .chain([super::CONSOLE_DEVICE_ID, super::SERIAL_DEVICE_ID]);
    for i in ids {
        if !seen.insert(i) {
            return Err(ConfigError::new(
                "--disk",
                format!("id={i}: two devices have this id"),
            ));
        }
    }
    Ok(())
}
