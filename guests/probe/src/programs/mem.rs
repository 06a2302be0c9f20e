//! `probe=mem`: writes a pattern across guest RAM and verifies it (see
//! README.md), for tests of the VMM's guest-memory backends (RAM above
//! 4 GiB, transparent hugepages, hugetlbfs, KSM).
//!
//! The RAM covered is every type-1 range of the PVH memory map, minus what
//! the probe occupies or must not touch (see [`covered_ranges`]), and minus
//! the page tables this program adds (carved from the top of the highest
//! covered range below 4 GiB). The ranges are identity mapped (1 GiB pages
//! above 4 GiB when the CPU has them, else 2 MiB; 4 KiB at unaligned
//! edges) and user accessible, and the write and verify loops run in ring 3
//! ([`user`]): under kvm_pvm ring-0 code is emulated (~14 MiB/s with
//! `rep stosq`), ring 3 runs natively.

use super::Outcome;
use crate::exit::{halt_forever, Reason};
use crate::paging::{self, TableSource};
use crate::start_info::{StartInfo, MAX_MEMMAP, MEM_TYPE_RAM};
use crate::user::{self, Regs, Ring};
use crate::{bail, cmdline, say, text, tsc};
use alloc::vec::Vec;
use core::arch::global_asm;

const KIB4: u64 = 4096;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Nothing below 1 MiB is covered (real-mode areas, firmware, the AP
/// trampoline page, often the loader's structures).
const LOW_LIMIT: u64 = MIB;
/// XORed into each word's address by `pattern=addr` (the golden ratio's
/// 64-bit fraction), so that no word is 0 and the pattern differs from
/// `pattern=const`'s default.
const SALT: u64 = 0x9e37_79b9_7f4a_7c15;
/// `pattern=const`'s default `value`.
const DEFAULT_VALUE: u64 = 0x5a5a_5a5a_5a5a_5a5a;

extern "C" {
    /// The ring-3 routines (assembly at the end of this file).
    static mem_fill: u8;
    static mem_fill_const: u8;
    static mem_fill_sparse: u8;
    static mem_verify: u8;
    /// Kernel image bounds from `link.ld` (reserved areas included).
    static __image_start: u8;
    static __image_end: u8;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Each word holds its own guest-physical address XOR [`SALT`].
    Addr,
    /// Each word holds this value.
    Const(u64),
}

impl Pattern {
    /// `(and_mask, xor_value)`: the word at `a` holds `(a & mask) ^ value`.
    fn mask_value(self) -> (u64, u64) {
        match self {
            Pattern::Addr => (u64::MAX, SALT),
            Pattern::Const(value) => (0, value),
        }
    }

    fn expected(self, addr: u64) -> u64 {
        let (mask, value) = self.mask_value();
        (addr & mask) ^ value
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Touch {
    /// Every 8-byte word.
    Full,
    /// One word per 4 KiB page (its first).
    Page,
    /// One word per 2 MiB frame (its first, or the range's first word
    /// when the range starts inside the frame).
    Hugepage,
}

impl Touch {
    fn stride(self) -> u64 {
        match self {
            Touch::Full => 8,
            Touch::Page => KIB4,
            Touch::Hugepage => 2 * MIB,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Touch::Full => "full",
            Touch::Page => "page",
            Touch::Hugepage => "hugepage",
        }
    }
}

struct Options {
    /// `mem_mib` in bytes; `None`: all covered RAM.
    limit: Option<u64>,
    pattern: Pattern,
    touch: Touch,
    verify: bool,
    hold: bool,
    ring: Ring,
    /// 1 GiB pages where they fit (`map=auto` and CPUID pdpe1gb).
    gib_pages: bool,
    /// `corrupt=ADDR`: a word to flip between the write and verify passes.
    corrupt: Option<u64>,
}

fn on_off(cmdline: &str, key: &str, default: bool) -> Result<bool, Reason> {
    match cmdline::value(cmdline, key) {
        None => Ok(default),
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => bail!("unknown {} value {} (want on or off)", key, other),
    }
}

fn parse_options(cmdline: &str) -> Result<Options, Reason> {
    let limit = match cmdline::number(cmdline, "mem_mib")? {
        None => None,
        Some(0) => bail!("mem_mib=0 covers nothing"),
        Some(mib) => match mib.checked_mul(MIB) {
            Some(bytes) => Some(bytes),
            None => bail!("mem_mib={} is too large", mib),
        },
    };
    let pattern = match cmdline::value(cmdline, "pattern") {
        None | Some("addr") => Pattern::Addr,
        Some("const") => {
            Pattern::Const(cmdline::number(cmdline, "value")?.unwrap_or(DEFAULT_VALUE))
        }
        Some(other) => bail!("unknown pattern {} (want addr or const)", other),
    };
    let touch = match cmdline::value(cmdline, "touch") {
        None | Some("full") => Touch::Full,
        Some("page") => Touch::Page,
        Some("hugepage") => Touch::Hugepage,
        Some(other) => bail!("unknown touch {} (want full, page or hugepage)", other),
    };
    let ring = match cmdline::value(cmdline, "ring") {
        None | Some("3") => Ring::User,
        Some("0") => Ring::Kernel,
        Some(other) => bail!("unknown ring {} (want 3 or 0)", other),
    };
    let gib_pages = match cmdline::value(cmdline, "map") {
        None | Some("auto") => paging::gib_pages_supported(),
        Some("2m") => false,
        Some(other) => bail!("unknown map {} (want auto or 2m)", other),
    };
    Ok(Options {
        limit,
        pattern,
        touch,
        verify: on_off(cmdline, "verify", true)?,
        hold: on_off(cmdline, "hold", false)?,
        ring,
        gib_pages,
        corrupt: cmdline::number(cmdline, "corrupt")?,
    })
}

/// `start..end`, 4 KiB aligned.
#[derive(Clone, Copy)]
struct Range {
    start: u64,
    end: u64,
}

impl Range {
    fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// Removes `start..end` from every range in `ranges` (sorted, disjoint).
fn subtract(ranges: &mut Vec<Range>, start: u64, end: u64) {
    if start >= end {
        return;
    }
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for r in ranges.iter() {
        if r.end <= start || r.start >= end {
            out.push(*r);
            continue;
        }
        if r.start < start {
            out.push(Range {
                start: r.start,
                end: start,
            });
        }
        if r.end > end {
            out.push(Range {
                start: end,
                end: r.end,
            });
        }
    }
    *ranges = out;
}

/// Rounds `start..start+len` out to 4 KiB pages (`(start, end)`).
fn pages_around(start: u64, len: u64) -> (u64, u64) {
    let end = start.saturating_add(len).saturating_add(KIB4 - 1) & !(KIB4 - 1);
    (start & !(KIB4 - 1), end)
}

/// The RAM `probe=mem` may cover: the memory map's type-1 entries, rounded
/// in to 4 KiB pages, sorted and merged, minus
/// - everything below 1 MiB,
/// - the kernel image (`__image_start..__image_end`: code, data, bss, the
///   boot stack, heap, page-table pool, AP stacks, DMA pool, user stack),
/// - the scratch RAM `ram::scratch` handed out (none in this program),
/// - the loader's start info, memory map and command line (pages),
/// - every range another memory map entry (any other type) overlaps,
/// - anything past what can be identity mapped.
fn covered_ranges(info: &StartInfo) -> Result<Vec<Range>, Reason> {
    if info.memmap_entries as usize > MAX_MEMMAP {
        bail!(
            "memory map has {} entries, more than the {} kept",
            info.memmap_entries,
            MAX_MEMMAP
        );
    }
    let mut ranges: Vec<Range> = info
        .memmap()
        .iter()
        .filter(|e| e.kind == MEM_TYPE_RAM)
        .filter_map(|e| {
            let start = e.addr.checked_add(KIB4 - 1)? & !(KIB4 - 1);
            let end = e.addr.saturating_add(e.size) & !(KIB4 - 1);
            (start < end).then_some(Range { start, end })
        })
        .collect();
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let mut ranges = merged;
    subtract(&mut ranges, 0, LOW_LIMIT);
    let image_start = core::ptr::addr_of!(__image_start) as u64;
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let (start, end) = pages_around(image_start, image_end - image_start);
    subtract(&mut ranges, start, end);
    if let Some((start, end)) = crate::ram::handed_out() {
        let (start, end) = pages_around(start, end - start);
        subtract(&mut ranges, start, end);
    }
    for (addr, len) in info.loader_ranges() {
        if len > 0 {
            let (start, end) = pages_around(addr, len);
            subtract(&mut ranges, start, end);
        }
    }
    for e in info.memmap().iter().filter(|e| e.kind != MEM_TYPE_RAM) {
        let (start, end) = pages_around(e.addr, e.size);
        subtract(&mut ranges, start, end);
    }
    subtract(&mut ranges, paging::mappable_limit(), u64::MAX);
    Ok(ranges)
}

/// An upper bound of the page tables [`paging::map_ram`] may need for
/// `ranges` plus the user code and stack: per range a PDPT per 512 GiB and
/// a PD per GiB (each plus one for a partial one at either end), two page
/// tables for unaligned edges; and slack for the edges cut later.
fn tables_needed(ranges: &[Range]) -> u64 {
    let per_range: u64 = ranges
        .iter()
        .map(|r| r.len().div_ceil(512 * GIB) + 1 + r.len().div_ceil(GIB) + 1 + 2)
        .sum();
    per_range + 16
}

pub fn run(info: &StartInfo) -> Outcome {
    let options = parse_options(info.cmdline())?;
    let mut ranges = covered_ranges(info)?;

    // Page tables: from the top of the highest range below 4 GiB (identity
    // mapped by the boot tables) that has room, taken out of the coverage.
    let tables_bytes = tables_needed(&ranges) * KIB4;
    let Some(host) = ranges
        .iter()
        .rev()
        .find(|r| r.end <= crate::phys::MAPPED_LIMIT && r.len() >= tables_bytes)
        .copied()
    else {
        bail!(
            "no room for {} bytes of page tables below 4 GiB",
            tables_bytes
        );
    };
    let tables_start = host.end - tables_bytes;
    subtract(&mut ranges, tables_start, host.end);
    // SAFETY: RAM below 4 GiB (identity mapped), now excluded from the
    // coverage and used by nothing else.
    let mut tables = unsafe { TableSource::new(tables_start, host.end) };

    if let Some(limit) = options.limit {
        let total: u64 = ranges.iter().map(Range::len).sum();
        if limit > total {
            bail!(
                "mem_mib={} exceeds the {} MiB of ram this program can cover",
                limit / MIB,
                total / MIB
            );
        }
        let mut left = limit;
        ranges.retain_mut(|r| {
            let take = r.len().min(left);
            r.end = r.start + take;
            left -= take;
            take > 0
        });
    }
    let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
        bail!("no ram to cover");
    };
    let covered: u64 = ranges.iter().map(Range::len).sum();
    for r in &ranges {
        say!(
            "mem range first={:#x} last={:#x} bytes={:#x}",
            r.start,
            r.end - 1,
            r.len()
        );
    }
    say!(
        "mem ranges={} covered_mib={} first={:#x} last={:#x}",
        ranges.len(),
        covered >> 20,
        first.start,
        last.end - 1
    );

    let user_access = options.ring == Ring::User;
    user::init(&mut tables)?;
    for r in &ranges {
        paging::map_ram(r.start, r.end, user_access, options.gib_pages, &mut tables)?;
    }
    let (mask, value) = options.pattern.mask_value();
    say!(
        "mem setup pattern={} touch={} ring={} pages={} tables={} tables_first={:#x} tables_last={:#x}",
        match options.pattern {
            Pattern::Addr => text!("addr salt={:#x}", SALT),
            Pattern::Const(value) => text!("const value={:#x}", value),
        },
        options.touch.name(),
        options.ring.number(),
        if options.gib_pages { "1g" } else { "2m" },
        tables.used(),
        tables_start,
        host.end - 1
    );

    let khz = tsc::khz();
    let stride_mask = options.touch.stride() - 1;
    let fill = match (options.touch, options.pattern) {
        (Touch::Full, Pattern::Const(_)) => core::ptr::addr_of!(mem_fill_const),
        (Touch::Full, Pattern::Addr) => core::ptr::addr_of!(mem_fill),
        _ => core::ptr::addr_of!(mem_fill_sparse),
    };
    let start = tsc::now();
    for r in &ranges {
        let mut regs = Regs {
            rdi: r.start,
            rsi: r.end,
            rdx: mask,
            rcx: value,
            r8: stride_mask,
            ..Regs::default()
        };
        // SAFETY: the routine writes only `r` (covered RAM, which nothing
        // else uses, mapped user accessible above).
        unsafe { user::call(options.ring, fill, &mut regs)? };
    }
    let ms = tsc::now().wrapping_sub(start) / khz;
    say!("mem wrote_mib={} ms={}", covered >> 20, ms);

    if let Some(addr) = options.corrupt {
        let stride = options.touch.stride();
        let written = ranges.iter().any(|r| {
            (r.start..r.end).contains(&addr) && (addr == r.start || addr.is_multiple_of(stride))
        });
        if !written {
            bail!(
                "corrupt={:#x} is not a word of the covered ram that touch={} writes",
                addr,
                options.touch.name()
            );
        }
        let word = addr as *mut u64;
        // SAFETY: an aligned word of covered RAM (identity mapped above),
        // which nothing but this program uses.
        unsafe { word.write_volatile(!word.read_volatile()) };
    }

    if options.verify {
        let mut errors = 0u64;
        let mut mismatch = None;
        let start = tsc::now();
        for r in &ranges {
            let mut regs = Regs {
                rdi: r.start,
                rsi: r.end,
                rdx: mask,
                rcx: value,
                r8: stride_mask,
                ..Regs::default()
            };
            // SAFETY: the routine reads only `r` (mapped above).
            unsafe { user::call(options.ring, core::ptr::addr_of!(mem_verify), &mut regs)? };
            if regs.rax > 0 && mismatch.is_none() {
                mismatch = Some((regs.r9, regs.r10));
            }
            errors += regs.rax;
        }
        let ms = tsc::now().wrapping_sub(start) / khz;
        say!(
            "mem verified_mib={} ms={} errors={}",
            covered >> 20,
            ms,
            errors
        );
        if let Some((addr, got)) = mismatch {
            bail!(
                "mem mismatch at {:#x} want={:#x} got={:#x}",
                addr,
                options.pattern.expected(addr),
                got
            );
        }
    }
    if options.hold {
        say!("mem holding");
        halt_forever();
    }
    Ok(())
}

global_asm!(
    r#"
    /* Ring-3 routines (see user.rs): no stack, end with ud2.
       In: rdi = start, rsi = end (exclusive; both 4 KiB aligned), rdx =
       and-mask, rcx = xor value: the word at address a holds (a & rdx) ^
       rcx; r8 = stride - 1 (7, 4095 or 2 MiB - 1). */
    .section .text.user.mem, "ax"

    /* Every word, 4 per iteration. */
    .globl mem_fill
mem_fill:
1:  mov %rdi, %rax
    and %rdx, %rax
    xor %rcx, %rax
    mov %rax, (%rdi)
    lea 8(%rdi), %rax
    and %rdx, %rax
    xor %rcx, %rax
    mov %rax, 8(%rdi)
    lea 16(%rdi), %rax
    and %rdx, %rax
    xor %rcx, %rax
    mov %rax, 16(%rdi)
    lea 24(%rdi), %rax
    and %rdx, %rax
    xor %rcx, %rax
    mov %rax, 24(%rdi)
    add $32, %rdi
    cmp %rsi, %rdi
    jb 1b
    ud2

    /* Every word with rcx (rdx = 0): rep stosq. */
    .globl mem_fill_const
mem_fill_const:
    mov %rcx, %rax
    mov %rsi, %rcx
    sub %rdi, %rcx
    shr $3, %rcx
    rep stosq
    ud2

    /* The first word, then the first word of each following stride. */
    .globl mem_fill_sparse
mem_fill_sparse:
1:  mov %rdi, %rax
    and %rdx, %rax
    xor %rcx, %rax
    mov %rax, (%rdi)
    or %r8, %rdi
    add $1, %rdi
    cmp %rsi, %rdi
    jb 1b
    ud2

    /* Checks the words mem_fill / mem_fill_sparse wrote with the same
       stride. Out: rax = mismatches; for the first, r9 = its address and
       r10 = the word read. */
    .globl mem_verify
mem_verify:
    xor %eax, %eax
1:  mov %rdi, %r11
    and %rdx, %r11
    xor %rcx, %r11
    cmp (%rdi), %r11
    jne 3f
2:  or %r8, %rdi
    add $1, %rdi
    cmp %rsi, %rdi
    jb 1b
    ud2
3:  test %rax, %rax
    jnz 4f
    mov %rdi, %r9
    mov (%rdi), %r10
4:  add $1, %rax
    jmp 2b
    .text
    "#,
    options(att_syntax)
);
