//! The end-to-end test harness: builds the test guests, starts `ferrovisor`
//! (or QEMU) on them, follows the serial console line by line with timeouts,
//! and always kills and reaps the VMM and removes its temporary files, even
//! when a test fails.

pub mod guests;
pub mod host;
pub mod netlab;
pub mod process;

pub use guests::{asm_guest, probe, AsmGuest};
pub use host::{kvm_available, require_kvm, TempDir};
pub use process::{connect_unix, field, Exited, VmProcess};
