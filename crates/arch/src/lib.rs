//! The x86_64 platform as a guest sees it at power-on: where RAM and the
//! system structures live, the registers and tables each boot protocol
//! expects, and the CPUID and MSRs of every vCPU.
//!
//! Everything here is a pure function over guest memory or KVM structures;
//! nothing here touches KVM itself.

pub mod acpi;
pub mod bytes;
pub mod cpu;
pub mod cpuid;
pub mod elf;
pub mod gdt;
pub mod layout;
pub mod linux;
pub mod loader;
pub mod memory_map;
pub mod mptable;
pub mod multiboot;
pub mod paging;
pub mod pvh;

/// The guest memory type the platform code writes into.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// An error writing platform structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A structure did not fit where the layout places it.
    #[error("writing the {what} at {addr:#x} failed: {source}")]
    GuestWrite {
        /// The structure that was being written.
        what: &'static str,
        /// Its guest physical address.
        addr: u64,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A table would exceed its fixed area.
    #[error("the {0} does not fit its area")]
    TooLarge(&'static str),
    /// The ACPI tables cannot describe the configuration.
    #[error("ACPI tables: {0}")]
    Acpi(&'static str),
}

/// Result type of the platform code.
pub type Result<T> = std::result::Result<T, Error>;

/// Writes `bytes` at `addr`, naming `what` in the error.
pub(crate) fn write_bytes(
    mem: &GuestMemory,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<()> {
    use vm_memory::{Bytes, GuestAddress};
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| Error::GuestWrite { what, addr, source })
}
