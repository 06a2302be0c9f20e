//! The devices of one VM instance on their buses: the legacy port devices,
//! the PCI root complex (0xCF8 ports and ECAM), and the PCI devices the
//! configuration asks for, with MSI and ioeventfd plumbing into KVM.

use std::sync::{Arc, Mutex};

use arch::layout::{PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START};
use arch::{memory_map, GuestMemory};
use block::DiskFile;
use devices::{cmos::Cmos, debug_exit::DebugExit, i8042::I8042, pm, serial, GuestRequestSink};
use hypervisor::Vm;
use pci::access::{CONFIG_IO_LEN, CONFIG_IO_PORT};
use pci::root::SharedPciDevice;
use pci::{AddressAllocator, MsiSender, PciConfigIo, PciConfigMmio, PciRoot};
use virtio::block::{Block, BlockConfig};
use virtio::IoEventRegistrar;
use vm_device::{Bus, BusDevice, Counters, SharedDevice};
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmConfig;
use crate::console::Console;
use crate::msi::MsiRouter;
use crate::request::DeviceInfo;
use crate::ConfigError;
use crate::Error;

/// The buses the vCPUs dispatch exits to, the PCI root behind them, and
/// what the control plane reaches devices through.
pub struct Buses {
    /// I/O ports.
    pub pio: Arc<Bus>,
    /// MMIO.
    pub mmio: Arc<Bus>,
    /// PCI bus 0.
    pub pci: Arc<Mutex<PciRoot>>,
    /// The ACPI PM block (its power button).
    pub power: Arc<Mutex<pm::PowerManagement>>,
    /// Every device with its id and address, and its counters if it has any.
    pub devices: Vec<(DeviceInfo, Option<Arc<Counters>>)>,
    /// The memory balloon, if the VM has one.
    pub balloon: Option<virtio::balloon::BalloonHandle>,
}

fn shared(device: impl BusDevice + 'static) -> SharedDevice {
    Arc::new(Mutex::new(device))
}

fn insert(bus: &Bus, device: SharedDevice, base: u64, len: u64) -> Result<(), Error> {
    bus.insert(device, base, len)
        .map_err(|e| Error::Internal(format!("bus: {e}")))
}

/// Builds a PCI device once its BAR address is known.
type MakeDevice = Box<dyn FnOnce(u64, (IntxSetter, u8)) -> std::io::Result<SharedPciDevice>>;

/// A PCI device waiting for its slot: its pinned slot, id, type, counters and constructor.
struct PendingDevice {
    addr: Option<u8>,
    id: String,
    kind: &'static str,
    counters: Option<Arc<Counters>>,
    make: MakeDevice,
}

fn legacy(id: &str, kind: &str, io_port: u16) -> (DeviceInfo, Option<Arc<Counters>>) {
    let info = DeviceInfo {
        id: id.into(),
        kind: kind.into(),
        pci_bdf: None,
        io_port: Some(io_port),
    };
    (info, None)
}

/// Drives a PCI INTx line's level.
type IntxSetter = Box<dyn Fn(bool) + Send + Sync>;

/// A [`MakeDevice`] for virtio device `device` behind the PCI transport.
fn virtio_device<D: virtio::VirtioDevice + 'static>(
    device: D,
    mem: &GuestMemory,
    sender: &Arc<dyn MsiSender>,
    ioevents: &Arc<dyn IoEventRegistrar>,
) -> MakeDevice {
    let (mem, sender, ioevents) = (mem.clone(), sender.clone(), ioevents.clone());
    Box::new(move |bar, (line, irq)| {
        let mut pci = virtio::VirtioPci::new(device, mem, bar, sender, ioevents)?;
        pci.set_intx(line, irq);
        Ok(Arc::new(Mutex::new(pci)) as SharedPciDevice)
    })
}

/// Registers MMIO ioeventfds with KVM.
struct KvmIoEvents(Arc<Vm>);

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, event: &EventFd, addr: u64) -> std::io::Result<()> {
        self.0
            .register_mmio_ioevent(event, addr)
            .map_err(|e| std::io::Error::from_raw_os_error(e.source.errno()))
    }

    fn unregister(&self, event: &EventFd, addr: u64) {
        let _ = self.0.unregister_mmio_ioevent(event, addr);
    }
}

