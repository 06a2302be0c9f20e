//! Fuzzes kernel-format detection and loading (ELF32/64 program headers,
//! PVH notes, bzImage setup headers, multiboot headers and a.out addresses):
//! any input must load or be refused, never panic or write outside guest RAM.
#![no_main]

use arch::loader::{load, BootImage};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;

const MEM: u64 = 32 << 20;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static RAM: arch::GuestMemory =
            arch::GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("guest RAM");
    }
    // The first byte splits the input into kernel and initramfs.
    let split = data.first().map_or(0, |b| (*b as usize * data.len()) / 256);
    let (kernel, initramfs) = data.split_at(split.min(data.len()));
    RAM.with(|ram| {
        let image = BootImage { kernel, initramfs: Some(initramfs), cmdline: "console=ttyS0", acpi_rsdp: Some(0xe0000) };
        let _ = load(ram, MEM, &image);
    });
});
