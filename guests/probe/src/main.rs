//! Ferrovisor probe guest.
//!
//! A tiny kernel booted through the Xen PVH entry point, either by QEMU
//! (`-kernel probe`) or by Ferrovisor. It runs one test program chosen on the
//! kernel command line (`probe=NAME`), reports on COM1 with lines starting
//! with `probe: `, and exits through the isa-debug-exit port. See README.md
//! for the output contract.

#![no_std]
#![no_main]
// Failure reasons are fixed-size buffers (there is no allocator at start-up);
// their size does not matter on these cold paths.
#![allow(clippy::result_large_err)]

extern crate alloc;

mod acpi_access;
mod acpi_power;
mod aml_scan;
mod apic;
mod blk_ring;
mod cmdline;
mod cpus;
mod entry;
mod exit;
mod fmtbuf;
mod heap;
mod idt;
mod ioapic;
mod madt;
mod mem;
mod mptable;
mod msix;
mod netproto;
mod paging;
mod pci;
mod pci_alloc;
mod pci_host;
mod phys;
mod pic;
mod programs;
mod ram;
mod rtc;
mod serial;
mod smp;
mod start_info;
mod tsc;
mod user;
mod virtio_balloon;
mod virtio_blk;
mod virtio_hal;
mod virtio_msix;
mod virtio_net;
mod virtio_pci;

use core::panic::PanicInfo;

/// Rust entry point, called by the long-mode entry code in [`entry`] with the
/// physical address of the PVH `hvm_start_info` structure.
#[no_mangle]
extern "C" fn probe_main(start_info_paddr: u32) -> ! {
    serial::init();
    // First line, as early as possible (boot benchmarks wait for it).
    serial::write_bytes(b"probe: hello\n");
    idt::init();
    heap::init();

    // SAFETY: the PVH boot protocol passes the address of the start info in
    // EBX, and the entry code hands it to us unchanged. All memory below
    // 4 GiB is identity mapped.
    let info = match unsafe { start_info::StartInfo::read(start_info_paddr) } {
        Ok(info) => info,
        Err(reason) => exit::finish(Err(reason)),
    };
    let options = cmdline::Options::parse(info.cmdline());
    exit::set_mode(options.exit);
    if options.exit == exit::ExitMode::Poweroff {
        // Resolved now: `finish` must not walk firmware tables (a bad table
        // panics, and the panic handler calls `finish` again).
        acpi_power::install(info.rsdp_paddr);
    }
    let result = match options.error {
        Some(reason) => Err(reason),
        None => programs::run(options.program, &info),
    };
    exit::finish(result)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let reason = match info.location() {
        Some(loc) => fail_reason!("panic at {}:{}: {}", loc.file(), loc.line(), info.message()),
        None => fail_reason!("panic: {}", info.message()),
    };
    exit::finish(Err(reason))
}
