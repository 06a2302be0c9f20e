//! `probe=balloon`: drives a virtio memory balloon. The probe owns a pool
//! of RAM it does not otherwise use, touches every page of it, and then
//! follows the host's target (`num_pages`): inflating gives pool pages to
//! the host (which discards them, so the VMM's RSS falls), deflating takes
//! them back (they must read as zero) and touches them again. Statistics
//! go on the stats queue, and with `report=on` a free part of the pool is
//! reported once on the free page reporting queue.

use super::Outcome;
use crate::exit::Reason;
use crate::start_info::{StartInfo, MEM_TYPE_RAM};
use crate::tsc::{self, Deadline};
use crate::virtio_balloon::{feature, Balloon, Role};
use crate::virtio_blk::dma_page;
use crate::{bail, cmdline, ram, say};

const PAGE: u64 = 4096;
/// PFNs per inflate / deflate buffer (Linux's batch).
const BATCH: usize = 256;
/// `report_mib` unless given (or the pool is smaller).
const DEFAULT_REPORT_MIB: u64 = 64;
/// Free page reporting chunk (Linux reports order-9 blocks and up).
const REPORT_CHUNK: u64 = 2 << 20;
/// Reporting chunks per descriptor chain at most (Linux's
/// PAGE_REPORTING_CAPACITY).
const REPORT_CHAIN: usize = 32;
/// How often `num_pages` is read even without a configuration interrupt.
const CONFIG_POLL_US: u64 = 100_000;
/// `stats_sent` lines at most this often.
const STATS_PRINT_US: u64 = 1_000_000;
/// Statistics tags (virtio 1.2, 5.5.6.3).
const TAG_SWAP_IN: u16 = 0;
const TAG_SWAP_OUT: u16 = 1;
const TAG_FREE: u16 = 4;
const TAG_TOTAL: u16 = 5;
const TAG_AVAILABLE: u16 = 6;
const STATS_ENTRIES: usize = 5;
const STATS_ENTRY_LEN: usize = 10;
/// Offsets in the buffer page: inflate PFNs, deflate PFNs, statistics.
const INFLATE_PFNS: usize = 0;
const DEFLATE_PFNS: usize = BATCH * 4;
const STATS_BUF: usize = 2 * BATCH * 4;

/// The value the probe writes into the first qword of the pool page at
/// `addr`: never zero, and tells pages apart.
fn pattern(addr: u64) -> u64 {
    0x5a5a_5a5a_0000_0000 | (addr >> 12)
}

/// The pool: `pages` pages from `base`; the balloon holds the top `held`.
struct Pool {
    base: u64,
    pages: u32,
    held: u32,
}

impl Pool {
    fn end(&self) -> u64 {
        self.base + u64::from(self.pages) * PAGE
    }

    /// Address of the lowest page the balloon holds (`end` if none).
    fn balloon_start(&self) -> u64 {
        self.end() - u64::from(self.held) * PAGE
    }
}

/// Writes the pattern into the first qword of each of `pages` pages from
/// `addr`.
fn touch(addr: u64, pages: u64) {
    for i in 0..pages {
        let page = addr + i * PAGE;
        // SAFETY: a page of the pool (identity mapped RAM that only this
        // program uses) that the balloon does not hold.
        unsafe { (page as *mut u64).write_volatile(pattern(page)) };
    }
}

/// The first page among `pages` pages from `addr` whose first qword is not
/// zero, with that qword.
fn first_nonzero(addr: u64, pages: u64) -> Option<(u64, u64)> {
    (0..pages).find_map(|i| {
        let page = addr + i * PAGE;
        // SAFETY: as in `touch`.
        let value = unsafe { (page as *const u64).read_volatile() };
        (value != 0).then_some((page, value))
    })
}

/// Milliseconds since `start` (a TSC value).
fn ms_since(start: u64) -> u64 {
    tsc::now().wrapping_sub(start) / tsc::khz().max(1)
}

/// The statistics the probe sends and how often.
struct Stats {
    /// Bytes of RAM in the memory map.
    total: u64,
    sent: u64,
    /// `sent` when a line was last printed.
    printed: u64,
    /// No `stats_sent` line before this.
    quiet_until: Deadline,
}

