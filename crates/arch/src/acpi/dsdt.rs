//! The DSDT: the S5 sleep package, the PCIe host bridge `\_SB_.PCI0` (bus
//! numbers, I/O and MMIO windows, INTx routing) and the ISA devices the
//! platform has (COM1, RTC).

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Name, Package, Path, ResourceTemplate,
    Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use super::{AcpiConfig, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::{pci_mmio64_window, PCI_ECAM_BUSES, PCI_MMIO32_SIZE, PCI_MMIO32_START};

/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// The S5 sleep type our PM1a control register accepts (it also accepts 0).
const S5_SLEEP_TYPE: u8 = 5;
/// The first IOAPIC pin (GSI) of the PCI INTx lines.
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// How many IOAPIC pins (GSIs 16–23) the PCI INTx lines share.
pub const PCI_INTX_GSI_COUNT: u32 = 8;
/// PCI device slots routed in `_PRT` (slot 0 is the host bridge).
const PCI_SLOTS: std::ops::RangeInclusive<u8> = 1..=31;
/// INTA#..INTD# as `_PRT` pin numbers.
const PCI_PINS: std::ops::RangeInclusive<u8> = 0..=3;
/// The PCI configuration mechanism #1 ports.
const PCI_CONFIG_PORT: u16 = 0xcf8;
const PCI_CONFIG_PORTS: u8 = 8;
const COM1_PORT: u16 = 0x3f8;
const COM1_IRQ: u8 = 4;
const RTC_PORT: u16 = 0x70;
const RTC_IRQ: u8 = 8;

/// The GSI a PCI device in `slot` raises for interrupt pin `pin` (0 = INTA#):
/// the standard swizzle over IOAPIC pins 16–23. These interrupts are
/// level-triggered and active-low.
pub fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI_BASE + (u32::from(slot) + u32::from(pin)) % PCI_INTX_GSI_COUNT
}

/// ASL `IRQNoFlags () {irq}`: the short IRQ descriptor (edge, active-high,
/// exclusive), which `acpi_tables::aml` does not offer.
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        const SMALL_IRQ_TAG_2_BYTES: u8 = 0x22;
        sink.byte(SMALL_IRQ_TAG_2_BYTES);
        sink.word(1u16.checked_shl(u32::from(self.0)).unwrap_or(0));
    }
}

/// The DSDT's AML for `config`, wrapped in its table header.
pub fn dsdt(config: &AcpiConfig) -> Vec<u8> {
    let mut aml = Vec::new();
    s5().to_aml_bytes(&mut aml);
    system_bus(config, &mut aml);
    let mut sdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.append_slice(&aml);
    sdt.as_slice().to_vec()
}

/// `Name (\_S5_, Package () {5, 5, 0, 0})`: SLP_TYPa, SLP_TYPb, reserved.
fn s5() -> Name {
    Name::new(
        Path::new("\\_S5_"),
        &Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &0u8, &0u8]),
    )
}

/// `Scope (\_SB_) { PCI0, COM1, RTC_ }`.
fn system_bus(config: &AcpiConfig, sink: &mut dyn AmlSink) {
    let mut children = Vec::new();
    pci0(config, &mut children);
    isa_device(
        &mut children,
        "COM1",
        "PNP0501",
        Some(1),
        (COM1_PORT, 8),
        COM1_IRQ,
    );
    isa_device(
        &mut children,
        "RTC_",
        "PNP0B00",
        None,
        (RTC_PORT, 2),
        RTC_IRQ,
    );
    sink.vec(&Scope::raw(Path::new("\\_SB_"), children));
}

