//! The C memory functions the compiler expects (we link with `-nostdlib`).
//!
//! Copies and fills use `rep movsb` / `rep stosb`, which cost one emulated
//! instruction each. Comparisons read through volatile loads so the compiler
//! cannot turn the loops back into calls to these very functions.

use core::arch::asm;

/// Copies `n` bytes forward from `src` to `dst`.
///
/// # Safety
/// Both ranges must be valid for `n` bytes; overlap only if `dst <= src`.
unsafe fn copy_forward(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller guarantees both ranges; DF is clear (ABI invariant).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
}

/// # Safety
/// Standard C `memcpy` contract.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: forwarded caller contract; the ranges do not overlap.
    unsafe { copy_forward(dst, src, n) };
    dst
}

/// # Safety
/// Standard C `memmove` contract.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forwarded caller contract; a forward copy is safe when
        // `dst` is below `src` or the ranges do not overlap.
        unsafe { copy_forward(dst, src, n) };
    } else if n > 0 {
        // SAFETY: copy backwards from the last byte with DF set, then restore
        // DF = 0 as the ABI requires.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _,
                 inout("rsi") src.add(n - 1) => _, options(nostack));
        }
    }
    dst
}

/// # Safety
/// Standard C `memset` contract.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dst` is valid for `n` bytes.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") value as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// Standard C `memcmp` contract.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are readable for `n` bytes.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// Standard C `bcmp` contract.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// Fills `words` with `value` (`rep stosq`: one emulated instruction).
pub fn fill_qwords(words: &mut [u64], value: u64) {
    // SAFETY: writes exactly `words.len()` qwords from its start; DF is
    // clear (ABI invariant).
    unsafe {
        asm!("rep stosq", inout("rcx") words.len() => _, inout("rdi") words.as_mut_ptr() => _,
             in("rax") value, options(nostack, preserves_flags));
    }
}

/// Whether every qword of `words` equals `value` (`repe scasq`: one
/// emulated instruction).
pub fn qwords_equal(words: &[u64], value: u64) -> bool {
    if words.is_empty() {
        return true;
    }
    let equal: u8;
    // SAFETY: reads exactly `words.len()` qwords from its start; DF is clear.
    // `repe scasq` stops at the first qword that differs (ZF = 0) or after
    // the last one; ZF then tells whether the last compared qword matched.
    unsafe {
        asm!("repe scasq", "sete {equal}", equal = out(reg_byte) equal,
             inout("rcx") words.len() => _, inout("rdi") words.as_ptr() => _,
             in("rax") value, options(nostack, readonly));
    }
    equal != 0
}

/// `bytes` as qwords; its start must be 8-byte aligned and its length a
/// multiple of 8.
pub fn as_qwords(bytes: &mut [u8]) -> &mut [u64] {
    // SAFETY: every bit pattern is a valid u64.
    let (head, words, tail) = unsafe { bytes.align_to_mut::<u64>() };
    assert!(
        head.is_empty() && tail.is_empty(),
        "buffer not qword aligned"
    );
    words
}