impl Stats {
    /// Fills the stats buffer and puts it on the stats queue.
    fn send(&mut self, dev: &mut Balloon, buffers: u64, pool: &Pool) -> Result<(), Reason> {
        let Some(ring) = dev.stats.as_mut() else {
            return Ok(());
        };
        let free = u64::from(pool.pages - pool.held) * PAGE;
        let entries: [(u16, u64); STATS_ENTRIES] = [
            (TAG_SWAP_IN, 0),
            (TAG_SWAP_OUT, 0),
            (TAG_FREE, free),
            (TAG_TOTAL, self.total),
            (TAG_AVAILABLE, free),
        ];
        let buf = buffers + STATS_BUF as u64;
        for (i, (tag, value)) in entries.iter().enumerate() {
            let at = buf + (i * STATS_ENTRY_LEN) as u64;
            // SAFETY: the stats buffer in the probe's DMA page; the device
            // does not hold it (the ring is idle).
            unsafe {
                (at as *mut u16).write_unaligned(tag.to_le());
                ((at + 2) as *mut u64).write_unaligned(value.to_le());
            }
        }
        let len = (STATS_ENTRIES * STATS_ENTRY_LEN) as u32;
        // SAFETY: the buffer is left alone until the device returns it
        // (or the device is reset when the program ends).
        unsafe { ring.submit(&[(buf, len, false)])? };
        self.sent += 1;
        self.maybe_print();
        Ok(())
    }

    /// Prints `stats_sent` if it changed and the last line is a second old.
    fn maybe_print(&mut self) {
        if self.sent != self.printed && self.quiet_until.expired() {
            say!("balloon stats_sent={}", self.sent);
            self.printed = self.sent;
            self.quiet_until = Deadline::after_us(STATS_PRINT_US);
        }
    }

    /// Refills and resends the buffer if the device returned it.
    fn service(&mut self, dev: &mut Balloon, buffers: u64, pool: &Pool) -> Result<(), Reason> {
        let returned = match dev.stats.as_mut() {
            Some(ring) => ring.poll()?.is_some(),
            None => false,
        };
        if returned {
            self.send(dev, buffers, pool)?;
        }
        self.maybe_print();
        Ok(())
    }
}

pub fn run(info: &StartInfo) -> Outcome {
    let cmd = info.cmdline();
    let seconds = cmdline::number(cmd, "seconds")?.unwrap_or(300);
    let pool_mib = cmdline::number(cmd, "pool_mib")?.unwrap_or(384);
    let report = match cmdline::value(cmd, "report") {
        None | Some("off") => false,
        Some("on") => true,
        Some(other) => bail!("unknown report mode {}", other),
    };
    if pool_mib == 0 || pool_mib > 4096 {
        bail!("pool_mib={} must be 1..=4096", pool_mib);
    }
    let report_mib = match cmdline::number(cmd, "report_mib")? {
        Some(mib) => mib,
        None => DEFAULT_REPORT_MIB.min(pool_mib & !1),
    };
    if report && (report_mib == 0 || report_mib % 2 != 0 || report_mib > pool_mib) {
        bail!(
            "report_mib={} must be a positive multiple of 2 up to pool_mib={}",
            report_mib,
            pool_mib
        );
    }
    let report_chunks = ((report_mib << 20) / REPORT_CHUNK) as usize;

    let mut dev = Balloon::open(info, report_chunks.min(REPORT_CHAIN))?;
    say!(
        "balloon found bdf={} id={:#06x} features={:#x} accepted={:#x} queues={} num_pages={} irq={}",
        dev.bdf,
        dev.device_id,
        dev.device_features,
        dev.features,
        dev.queue_count(),
        dev.num_pages()?,
        if dev.msix { "msix" } else { "poll" }
    );
    let buffers = dma_page("balloon buffers")? as u64;

    let pool_bytes = pool_mib << 20;
    let start = tsc::now();
    let base = ram::scratch(info, pool_bytes as usize)?.as_mut_ptr() as u64;
    let mut pool = Pool {
        base,
        pages: (pool_bytes / PAGE) as u32,
        held: 0,
    };
    touch(pool.base, u64::from(pool.pages));
    say!(
        "balloon pool_mib={} addr={:#x} pages={} ms={}",
        pool_mib,
        pool.base,
        pool.pages,
        ms_since(start)
    );
    let mut stats = Stats {
        total: info
            .memmap()
            .iter()
            .filter(|e| e.kind == MEM_TYPE_RAM)
            .map(|e| e.size)
            .sum(),
        sent: 0,
        printed: 0,
        quiet_until: Deadline::after_us(0),
    };
    stats.send(&mut dev, buffers, &pool)?;
    say!("balloon ready");

    if report {
        report_free(&mut dev, &pool, report_chunks)?;
    }

    let end = Deadline::after_us(seconds.saturating_mul(1_000_000));
    let mut next_poll = Deadline::after_us(0);
    let mut capped_target = None;
    loop {
        stats.service(&mut dev, buffers, &pool)?;
        if dev.config_changed() || next_poll.expired() {
            next_poll = Deadline::after_us(CONFIG_POLL_US);
            let target = dev.num_pages()?;
            let desired = target.min(pool.pages);
            if target > pool.pages && capped_target != Some(target) {
                say!(
                    "balloon target_pages={} exceeds pool_pages={}: stopping at the pool",
                    target,
                    pool.pages
                );
            }
            capped_target = (target > pool.pages).then_some(target);
            if desired != pool.held {
                let start = tsc::now();
                adjust(&mut dev, &mut pool, desired, buffers)?;
                say!(
                    "balloon actual_pages={} target_pages={} ms={}",
                    pool.held,
                    target,
                    ms_since(start)
                );
            }
        }
        if end.expired() {
            break;
        }
        dev.sleep();
    }
    let (config_irqs, queue_irqs) = dev.irqs();
    say!(
        "balloon done seconds={} actual_pages={} stats_sent={} config_irqs={} queue_irqs={}",
        seconds,
        pool.held,
        stats.sent,
        config_irqs,
        queue_irqs
    );
    Ok(())
}

