//! The files a VM boots from and the host resources it holds across
//! reboots: kernel and initramfs (read once, so a reboot cannot see them
//! change), disks, the virtio-console's sockets and the NICs' TAP queues.

use std::sync::{Arc, Mutex};

use arch::memory_map;

use crate::config::VmConfig;
use crate::{ConfigError, Error};

/// The files the VM boots, read once so that a reboot cannot see them change.
pub(crate) struct BootFiles {
    pub kernel: Vec<u8>,
    pub initramfs: Option<Vec<u8>>,
    /// The disks, opened once; a reboot keeps them open.
    pub disks: Vec<Arc<dyn block::DiskFile>>,
    /// The virtio-console device: its sockets and clients outlive reboots.
    pub channels: Option<Arc<Mutex<virtio::console::Console>>>,
    /// The network cards' TAP queues, opened and configured once.
    pub nets: Vec<crate::net::NetBackend>,
}

/// Refuses vCPU counts and APIC IDs this host's KVM cannot run, and CPU
/// models it cannot provide.
pub(crate) fn validate_cpus(config: &VmConfig, hv: &hypervisor::Hypervisor) -> Result<(), Error> {
    let cpus = &config.cpus;
    let max = cpus.max_vcpus();
    let kvm_max = hv.max_vcpus();
    if max as usize > kvm_max {
        return Err(ConfigError::new(
            "--cpus",
            format!("max={max}: KVM on this host allows at most {kvm_max} vCPUs"),
        )
        .into());
    }
    let topology = cpus.topology();
    let highest = topology.apic_id(max.saturating_sub(1));
    if highest as usize >= hv.max_vcpu_id() {
        return Err(ConfigError::new(
            "--cpus",
            format!(
                "the topology numbers APIC IDs up to {highest}; KVM on this host allows IDs below {}",
                hv.max_vcpu_id()
            ),
        )
        .into());
    }
    if cpus.model != "host" {
        let supported = hv.supported_cpuid()?;
        if let Some(model) = arch::cpuid::models::by_name(&cpus.model) {
            arch::cpuid::check_model(supported.as_slice(), model)
                .map_err(|e| ConfigError::new("--cpus", e.to_string()))?;
        }
    }
    Ok(())
}

fn read_limited(flag: &'static str, path: &std::path::Path, limit: u64) -> Result<Vec<u8>, Error> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError::new(flag, format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(
            ConfigError::new(flag, format!("{}: not a regular file", path.display())).into(),
        );
    }
    if meta.len() > limit {
        return Err(ConfigError::new(
            flag,
            format!(
                "{}: {} bytes do not fit in {} bytes of guest RAM",
                path.display(),
                meta.len(),
                limit
            ),
        )
        .into());
    }
    std::fs::read(path)
        .map_err(|e| ConfigError::new(flag, format!("{}: {e}", path.display())).into())
}

/// Reads the kernel and initramfs and opens the disks and channel sockets.
pub(crate) fn read_boot_files(config: &VmConfig) -> Result<BootFiles, Error> {
    let ram = memory_map::low_ram_end(config.memory.size);
    let kernel = read_limited("--kernel", &config.payload.kernel, ram)?;
    let initramfs = match &config.payload.initramfs {
        Some(path) => Some(read_limited("--initramfs", path, ram)?),
        None => None,
    };
    let mut disks: Vec<Arc<dyn block::DiskFile>> = Vec::new();
    for disk in &config.disks {
        // The format is what the config says (raw by default), never probed.
        let format = match disk.image_type {
            None | Some(crate::config::ImageType::Raw) => block::Format::Raw,
            Some(crate::config::ImageType::Qcow2) => block::Format::Qcow2,
            Some(crate::config::ImageType::Vhd) => block::Format::Vpc,
            Some(crate::config::ImageType::Vmdk) => block::Format::Vmdk,
        };
        // Backing files are opened only when the config allows them, so an
        // image from elsewhere cannot make the VMM read a host file.
        let options = block::ImageOptions {
            read_only: disk.readonly,
            direct: disk.direct,
            format: Some(format),
            qcow2: block::qcow2::Qcow2Options {
                max_backing_depth: if disk.backing_files {
                    block::qcow2::MAX_BACKING_DEPTH
                } else {
                    0
                },
                ..Default::default()
            },
        };
        let file = block::open_image(&disk.path, &options).map_err(|e| {
            let refused = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<block::qcow2::Qcow2Error>())
                .is_some_and(|q| matches!(q, block::qcow2::Qcow2Error::BackingNotAllowed(_)));
            let hint = if refused {
                "; add backing_files=on to let ferrovisor open it"
            } else {
                ""
            };
            ConfigError::new("--disk", format!("{}: {e}{hint}", disk.path.display()))
        })?;
        disks.push(Arc::from(file));
    }
    let channels = if config.channels.is_empty() {
        None
    } else {
        Some(Arc::new(Mutex::new(crate::channels::create(
            &config.channels,
        )?)))
    };
    let nets = config
        .net
        .iter()
        .map(crate::net::NetBackend::open)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BootFiles {
        kernel,
        initramfs,
        disks,
        channels,
        nets,
    })
}
