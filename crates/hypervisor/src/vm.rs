//! A KVM VM: guest memory slots, the in-kernel irqchip and PIT, irqfds, vCPUs.

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_msi, kvm_pit_config, kvm_userspace_memory_region, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::VmFd;
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Result, Vcpu};

/// Where a GSI delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsiRoute {
    /// A pin of the in-kernel PIC master, PIC slave or IOAPIC.
    Irqchip {
        /// The GSI.
        gsi: u32,
        /// `KVM_IRQCHIP_PIC_MASTER`, `KVM_IRQCHIP_PIC_SLAVE` or `KVM_IRQCHIP_IOAPIC`.
        chip: u32,
        /// The pin.
        pin: u32,
    },
    /// An MSI message.
    Msi {
        /// The GSI.
        gsi: u32,
        /// Message address.
        address: u64,
        /// Message data.
        data: u32,
    },
}

impl GsiRoute {
    /// KVM's default routing for the legacy GSIs 0–23: ISA IRQs to the PICs
    /// and the IOAPIC, 16–23 to the IOAPIC only. A routing table set by the
    /// VMM replaces KVM's, so it must start with these.
    pub fn legacy_defaults() -> Vec<GsiRoute> {
        let mut routes = Vec::new();
        for gsi in 0..24u32 {
            if gsi < 8 {
                routes.push(GsiRoute::Irqchip {
                    gsi,
                    chip: KVM_IRQCHIP_PIC_MASTER,
                    pin: gsi,
                });
            } else if gsi < 16 {
                routes.push(GsiRoute::Irqchip {
                    gsi,
                    chip: KVM_IRQCHIP_PIC_SLAVE,
                    pin: gsi - 8,
                });
            }
            routes.push(GsiRoute::Irqchip {
                gsi,
                chip: KVM_IRQCHIP_IOAPIC,
                pin: gsi,
            });
        }
        routes
    }

    fn entry(&self) -> kvm_irq_routing_entry {
        let mut e = kvm_irq_routing_entry::default();
        match *self {
            GsiRoute::Irqchip { gsi, chip, pin } => {
                e.gsi = gsi;
                e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                e.u.irqchip.irqchip = chip;
                e.u.irqchip.pin = pin;
            }
            GsiRoute::Msi { gsi, address, data } => {
                e.gsi = gsi;
                e.type_ = KVM_IRQ_ROUTING_MSI;
                e.u.msi.address_lo = address as u32;
                e.u.msi.address_hi = (address >> 32) as u32;
                e.u.msi.data = data;
            }
        }
        e
    }
}

/// A KVM VM file descriptor and the operations Ferrovisor uses on it.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    pub(crate) fn new(fd: VmFd) -> Vm {
        Vm { fd }
    }

    /// Places the three pages KVM needs for the real-mode TSS and the EPT
    /// identity map at `tss_addr` (which must lie in a hole of guest RAM).
    pub fn set_x86_system_pages(&self, tss_addr: u64) -> Result<()> {
        self.fd
            .set_identity_map_address(tss_addr + 0x3000)
            .map_err(Error::wrap("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .set_tss_address(tss_addr as usize)
            .map_err(Error::wrap("KVM_SET_TSS_ADDR"))
    }

    /// Creates the in-kernel PIC, IOAPIC and per-vCPU local APICs, and the PIT.
    pub fn create_platform_irqchip(&self) -> Result<()> {
        self.fd
            .create_irq_chip()
            .map_err(Error::wrap("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(Error::wrap("KVM_CREATE_PIT2"))
    }

    /// Maps `size` bytes of host memory at `host_addr` into the guest at `guest_addr`.
    ///
    /// # Safety
    ///
    /// The host range must stay mapped, readable and writable for as long as
    /// the VM exists (or until the slot is replaced).
    pub unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
    ) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller guarantees the host range outlives the VM.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(Error::wrap("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Makes every write to `event` raise interrupt line `gsi` of the irqchip.
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(Error::wrap("KVM_IRQFD"))
    }

    /// Makes a guest write to MMIO address `addr` signal `event` inside the
    /// kernel, without an exit to the VMM.
    pub fn register_mmio_ioevent(&self, event: &EventFd, addr: u64) -> Result<()> {
        self.fd
            .register_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(Error::wrap("KVM_IOEVENTFD"))
    }

    /// Undoes [`Vm::register_mmio_ioevent`].
    pub fn unregister_mmio_ioevent(&self, event: &EventFd, addr: u64) -> Result<()> {
        self.fd
            .unregister_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(Error::wrap("KVM_IOEVENTFD (deassign)"))
    }

    /// Sets the level of interrupt line `gsi` (for level-triggered lines the
    /// VMM drives, such as the ACPI SCI).
    pub fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        self.fd
            .set_irq_line(gsi, level)
            .map_err(Error::wrap("KVM_IRQ_LINE"))
    }

    /// Replaces the GSI routing table with `routes`.
    pub fn set_gsi_routes(&self, routes: &[GsiRoute]) -> Result<()> {
        let entries: Vec<kvm_irq_routing_entry> = routes.iter().map(GsiRoute::entry).collect();
        let table = KvmIrqRouting::from_entries(&entries).map_err(|_| Error {
            op: "KVM_SET_GSI_ROUTING",
            source: vmm_sys_util::errno::Error::new(libc::E2BIG),
        })?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(Error::wrap("KVM_SET_GSI_ROUTING"))
    }

    /// Injects the MSI `data` written to `address`.
    pub fn signal_msi(&self, address: u64, data: u32) -> Result<()> {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.fd
            .signal_msi(msi)
            .map(|_| ())
            .map_err(Error::wrap("KVM_SIGNAL_MSI"))
    }

    /// Reads the VM's kvmclock (the guest's paravirtual system time).
    pub fn clock(&self) -> Result<kvm_bindings::kvm_clock_data> {
        self.fd.get_clock().map_err(Error::wrap("KVM_GET_CLOCK"))
    }

    /// Sets the VM's kvmclock; with a value read by [`Vm::clock`] before a
    /// pause, guest time continues from where it stopped.
    pub fn set_clock(&self, clock: &kvm_bindings::kvm_clock_data) -> Result<()> {
        let data = kvm_bindings::kvm_clock_data {
            clock: clock.clock,
            ..Default::default()
        };
        self.fd
            .set_clock(&data)
            .map_err(Error::wrap("KVM_SET_CLOCK"))
    }

    /// Creates vCPU `id` (its initial APIC ID is the same number).
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(Error::wrap("KVM_CREATE_VCPU"))?;
        Ok(Vcpu::new(fd, id))
    }
}
