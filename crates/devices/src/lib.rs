//! Platform devices on the I/O port bus: the 16550 UART on COM1, the i8042
//! reset line, the CMOS/RTC, the ACPI PM1 block and reset register, and the
//! isa-debug-exit port.
//!
//! Devices ask the VMM to power off, reset or exit through a
//! [`GuestRequestSink`]; they never act on the process themselves.

pub mod cmos;
pub mod debug_exit;
pub mod i8042;
pub mod pm;
pub mod serial;

use std::sync::Arc;

/// A lifecycle request a guest makes through a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRequest {
    /// ACPI S5: power off.
    PowerOff,
    /// Reset the machine (i8042 pulse, reset control register).
    Reset,
    /// isa-debug-exit: end the VMM with status `(value << 1) | 1`.
    DebugExit(u32),
}

/// Where devices deliver [`GuestRequest`]s.
pub type GuestRequestSink = Arc<dyn Fn(GuestRequest) + Send + Sync>;

/// An interrupt line backed by an eventfd registered with KVM as an irqfd.
pub struct IrqLine(pub vmm_sys_util::eventfd::EventFd);

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