/// Inflates or deflates in batches of at most [`BATCH`] pages until the
/// balloon holds `desired` pages, writing `actual` after each batch.
fn adjust(dev: &mut Balloon, pool: &mut Pool, desired: u32, buffers: u64) -> Outcome {
    while pool.held != desired {
        let inflate = desired > pool.held;
        let count = desired.abs_diff(pool.held).min(BATCH as u32);
        // Inflating takes the pages just below the balloon; deflating
        // gives back its lowest pages.
        let first = if inflate {
            pool.balloon_start() - u64::from(count) * PAGE
        } else {
            pool.balloon_start()
        };
        let array = buffers + if inflate { INFLATE_PFNS } else { DEFLATE_PFNS } as u64;
        for i in 0..u64::from(count) {
            let pfn = ((first >> 12) + i) as u32;
            // SAFETY: the PFN array in the probe's DMA page; the ring is
            // idle, so the device does not hold it.
            unsafe { ((array + 4 * i) as *mut u32).write_volatile(pfn) };
        }
        let (ring, role) = if inflate {
            (&mut dev.inflate, Role::Inflate)
        } else {
            (&mut dev.deflate, Role::Deflate)
        };
        // SAFETY: the array stays untouched until the device returns it.
        unsafe { ring.submit(&[(array, count * 4, false)])? };
        dev.wait(role)?;
        if inflate {
            pool.held += count;
        } else {
            if let Some((addr, value)) = first_nonzero(first, u64::from(count)) {
                bail!(
                    "deflated page {:#x} reads {:#x}, not zero: the host did not discard it",
                    addr,
                    value
                );
            }
            touch(first, u64::from(count));
            pool.held -= count;
        }
        dev.set_actual(pool.held)?;
    }
    Ok(())
}

/// Reports `chunks` 2 MiB chunks from the bottom of the pool (outside the
/// balloon) as free, in chains of at most [`REPORT_CHAIN`], waits for each
/// to be returned, counts the chunks that then read as zero and touches
/// them again.
fn report_free(dev: &mut Balloon, pool: &Pool, chunks: usize) -> Outcome {
    if dev.features & feature::PAGE_REPORTING == 0 {
        say!(
            "balloon reported_mib=0 offered={}",
            u8::from(dev.device_features & feature::PAGE_REPORTING != 0)
        );
        return Ok(());
    }
    let room = (pool.balloon_start() - pool.base) / REPORT_CHUNK;
    if (chunks as u64) > room {
        bail!(
            "cannot report {} chunks of 2 MiB: {} free in the pool",
            chunks,
            room
        );
    }
    let start = tsc::now();
    let Some(ring) = dev.reporting.as_ref() else {
        bail!("no reporting queue");
    };
    let per_chain = chunks.min(REPORT_CHAIN).min(usize::from(ring.size));
    let mut done = 0;
    while done < chunks {
        let n = per_chain.min(chunks - done);
        let mut chain = [(0u64, 0u32, true); REPORT_CHAIN];
        for (i, slot) in chain[..n].iter_mut().enumerate() {
            slot.0 = pool.base + (done + i) as u64 * REPORT_CHUNK;
            slot.1 = REPORT_CHUNK as u32;
        }
        let Some(ring) = dev.reporting.as_mut() else {
            bail!("no reporting queue");
        };
        // SAFETY: pool chunks outside the balloon, untouched until the
        // device returns them.
        unsafe { ring.submit(&chain[..n])? };
        dev.wait(Role::Reporting)?;
        done += n;
    }
    let bytes = chunks as u64 * REPORT_CHUNK;
    let pages = bytes / PAGE;
    let zero = (0..chunks as u64)
        .filter(|c| first_nonzero(pool.base + c * REPORT_CHUNK, REPORT_CHUNK / PAGE).is_none())
        .count() as u64;
    touch(pool.base, pages);
    say!(
        "balloon reported_mib={} chunks={} zeroed_mib={} ms={}",
        bytes >> 20,
        chunks,
        zero * (REPORT_CHUNK >> 20),
        ms_since(start)
    );
    Ok(())
}
