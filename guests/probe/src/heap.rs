//! A small kernel heap (`alloc` support) for programs that need one.

use core::arch::global_asm;
use linked_list_allocator::LockedHeap;

/// Heap size.
const HEAP_SIZE: usize = 1024 * 1024;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

extern "C" {
    static mut heap_start: u8;
}

/// Hands the reserved heap region to the allocator.
pub fn init() {
    // SAFETY: `heap_start` is a HEAP_SIZE-byte region reserved below for the
    // allocator only; `init` runs once, on the boot CPU, before any
    // allocation.
    unsafe {
        ALLOCATOR
            .lock()
            .init(core::ptr::addr_of_mut!(heap_start), HEAP_SIZE);
    }
}

global_asm!(
    r#"
    .section .noinit.heap, "aw", @nobits
    .balign 4096
    .globl heap_start
heap_start:
    .skip {size}
    .text
    "#,
    size = const HEAP_SIZE,
    options(att_syntax)
);