impl Buses {
    /// Builds every device of the VM instance.
    pub fn new(
        config: &VmConfig,
        console: &Console,
        sink: GuestRequestSink,
        vm: &Arc<Vm>,
        mem: &GuestMemory,
        files: &crate::boot_files::BootFiles,
    ) -> Result<Buses, Error> {
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let size = config.memory.size;
        let below_4g = memory_map::low_ram_end(size);
        insert(&pio, console.port(), serial::COM1_PORT, serial::LEN)?;
        insert(
            &pio,
            shared(I8042::new(sink.clone())),
            devices::i8042::PORT,
            devices::i8042::LEN,
        )?;
        insert(
            &pio,
            shared(Cmos::new(below_4g, size - below_4g)),
            devices::cmos::PORT,
            devices::cmos::LEN,
        )?;
        let mut power = pm::PowerManagement::new(sink.clone());
        let sci_vm = vm.clone();
        power.set_sci(Box::new(move |level| {
            if let Err(e) = sci_vm.set_irq_line(arch::layout::ACPI_SCI_IRQ, level) {
                tracing::debug!("SCI: {e}");
            }
        }));
        let power = Arc::new(Mutex::new(power));
        insert(&pio, power.clone(), pm::PM_BASE, pm::PM_LEN)?;
        if config.debug_exit {
            insert(
                &pio,
                shared(DebugExit::new(sink.clone())),
                devices::debug_exit::PORT,
                devices::debug_exit::LEN,
            )?;
        }

        let pci = Arc::new(Mutex::new(PciRoot::new(mmio.clone(), pio.clone())));
        // 0xCF9 (reset control) shares the configuration ports' range.
        let reset = shared(pm::ResetControl::new(sink));
        insert(
            &pio,
            shared(PciConfigIo::new(pci.clone(), Some(reset))),
            CONFIG_IO_PORT,
            CONFIG_IO_LEN,
        )?;
        insert(
            &mmio,
            shared(PciConfigMmio::new(pci.clone())),
            PCI_ECAM_START,
            PCI_ECAM_SIZE,
        )?;

        let mut devices = vec![
            legacy(
                crate::config::SERIAL_DEVICE_ID,
                "serial",
                serial::COM1_PORT as u16,
            ),
            legacy("i8042", "i8042", devices::i8042::PORT as u16),
            legacy("rtc", "cmos-rtc", devices::cmos::PORT as u16),
            legacy("acpi-pm", "acpi-pm", pm::PM_BASE as u16),
        ];
        if config.debug_exit {
            devices.push(legacy(
                "debug-exit",
                "isa-debug-exit",
                devices::debug_exit::PORT as u16,
            ));
        }
        let mut buses = Buses {
            pio,
            mmio,
            pci,
            power,
            devices,
            balloon: None,
        };
        buses.add_virtio_devices(
            config,
            vm,
            mem,
            &files.disks,
            files.channels.as_ref(),
            &files.nets,
        )?;
        Ok(buses)
    }

