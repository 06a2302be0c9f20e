//! Parsers of the command-line flags (Cloud Hypervisor style:
//! `--cpus boot=2`, `--memory size=512M`, `--disk path=…,readonly=on`).
//! Each builds the config type and runs the same checks as a config file.

use std::path::PathBuf;

use super::validate;
use super::{
    ChannelBackend, ChannelConfig, ConfigError, CpusConfig, DiskConfig, ImageType, MemoryConfig,
    RebootPolicy, SerialConfig, TopologyConfig,
};

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
///
/// `features=` takes a comma-separated list of `+NAME`/`-NAME` that runs on
/// to the next `key=`: `boot=4,features=+avx512f,-x2apic,kvm_pv=off`.
pub fn parse_cpus(value: &str) -> Result<CpusConfig, ConfigError> {
    const FLAG: &str = "--cpus";
    const KEYS: [&str; 6] = ["boot", "max", "topology", "model", "features", "kvm_pv"];
    // Glue `+x`/`-y` items onto the `features=` item before them.
    let mut items: Vec<String> = Vec::new();
    for item in value.split(',').filter(|s| !s.is_empty()) {
        let continues = !item.contains('=')
            && (item.starts_with('+') || item.starts_with('-'))
            && items.last().is_some_and(|l| l.starts_with("features="));
        match items.last_mut() {
            Some(last) if continues => {
                last.push(';');
                last.push_str(item);
            }
            _ => items.push(item.to_string()),
        }
    }
    let joined = items.join(",");
    let mut cpus = CpusConfig::with_boot(0);
    let mut boot = None;
    for (key, val) in parse_options(FLAG, &joined, &KEYS)? {
        match key {
            "boot" => boot = Some(parse_number::<u32>(FLAG, key, val)?),
            "max" => cpus.max = Some(parse_number(FLAG, key, val)?),
            "topology" => cpus.topology = Some(parse_topology(val)?),
            "model" => cpus.model = val.to_string(),
            "features" => {
                cpus.features = val
                    .split(';')
                    .filter(|f| !f.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            _ => cpus.kvm_pv = parse_on_off(FLAG, key, val)?,
        }
    }
    cpus.boot = boot.ok_or_else(|| ConfigError::new(FLAG, "boot=N is required"))?;
    validate::cpus(&cpus)?;
    Ok(cpus)
}

fn parse_topology(val: &str) -> Result<TopologyConfig, ConfigError> {
    let bad = || {
        ConfigError::new(
            "--cpus",
            format!("topology={val}: expected SOCKETS:CORES:THREADS"),
        )
    };
    let parts: Vec<u32> = val
        .split(':')
        .map(|x| x.parse::<u32>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [sockets, cores_per_socket, threads_per_core] = parts.as_slice() else {
        return Err(bad());
    };
    Ok(TopologyConfig {
        sockets: *sockets,
        cores_per_socket: *cores_per_socket,
        threads_per_core: *threads_per_core,
    })
}

/// Parses `--memory size=SIZE`.
pub fn parse_memory(value: &str) -> Result<MemoryConfig, ConfigError> {
    const FLAG: &str = "--memory";
    const KEYS: [&str; 8] = [
        "size",
        "thp",
        "hugepages",
        "hugepage_size",
        "mergeable",
        "shared",
        "prefault",
        "file",
    ];
    let mut memory = MemoryConfig::with_size(0);
    let mut size = None;
    for (key, val) in parse_options(FLAG, value, &KEYS)? {
        match key {
            "size" => size = Some(parse_size(FLAG, val)?),
            "thp" => memory.thp = parse_on_off(FLAG, key, val)?,
            "hugepages" => memory.hugepages = parse_on_off(FLAG, key, val)?,
            "hugepage_size" => memory.hugepage_size = parse_size(FLAG, val)?,
            "mergeable" => memory.mergeable = parse_on_off(FLAG, key, val)?,
            "shared" => memory.shared = parse_on_off(FLAG, key, val)?,
            "prefault" => memory.prefault = parse_on_off(FLAG, key, val)?,
            _ => memory.file = Some(PathBuf::from(val)),
        }
    }
    memory.size = size.ok_or_else(|| ConfigError::new(FLAG, "size=SIZE is required"))?;
    validate::memory(&memory)?;
    Ok(memory)
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
        [("file", p)] if !p.is_empty() => Ok(SerialConfig::File {
            path: PathBuf::from(p),
        }),
        [("socket", p)] if !p.is_empty() => Ok(SerialConfig::Socket {
            path: PathBuf::from(p),
        }),
        _ => Err(ConfigError::new(
            FLAG,
            format!("'{value}': expected tty, off, file=PATH or socket=PATH"),
        )),
    }
}

/// Parses `on`/`off` (or `true`/`false`) for option `key` of `flag`.
pub fn parse_on_off(flag: &'static str, key: &str, value: &str) -> Result<bool, ConfigError> {
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
/// queue_size=N,id=NAME,logical_block_size=N,physical_block_size=N,discard=on|off,addr=SLOT,
/// image_type=raw|qcow2|vhd|vmdk,backing_files=on|off`.
pub fn parse_disk(value: &str) -> Result<DiskConfig, ConfigError> {
    const FLAG: &str = "--disk";
    const KEYS: [&str; 13] = [
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
        "image_type",
        "backing_files",
    ];
    let mut disk = DiskConfig::new(PathBuf::new());
    for (key, val) in parse_options(FLAG, value, &KEYS)? {
        match key {
            "path" => disk.path = PathBuf::from(val),
            "readonly" => disk.readonly = parse_on_off(FLAG, key, val)?,
            "direct" => disk.direct = parse_on_off(FLAG, key, val)?,
            "discard" => disk.discard = parse_on_off(FLAG, key, val)?,
            "backing_files" => disk.backing_files = parse_on_off(FLAG, key, val)?,
            "serial" => disk.serial = Some(val.to_string()),
            "id" => disk.id = Some(val.to_string()),
            "num_queues" => disk.num_queues = parse_number(FLAG, key, val)?,
            "queue_size" => disk.queue_size = parse_number(FLAG, key, val)?,
            "logical_block_size" => disk.logical_block_size = Some(parse_number(FLAG, key, val)?),
            "physical_block_size" => disk.physical_block_size = Some(parse_number(FLAG, key, val)?),
            "image_type" => {
                disk.image_type = Some(match val {
                    "raw" => ImageType::Raw,
                    "qcow2" => ImageType::Qcow2,
                    "vhd" | "vpc" => ImageType::Vhd,
                    "vmdk" => ImageType::Vmdk,
                    _ => {
                        return Err(ConfigError::new(
                            FLAG,
                            format!("image_type={val}: raw, qcow2, vhd or vmdk"),
                        ))
                    }
                })
            }
            _ => disk.addr = Some(parse_number(FLAG, key, val)?),
        }
    }
    validate::disk(&disk)?;
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
    let backend =
        backend.ok_or_else(|| ConfigError::new(FLAG, "socket=PATH or path=FILE is required"))?;
    let channel = ChannelConfig {
        name: name.unwrap_or_default(),
        backend,
        console,
    };
    validate::channel(&channel)?;
    Ok(channel)
}

/// Parses `--balloon size=SIZE[,deflate_on_oom=on][,free_page_reporting=on][,id=NAME]`.
pub fn parse_balloon(value: &str) -> Result<super::BalloonConfig, ConfigError> {
    const FLAG: &str = "--balloon";
    let mut b = super::BalloonConfig {
        size: 0,
        deflate_on_oom: false,
        free_page_reporting: false,
        id: None,
    };
    for (key, val) in parse_options(
        FLAG,
        value,
        &["size", "deflate_on_oom", "free_page_reporting", "id"],
    )? {
        match key {
            "size" => b.size = parse_size(FLAG, val)?,
            "deflate_on_oom" => b.deflate_on_oom = parse_on_off(FLAG, key, val)?,
            "free_page_reporting" => b.free_page_reporting = parse_on_off(FLAG, key, val)?,
            _ => b.id = Some(val.to_string()),
        }
    }
    Ok(b)
}

/// Parses `--net tap=NAME|fd=N,mac=MAC,ip=IP,mask=MASK,num_queues=N,queue_size=N,
/// id=NAME,offload_tso=on|off,offload_csum=on|off` (Cloud Hypervisor's spelling).
pub fn parse_net(value: &str) -> Result<super::NetConfig, ConfigError> {
    const FLAG: &str = "--net";
    const KEYS: [&str; 10] = [
        "tap",
        "fd",
        "mac",
        "ip",
        "mask",
        "num_queues",
        "queue_size",
        "id",
        "offload_tso",
        "offload_csum",
    ];
    let mut net = super::NetConfig::with_tap("");
    net.tap = None;
    let address = |key: &str, val: &str| {
        val.parse::<std::net::Ipv4Addr>()
            .map_err(|_| ConfigError::new(FLAG, format!("{key}={val}: not an IPv4 address")))
    };
    for (key, val) in parse_options(FLAG, value, &KEYS)? {
        match key {
            "tap" => net.tap = Some(val.to_string()),
            "fd" => net.fd = Some(parse_number(FLAG, key, val)?),
            "mac" => net.mac = Some(val.to_string()),
            "ip" => net.ip = Some(address(key, val)?),
            "mask" => net.mask = Some(address(key, val)?),
            "num_queues" => net.num_queues = parse_number(FLAG, key, val)?,
            "queue_size" => net.queue_size = parse_number(FLAG, key, val)?,
            "id" => net.id = Some(val.to_string()),
            "offload_tso" => net.offload_tso = parse_on_off(FLAG, key, val)?,
            _ => net.offload_csum = parse_on_off(FLAG, key, val)?,
        }
    }
    validate::net(&net)?;
    Ok(net)
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
        assert_eq!(parse_cpus("boot=4"), Ok(CpusConfig::with_boot(4)));
        let c = parse_cpus(
            "boot=4,max=8,topology=2:2:2,model=x86-64-v3,features=+avx512f,-x2apic,kvm_pv=off",
        )
        .unwrap();
        assert_eq!((c.boot, c.max, c.kvm_pv), (4, Some(8), false));
        assert_eq!(c.features, ["+avx512f", "-x2apic"]);
        assert_eq!(c.model, "x86-64-v3");
        assert_eq!(c.topology().apic_id(7), 7);
        for bad in [
            "boot=4,max=2",
            "boot=4,topology=2:2:2",
            "boot=4,topology=2:2",
            "boot=4,topology=0:4:1",
            "boot=1,model=Pentium",
            "boot=1,features=avx",
            "boot=1,features=+warp",
            "boot=1,kvm_pv=maybe",
            "boot=5000",
            "boot=1,+avx",
        ] {
            assert_eq!(parse_cpus(bad).unwrap_err().flag, "--cpus", "{bad}");
        }
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
            Ok(MemoryConfig::with_size(512 << 20))
        );
        let m = parse_memory(
            "size=2G,thp=off,hugepages=on,hugepage_size=1G,prefault=on,shared=on,file=/dev/hugepages/vm",
        )
        .unwrap();
        assert!(!m.thp && m.hugepages && m.prefault && m.shared);
        assert_eq!(m.hugepage_size, 1 << 30);
        for bad in [
            "size=512M,hugepages=on,hugepage_size=4M",
            "size=3M,hugepages=on",
            "size=512M,mergeable=on,shared=on",
            "size=512M,mergeable=on,file=/x",
            "size=512M,hugepages=on,hugepage_size=1G",
            "size=512M,thp=maybe",
            "size=512M,file=",
        ] {
            assert_eq!(parse_memory(bad).unwrap_err().flag, "--memory", "{bad}");
        }
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
        assert_eq!(parse_disk("path=/img").unwrap().image_type, None);
        assert_eq!(
            parse_disk("path=/img,image_type=qcow2").unwrap().image_type,
            Some(ImageType::Qcow2)
        );
        assert_eq!(
            parse_disk("path=/img,image_type=raw").unwrap().image_type,
            Some(ImageType::Raw)
        );
        assert_eq!(
            parse_disk("path=/img,image_type=vmdk,readonly=on")
                .unwrap()
                .image_type,
            Some(ImageType::Vmdk)
        );
        assert_eq!(
            parse_disk("path=/img,image_type=vpc,readonly=on")
                .unwrap()
                .image_type,
            Some(ImageType::Vhd)
        );
        let writable = parse_disk("path=/img,image_type=vhd").unwrap_err();
        assert!(writable.to_string().contains("readonly=on"), "{writable}");
        assert!(parse_disk("path=/img,image_type=vdi").is_err());
        assert!(
            !parse_disk("path=/img,image_type=qcow2")
                .unwrap()
                .backing_files
        );
        assert!(
            parse_disk("path=/img,image_type=qcow2,backing_files=on")
                .unwrap()
                .backing_files
        );
        assert!(parse_disk("path=/img,backing_files=maybe").is_err());
        assert!(parse_disk("path=/img,image_type=qcow2,direct=on").is_err());
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
    fn nets() {
        let n = parse_net(
            "tap=fvtap0,mac=52:54:00:12:34:56,ip=10.1.2.1,mask=255.255.255.0,num_queues=4,queue_size=512,id=lan,offload_tso=off",
        )
        .unwrap();
        assert_eq!(n.tap.as_deref(), Some("fvtap0"));
        assert_eq!((n.num_queues, n.queue_size, n.queue_pairs()), (4, 512, 2));
        assert_eq!(n.ip, Some("10.1.2.1".parse().unwrap()));
        assert!(!n.offload_tso && n.offload_csum);
        assert_eq!(parse_net("fd=3").unwrap().fd, Some(3));
        for bad in [
            "",
            "num_queues=2",
            "tap=a,fd=3",
            "tap=a,num_queues=3",
            "tap=a,num_queues=0",
            "tap=a,num_queues=34",
            "tap=a,queue_size=100",
            "tap=a,mac=01:00:00:00:00:01",
            "tap=a,mac=52:54:00:12:34",
            "tap=a,mac=zz:54:00:12:34:56",
            "tap=a,ip=10.0.0.300",
            "tap=a,mask=255.255.255.0",
            "tap=a,mask=255.0.255.0,ip=10.0.0.1",
            "tap=a/b",
            "tap=waytoolonginterface",
            "fd=-1",
            "fd=3,num_queues=4",
            "tap=a,offload_tso=maybe",
            "tap=a,id=a b",
        ] {
            assert_eq!(parse_net(bad).unwrap_err().flag, "--net", "{bad}");
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
            Ok(SerialConfig::File {
                path: "/tmp/x".into()
            })
        );
        assert_eq!(
            parse_serial("socket=/tmp/s"),
            Ok(SerialConfig::Socket {
                path: "/tmp/s".into()
            })
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("file=a,socket=b").is_err());
        assert!(parse_serial("pty").is_err());
        assert_eq!(parse_on_reboot("exit"), Ok(RebootPolicy::Exit));
        assert!(parse_on_reboot("halt").is_err());
    }
}
