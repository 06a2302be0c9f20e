//! Addresses for memory BARs the firmware left unassigned: bump allocation
//! from the host bridge's memory windows, as the DSDT's host bridge `_CRS`
//! describes them, else from Ferrovisor's layout (0xC0000000.. for 32-bit
//! BARs, 64 GiB.. for 64-bit BARs).

use crate::aml_scan::MemWindow;
use crate::bail;
use crate::exit::Reason;
use crate::paging;
use crate::pci::{Bar, BarKind, Bdf, ConfigAccess, COMMAND_IO, COMMAND_MEMORY};
use alloc::vec::Vec;
use core::fmt;

/// Default 32-bit window (Ferrovisor's PCI_MMIO32).
const DEFAULT_MEM32: MemWindow = MemWindow {
    base: 0xc000_0000,
    len: 0x2000_0000,
};
/// Default 64-bit window (Ferrovisor's PCI_MMIO64 for small guests).
const DEFAULT_MEM64: MemWindow = MemWindow {
    base: 64 << 30,
    len: 64 << 30,
};
const FOUR_GIB: u64 = 1 << 32;

/// A bump allocator over one window.
#[derive(Clone, Copy)]
struct Pool {
    start: u64,
    next: u64,
    end: u64,
}

impl Pool {
    fn new(start: u64, end: u64) -> Self {
        Pool {
            start,
            next: start,
            end,
        }
    }

    /// The lowest `size`-aligned free range at or above `next` that misses
    /// every range in `taken`.
    fn take(&mut self, size: u64, taken: &[(u64, u64)]) -> Option<u64> {
        let mask = size.checked_sub(1)?;
        let mut addr = self.next.checked_add(mask)? & !mask;
        // Each step moves past one taken range, so this ends.
        for _ in 0..=taken.len() {
            let end = addr.checked_add(size)?;
            if end > self.end {
                return None;
            }
            match taken
                .iter()
                .find(|&&(start, stop)| start < end && addr < stop)
            {
                Some(&(_, stop)) => addr = stop.checked_add(mask)? & !mask,
                None => {
                    self.next = end;
                    return Some(addr);
                }
            }
        }
        None
    }
}

/// Where unassigned BARs go.
pub struct Pools {
    mem32: Pool,
    /// `None`: 64-bit BARs share the 32-bit pool (no usable 64-bit window).
    mem64: Option<Pool>,
    /// `dsdt` or `default`.
    source: &'static str,
    /// Ranges other BARs already decode.
    taken: Vec<(u64, u64)>,
}

impl Pools {
    /// Pools over the host bridge windows (`None`: not described, use the
    /// defaults). The 32-bit pool starts at 0xC0000000 when a window holds
    /// it (else the largest 32-bit window); the 64-bit pool at 64 GiB when
    /// a window holds it (else the first window above 4 GiB that the probe
    /// can identity map, see [`paging::mappable_limit`]; else there is none
    /// and 64-bit BARs go below 4 GiB).
    pub fn new(windows: Option<&[MemWindow]>) -> Self {
        let Some(windows) = windows else {
            return Pools {
                mem32: Pool::new(DEFAULT_MEM32.base, DEFAULT_MEM32.end()),
                mem64: Some(Pool::new(DEFAULT_MEM64.base, DEFAULT_MEM64.end())),
                source: "default",
                taken: Vec::new(),
            };
        };
        let holds = |w: &&MemWindow, addr: u64| w.base <= addr && addr < w.end();
        let low = windows.iter().filter(|w| w.end() <= FOUR_GIB);
        let mem32 = match low.clone().find(|w| holds(w, DEFAULT_MEM32.base)) {
            Some(w) => Pool::new(DEFAULT_MEM32.base, w.end()),
            None => low
                .max_by_key(|w| w.len)
                .map(|w| Pool::new(w.base, w.end()))
                .unwrap_or(Pool::new(DEFAULT_MEM32.base, DEFAULT_MEM32.end())),
        };
        let addressable = paging::mappable_limit();
        let mem64 = match windows.iter().find(|w| holds(w, DEFAULT_MEM64.base)) {
            Some(w) => Some(Pool::new(DEFAULT_MEM64.base, w.end())),
            None => windows
                .iter()
                .find(|w| w.base >= FOUR_GIB && w.end() <= addressable)
                .map(|w| Pool::new(w.base, w.end())),
        };
        Pools {
            mem32,
            mem64,
            source: "dsdt",
            taken: Vec::new(),
        }
    }

    /// Keeps an assigned BAR's range out of the pools.
    fn reserve(&mut self, bar: &Bar) {
        if bar.kind == BarKind::Io || bar.addr == 0 {
            return;
        }
        self.taken
            .push((bar.addr, bar.addr.saturating_add(bar.size)));
    }

    /// An address for `bar` (naturally aligned).
    fn take(&mut self, bar: &Bar) -> Option<u64> {
        match (bar.kind, self.mem64.as_mut()) {
            (BarKind::Mem64, Some(pool)) => pool.take(bar.size, &self.taken),
            _ => self.mem32.take(bar.size, &self.taken),
        }
    }
}

impl fmt::Display for Pools {
    /// `windows=dsdt mem32=0xc0000000-0xe0000000 mem64=0x1000000000-0x2000000000`
    /// (pool start and end; `mem64=mem32` when 64-bit BARs go below 4 GiB).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "windows={} mem32={:#x}-{:#x}",
            self.source, self.mem32.start, self.mem32.end
        )?;
        match self.mem64 {
            Some(pool) => write!(f, " mem64={:#x}-{:#x}", pool.start, pool.end),
            None => write!(f, " mem64=mem32"),
        }
    }
}

/// The BARs of a function after [`assign`].
pub struct Assigned {
    pub bars: Vec<Bar>,
    /// How many memory BARs the probe programmed.
    pub count: usize,
    /// The pools used, if any BAR needed an address.
    pub pools: Option<Pools>,
}

/// Gives every unassigned memory BAR of `bdf` an address, away from the
/// BARs other functions on bus 0 already decode. I/O BARs are left alone.
/// Decoding stays as it was; the caller enables it.
pub fn assign(
    access: &ConfigAccess,
    bdf: Bdf,
    windows: Option<&[MemWindow]>,
) -> Result<Assigned, Reason> {
    let mut bars = access.bars(bdf)?;
    let unassigned = |bar: &Bar| bar.kind != BarKind::Io && bar.addr == 0;
    if !bars.iter().any(unassigned) {
        return Ok(Assigned {
            bars,
            count: 0,
            pools: None,
        });
    }
    let mut pools = Pools::new(windows);
    for other in access.functions_on_bus0() {
        let other_bars = if other == bdf {
            bars.clone()
        } else {
            access.bars(other)?
        };
        for bar in &other_bars {
            pools.reserve(bar);
        }
    }
    let command = access.command(bdf);
    access.set_command(bdf, command & !(COMMAND_IO | COMMAND_MEMORY));
    let mut count = 0;
    for bar in bars.iter_mut().filter(|bar| unassigned(bar)) {
        let Some(addr) = pools.take(bar) else {
            access.set_command(bdf, command);
            bail!("no room for {} of {} ({})", bar, bdf, pools);
        };
        access.set_bar(bdf, bar, addr);
        bar.addr = addr;
        pools.reserve(bar);
        count += 1;
    }
    access.set_command(bdf, command);
    Ok(Assigned {
        bars,
        count,
        pools: Some(pools),
    })
}
