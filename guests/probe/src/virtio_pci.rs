//! The steps every virtio-pci program of the probe takes before its own
//! driver work: find the function on bus 0, give its memory BARs addresses
//! and map them, turn on memory decoding and bus mastering, get the local
//! APIC ready for device interrupts, and negotiate features.

use crate::apic::LocalApic;
use crate::exit::Reason;
use crate::idt::{self, SPURIOUS_VECTOR};
use crate::pci::{self, Bdf, ConfigAccess};
use crate::pci_alloc::{self, Assigned};
use crate::start_info::StartInfo;
use crate::{bail, paging, pci_host, pic};
use core::sync::atomic::Ordering;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, Transport};

/// PCI vendor ID of virtio devices.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

/// A virtio function with its BARs assigned and mapped, memory decoding
/// and bus mastering on.
pub struct Function {
    /// Configuration space access.
    pub access: ConfigAccess,
    /// Its address.
    pub bdf: Bdf,
    /// Its PCI device ID.
    pub device_id: u16,
    /// Its BARs.
    pub assigned: Assigned,
}

/// The first virtio function on bus 0 with a device ID in `ids` (on device
/// `slot` if given).
fn find(access: &ConfigAccess, ids: &[u16], slot: Option<u8>) -> Option<(Bdf, u16)> {
    access.functions_on_bus0().into_iter().find_map(|bdf| {
        let id = access.read32(bdf, pci::REG_VENDOR);
        let (vendor, device) = (id as u16, (id >> 16) as u16);
        (vendor == VIRTIO_VENDOR
            && ids.contains(&device)
            && slot.is_none_or(|slot| slot == bdf.device))
        .then_some((bdf, device))
    })
}

/// Finds the `name` device (device IDs `ids`, on device `slot` if given)
/// and readies it; INTx stays enabled only when `intx` is set.
pub fn open(
    info: &StartInfo,
    name: &str,
    ids: &[u16],
    slot: Option<u8>,
    intx: bool,
) -> Result<Function, Reason> {
    let host = pci_host::find(info.rsdp_paddr)?;
    let Some(access) = host.access() else {
        bail!("no pci configuration mechanism (0xcf8 does not respond, no mcfg or _CBA)");
    };
    let Some((bdf, device_id)) = find(&access, ids, slot) else {
        match slot {
            Some(slot) => bail!("no {} at pci 00:{:02x}", name, slot),
            None => bail!("no {} on pci bus 0", name),
        }
    };
    let assigned = pci_alloc::assign(&access, bdf, host.windows.as_deref())?;
    for bar in assigned
        .bars
        .iter()
        .filter(|bar| bar.kind != pci::BarKind::Io)
    {
        paging::map_device(bar.addr, bar.size)?;
    }
    let command = access.command(bdf) | pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER;
    access.set_command(
        bdf,
        if intx {
            command & !pci::COMMAND_INTX_DISABLE
        } else {
            command | pci::COMMAND_INTX_DISABLE
        },
    );
    Ok(Function {
        access,
        bdf,
        device_id,
        assigned,
    })
}

/// The boot CPU's local APIC, enabled for device interrupts (the PICs
/// masked, EOIs going to this APIC).
pub fn interrupt_lapic() -> Result<LocalApic, Reason> {
    let lapic = LocalApic::current()?;
    lapic.enable(SPURIOUS_VECTOR);
    pic::disable();
    idt::LAPIC_EOI_ADDR.store(lapic.eoi_addr(), Ordering::SeqCst);
    Ok(lapic)
}

/// The crate's `begin_init` with the device's own feature bits kept: resets
/// the device, requires VERSION_1, accepts the offered bits of `accepted`
/// and checks FEATURES_OK. Returns the offered and the accepted features.
pub fn negotiate(
    transport: &mut PciTransport,
    bdf: Bdf,
    accepted: u64,
) -> Result<(u64, u64), Reason> {
    transport.set_status(DeviceStatus::empty());
    transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let device_features = transport.read_device_features();
    if device_features & F_VERSION_1 == 0 {
        bail!(
            "{} does not offer VIRTIO_F_VERSION_1 (features={:#x})",
            bdf,
            device_features
        );
    }
    let features = device_features & accepted;
    transport.write_driver_features(features);
    transport
        .set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
        bail!("{} refused features {:#x}", bdf, features);
    }
    Ok((device_features, features))
}