    /// The virtio devices. Slots are stable for a configuration: devices
    /// with `addr=` take their slot, then disks in command-line order, then
    /// network cards in order, then the console (channels), the balloon and
    /// the entropy device, each in the lowest free slot.
    fn add_virtio_devices(
        &mut self,
        config: &VmConfig,
        vm: &Arc<Vm>,
        mem: &GuestMemory,
        disks: &[Arc<dyn DiskFile>],
        channels: Option<&Arc<Mutex<virtio::console::Console>>>,
        nets: &[crate::net::NetBackend],
    ) -> Result<(), Error> {
        // Small BARs (64-bit capable) go below 4 GiB, as firmware places them.
        let mut mmio32 = AddressAllocator::new(PCI_MMIO32_START, PCI_MMIO32_SIZE);
        let router = Arc::new(MsiRouter::new(vm.clone()));
        let ioevents: Arc<dyn IoEventRegistrar> = Arc::new(KvmIoEvents(vm.clone()));
        let mut devices: Vec<PendingDevice> = Vec::new();
        for (disk, file) in config.disks.iter().zip(disks) {
            let block_config = BlockConfig {
                disk: file.clone(),
                read_only: disk.readonly,
                serial: disk.serial.clone().unwrap_or_default(),
                num_queues: disk.num_queues,
                queue_size: disk.queue_size,
                logical_block_size: disk.logical_block_size,
                physical_block_size: disk.physical_block_size,
                discard: disk.discard,
            };
            let block = Block::new(block_config);
            devices.push(PendingDevice {
                addr: disk.addr,
                id: disk.id.clone().unwrap_or_default(),
                kind: "virtio-blk",
                counters: Some(block.counters()),
                make: virtio_device(block, mem, &router.sender(), &ioevents),
            });
        }
        for (net, backend) in config.net.iter().zip(nets) {
            let device = backend
                .device(net)
                .map_err(Error::io("creating a network card"))?;
            devices.push(PendingDevice {
                addr: None,
                id: net.id.clone().unwrap_or_default(),
                kind: "virtio-net",
                counters: Some(device.counters()),
                make: virtio_device(device, mem, &router.sender(), &ioevents),
            });
        }
        if let Some(console) = channels {
            let device = virtio::SharedDevice::new(console.clone());
            devices.push(PendingDevice {
                addr: None,
                id: crate::config::CONSOLE_DEVICE_ID.into(),
                kind: "virtio-console",
                counters: None,
                make: virtio_device(device, mem, &router.sender(), &ioevents),
            });
        }
        if let Some(b) = &config.balloon {
            let device = virtio::balloon::Balloon::new(virtio::balloon::BalloonConfig {
                size: b.size,
                deflate_on_oom: b.deflate_on_oom,
                free_page_reporting: b.free_page_reporting,
            })
            .map_err(Error::io("creating the balloon"))?;
            self.balloon = Some(device.handle());
            devices.push(PendingDevice {
                addr: None,
                id: b.id.clone().unwrap_or_default(),
                kind: "virtio-balloon",
                counters: Some(device.counters()),
                make: virtio_device(device, mem, &router.sender(), &ioevents),
            });
        }
        if let Some(rng) = &config.rng {
            let device = virtio::rng::Rng::new();
            devices.push(PendingDevice {
                addr: None,
                id: rng.id.clone().unwrap_or_default(),
                kind: "virtio-rng",
                counters: Some(device.counters()),
                make: virtio_device(device, mem, &router.sender(), &ioevents),
            });
        }
        let mut root = self.pci.lock().unwrap_or_else(|p| p.into_inner());
        // Pinned slots first, so that unpinned devices fill around them.
        let mut slots: Vec<u8> = Vec::new();
        let pinned: Vec<u8> = devices.iter().filter_map(|d| d.addr).collect();
        let mut next_free = 1u8;
        for device in &devices {
            let slot = match &device.addr {
                Some(a) if slots.contains(a) => {
                    return Err(ConfigError::new(
                        "--disk",
                        format!("addr={a}: PCI slot given twice"),
                    )
                    .into())
                }
                Some(a) => *a,
                None => {
                    while pinned.contains(&next_free) || slots.contains(&next_free) {
                        next_free += 1;
                    }
                    if next_free >= pci::root::SLOTS {
                        return Err(
                            ConfigError::new("--disk", "more devices than PCI slots").into()
                        );
                    }
                    next_free
                }
            };
            slots.push(slot);
        }
        for (pending, slot) in devices.into_iter().zip(slots) {
            let make = pending.make;
            let bar = mmio32
                .allocate(virtio::pci_transport::layout::BAR_SIZE)
                .ok_or_else(|| Error::Internal("PCI MMIO window full".into()))?;
            // INTA# of the slot, routed as the DSDT's _PRT says.
            let gsi = arch::acpi::pci_intx_gsi(slot, 0);
            let line_vm = vm.clone();
            let line: IntxSetter = Box::new(move |level| {
                if let Err(e) = line_vm.set_irq_line(gsi, level) {
                    tracing::debug!("INTx GSI {gsi}: {e}");
                }
            });
            let device =
                make(bar, (line, gsi as u8)).map_err(Error::io("creating a virtio device"))?;
            root.add(slot, device)
                .map_err(|e| Error::Internal(e.to_string()))?;
            // Decoding starts on: the VMM is the firmware here.
            root.enable_decoding(slot);
            let info = DeviceInfo {
                id: pending.id,
                kind: pending.kind.into(),
                pci_bdf: Some(format!("0000:00:{slot:02x}.0")),
                io_port: None,
            };
            self.devices.push((info, pending.counters));
        }
        Ok(())
    }
}