/// The PCIe host bridge.
fn pci0(config: &AcpiConfig, sink: &mut dyn AmlSink) {
    let (mmio64_start, mmio64_size) = pci_mmio64_window(config.mem_size);
    let last_bus = (PCI_ECAM_BUSES - 1) as u16;
    let bus_numbers = AddressSpace::<u16>::new_bus_number(0, last_bus);
    let config_ports = IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORTS);
    let io_below = AddressSpace::<u16>::new_io(0, PCI_CONFIG_PORT - 1, None);
    let io_above = AddressSpace::<u16>::new_io(0x0d00, 0xffff, None);
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_START as u32,
        (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32,
        None,
    );
    let mmio64 = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::Cacheable,
        true,
        mmio64_start,
        mmio64_start + mmio64_size - 1,
        None,
    );
    let crs = ResourceTemplate::new(vec![
        &bus_numbers,
        &config_ports,
        &io_below,
        &io_above,
        &mmio32,
        &mmio64,
    ]);

    // _PRT entries: Package (4) {Address 0xSSSSFFFF, Pin, Source 0, GSI}.
    let routes: Vec<(u32, u8, u32)> = PCI_SLOTS
        .flat_map(|slot| {
            PCI_PINS.map(move |pin| {
                let address = (u32::from(slot) << 16) | 0xffff;
                (address, pin, pci_intx_gsi(slot, pin))
            })
        })
        .collect();
    let entries: Vec<Package> = routes
        .iter()
        .map(|(address, pin, gsi)| Package::new(vec![address, pin, &0u8, gsi]))
        .collect();
    let prt = Package::new(entries.iter().map(|p| p as &dyn Aml).collect());

    Device::new(
        Path::new("PCI0"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0A08")),
            &Name::new(Path::new("_CID"), &EISAName::new("PNP0A03")),
            &Name::new(Path::new("_ADR"), &0u8),
            &Name::new(Path::new("_SEG"), &0u8),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_BBN"), &0u8),
            &Name::new(Path::new("_CRS"), &crs),
            &Name::new(Path::new("_PRT"), &prt),
        ],
    )
    .to_aml_bytes(sink);
}

/// A device with `_HID`, an optional `_UID`, and `_CRS` of one fixed I/O
/// range and one ISA IRQ.
fn isa_device(
    sink: &mut dyn AmlSink,
    name: &str,
    hid: &str,
    uid: Option<u8>,
    (port, ports): (u16, u8),
    irq: u8,
) {
    let hid = Name::new(Path::new("_HID"), &EISAName::new(hid));
    let uid = uid.map(|uid| Name::new(Path::new("_UID"), &uid));
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&IO::new(port, port, 1, ports), &IrqNoFlags(irq)]),
    );
    let mut children: Vec<&dyn Aml> = vec![&hid];
    if let Some(uid) = &uid {
        children.push(uid);
    }
    children.push(&crs);
    Device::new(Path::new(name), children).to_aml_bytes(sink);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::le32;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn dsdt_names_and_header() {
        let d = dsdt(&AcpiConfig {
            cpus: 1,
            apic_ids: Vec::new(),
            mem_size: 512 << 20,
        });
        assert_eq!(&d[0..4], b"DSDT");
        assert_eq!(le32(&d, 4), Some(d.len() as u32));
        assert_eq!(d[8], 2);
        assert_eq!(d.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        // Name (\_S5_, Package (0x04) {0x05, 0x05, Zero, Zero})
        assert!(contains(
            &d,
            &[0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 5, 0x0a, 5, 0, 0]
        ));
        for name in [&b"PCI0"[..], b"_PRT", b"_CRS", b"COM1", b"RTC_", b"_SB_"] {
            assert!(contains(&d, name), "{}", String::from_utf8_lossy(name));
        }
        // EisaId ("PNP0A08") = 0x080AD041.
        assert!(contains(&d, &[0x0c, 0x41, 0xd0, 0x0a, 0x08]));
        // IO (Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08)
        assert!(contains(&d, &[0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]));
        // IRQNoFlags () {4} and {8}
        assert!(contains(&d, &[0x22, 0x10, 0x00]));
        assert!(contains(&d, &[0x22, 0x00, 0x01]));
    }

    #[test]
    fn mmio64_window_follows_memory() {
        let small = dsdt(&AcpiConfig {
            cpus: 1,
            apic_ids: Vec::new(),
            mem_size: 512 << 20,
        });
        let big = dsdt(&AcpiConfig {
            cpus: 1,
            apic_ids: Vec::new(),
            mem_size: 100 << 30,
        });
        let min = |start: u64| start.to_le_bytes();
        assert!(contains(&small, &min(64 << 30)));
        let (start, _) = pci_mmio64_window(100 << 30);
        assert!(start > 64 << 30);
        assert!(contains(&big, &min(start)));
    }

    #[test]
    fn intx_swizzle() {
        assert_eq!(pci_intx_gsi(1, 0), 17);
        assert_eq!(pci_intx_gsi(7, 0), 23);
        assert_eq!(pci_intx_gsi(7, 1), 16);
        assert_eq!(pci_intx_gsi(31, 3), 18);
        for slot in PCI_SLOTS {
            for pin in PCI_PINS {
                assert!((16..24).contains(&pci_intx_gsi(slot, pin)));
            }
        }
    }
}
