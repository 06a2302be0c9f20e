//! `probe=blkbench`: throughput and IOPS of a virtio block device with
//! `qd` requests in flight (see README.md). The run is timed with the TSC
//! from the first submission to the last completion; nothing is printed
//! meanwhile. The queue is the probe's fixed-chain ring (`ring=fixed`,
//! default) or `virtio-drivers`' `VirtQueue` (`ring=crate`).

use super::blk::{seg_option, slot_option};
use super::Outcome;
use crate::blk_ring::FixedBlk;
use crate::exit::Reason;
use crate::idt;
use crate::start_info::StartInfo;
use crate::tsc;
use crate::virtio_blk::{
    feature, kind, Blk, Device, Dir, Stats, WaitMode, QUEUE_VECTOR, SECTOR_SIZE, STATUS_OK,
};
use crate::{bail, cmdline, ram, say};

const MAX_QD: u64 = 32;
const MIB: u64 = 1 << 20;
const DEFAULT_SEQ_BS: u64 = MIB;
const DEFAULT_RAND_BS: u64 = 4096;
const DEFAULT_SEQ_TOTAL: u64 = 64 * MIB;
const DEFAULT_RAND_TOTAL: u64 = 16 * MIB;
/// xorshift64 seed: every run (and VMM) sees the same offsets.
const SEED: u64 = 0x2545_f491_4f6c_dd1d;

/// Which queue driver runs the requests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ring {
    Fixed,
    Crate,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    SeqRead,
    SeqWrite,
    RandRead,
    RandWrite,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::SeqRead => "seqread",
            Op::SeqWrite => "seqwrite",
            Op::RandRead => "randread",
            Op::RandWrite => "randwrite",
        }
    }

    fn random(self) -> bool {
        matches!(self, Op::RandRead | Op::RandWrite)
    }

    fn write(self) -> bool {
        matches!(self, Op::SeqWrite | Op::RandWrite)
    }
}

/// What to run.
struct Plan {
    op: Op,
    bs: u64,
    qd: usize,
    total: u64,
    /// Bytes of the disk used, from offset 0 (a multiple of `bs`).
    span: u64,
}

pub fn run(info: &StartInfo) -> Outcome {
    let cmdline = info.cmdline();
    let op = match cmdline::value(cmdline, "bench") {
        None | Some("seqread") => Op::SeqRead,
        Some("seqwrite") => Op::SeqWrite,
        Some("randread") => Op::RandRead,
        Some("randwrite") => Op::RandWrite,
        Some(other) => bail!("unknown bench {}", other),
    };
    let mode = match cmdline::value(cmdline, "wait") {
        None | Some("irq") => WaitMode::Irq,
        Some("poll") => WaitMode::Poll,
        Some(other) => bail!("unknown wait mode {}", other),
    };
    let ring = match cmdline::value(cmdline, "ring") {
        None | Some("fixed") => Ring::Fixed,
        Some("crate") => Ring::Crate,
        Some(other) => bail!("unknown ring {}", other),
    };
    let slot = slot_option(info)?;
    let mut dev = Device::open(info, slot)?;
    dev.seg_override = seg_option(info)?;
    let c = dev.config;
    let block = u64::from(c.blk_size).max(SECTOR_SIZE);
    let bs = cmdline::number(cmdline, "bs")?.unwrap_or(if op.random() {
        DEFAULT_RAND_BS
    } else {
        DEFAULT_SEQ_BS
    });
    let qd = cmdline::number(cmdline, "qd")?.unwrap_or(1);
    let total = cmdline::number(cmdline, "total")?.unwrap_or(if op.random() {
        DEFAULT_RAND_TOTAL
    } else {
        DEFAULT_SEQ_TOTAL
    });
    let disk = c.capacity.saturating_mul(SECTOR_SIZE);
    let span = cmdline::number(cmdline, "span")?.unwrap_or(disk).min(disk);
    if bs == 0 || !bs.is_multiple_of(block) {
        bail!("bs={} is not a multiple of the {}-byte block", bs, block);
    }
    if bs > u64::from(u32::MAX) {
        bail!("bs={} does not fit a descriptor", bs);
    }
    if !(1..=MAX_QD).contains(&qd) {
        bail!("qd={} is not in 1..{}", qd, MAX_QD);
    }
    if total == 0 || !total.is_multiple_of(bs) {
        bail!("total={} is not a multiple of bs={}", total, bs);
    }
    if span < bs {
        bail!(
            "span={} (disk {} bytes) is smaller than bs={}",
            span,
            disk,
            bs
        );
    }
    if op.write() && dev.offers(feature::RO) {
        bail!("device is read-only");
    }
    let plan = Plan {
        op,
        bs,
        qd: qd as usize,
        total,
        span: span / bs * bs,
    };
    // Each request slot has its own buffer.
    let buffers = ram::scratch(info, plan.qd * bs as usize)?;
    if op.write() {
        buffers.fill(0xa5);
    }
    let base = buffers.as_mut_ptr();
    match ring {
        Ring::Fixed => {
            let write = op.write();
            let request_kind = if write { kind::OUT } else { kind::IN };
            // SAFETY: slot `i` owns bytes `i * bs..(i + 1) * bs` of
            // `buffers`, which nothing else touches and which is never
            // freed.
            let mut blk = unsafe {
                FixedBlk::start(dev, mode, plan.qd, request_kind, base, bs as usize, !write)?
            };
            header(&blk.run.dev, blk.size.into(), "fixed", &plan, mode);
            bench(&mut blk, &plan)
        }
        Ring::Crate if dev.max_queue_size >= 128 => crate_ring::<128>(dev, mode, &plan, base),
        Ring::Crate => crate_ring::<32>(dev, mode, &plan, base),
    }
}

/// `probe: blkbench device=... ring=...`, before the run.
fn header(dev: &Device, queue_size: usize, ring: &str, plan: &Plan, mode: WaitMode) {
    say!(
        "blkbench device={} id={:#06x} capacity_sectors={} ring={} queue_size={} span={} wait={}",
        dev.bdf,
        dev.device_id,
        dev.config.capacity,
        ring,
        queue_size,
        plan.span,
        mode.name()
    );
}

/// Runs the plan on the crate's `VirtQueue` with `Q` entries.
fn crate_ring<const Q: usize>(dev: Device, mode: WaitMode, plan: &Plan, base: *mut u8) -> Outcome {
    let write = plan.op.write();
    let mut queue = CrateQueue {
        blk: dev.start::<Q>(mode)?,
        base,
        bs: plan.bs as usize,
        kind: if write { kind::OUT } else { kind::IN },
        dir: if write {
            Dir::ToDevice
        } else {
            Dir::FromDevice
        },
    };
    let bs = plan.bs as usize;
    if queue.blk.max_in_flight(bs) < plan.qd {
        bail!(
            "qd={} requests of {} bytes need {} descriptors each; the queue has {}",
            plan.qd,
            bs,
            2 + queue.blk.data_segments(bs),
            Q
        );
    }
    header(queue.blk.dev(), Q, "crate", plan, mode);
    bench(&mut queue, plan)
}

/// What the benchmark loop needs from a queue driver.
trait Queue {
    /// Queues slot `slot` (idle) for `sector`; the device is told at `kick`.
    fn submit(&mut self, slot: usize, sector: u64) -> Result<(), Reason>;
    fn kick(&mut self);
    fn wait(&mut self) -> Result<(), Reason>;
    /// The next completion as (slot, status).
    fn complete(&mut self) -> Result<Option<(usize, u8)>, Reason>;
    fn stats(&self) -> Stats;
}

impl Queue for FixedBlk {
    fn submit(&mut self, slot: usize, sector: u64) -> Result<(), Reason> {
        FixedBlk::submit(self, slot, sector)
    }
    fn kick(&mut self) {
        FixedBlk::kick(self)
    }
    fn wait(&mut self) -> Result<(), Reason> {
        FixedBlk::wait(self)
    }
    fn complete(&mut self) -> Result<Option<(usize, u8)>, Reason> {
        FixedBlk::complete(self)
    }
    fn stats(&self) -> Stats {
        self.run.stats
    }
}

/// The crate's `VirtQueue` with one data buffer per slot.
struct CrateQueue<const Q: usize> {
    blk: Blk<Q>,
    base: *mut u8,
    bs: usize,
    kind: u32,
    dir: Dir,
}

impl<const Q: usize> Queue for CrateQueue<Q> {
    fn submit(&mut self, slot: usize, sector: u64) -> Result<(), Reason> {
        // SAFETY: `bench` hands out slots below `qd`; slot `slot` owns
        // bytes `slot * bs..(slot + 1) * bs` of the scratch buffer (`qd *
        // bs` bytes, never freed), untouched while the request is in
        // flight.
        unsafe {
            self.blk.submit(
                slot,
                self.kind,
                sector,
                self.base.add(slot * self.bs),
                self.bs,
                self.dir,
            )
        }
    }
    fn kick(&mut self) {
        self.blk.kick()
    }
    fn wait(&mut self) -> Result<(), Reason> {
        self.blk.wait()
    }
    fn complete(&mut self) -> Result<Option<(usize, u8)>, Reason> {
        Ok(self.blk.complete()?.map(|done| (done.slot, done.status)))
    }
    fn stats(&self) -> Stats {
        self.blk.run.stats
    }
}

fn bench(queue: &mut impl Queue, plan: &Plan) -> Outcome {
    let requests = plan.total / plan.bs;
    let blocks = plan.span / plan.bs;
    let sectors_per_block = plan.bs / SECTOR_SIZE;
    let mut free: [usize; MAX_QD as usize] = core::array::from_fn(|i| i);
    let mut free_len = plan.qd;
    let mut rng = SEED;
    let (mut submitted, mut completed) = (0u64, 0u64);
    let irqs_before = idt::device_irqs(QUEUE_VECTOR);

    let start = tsc::now();
    while completed < requests {
        let mut added = false;
        while free_len > 0 && submitted < requests {
            let block = if plan.op.random() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % blocks
            } else {
                submitted % blocks
            };
            free_len -= 1;
            queue.submit(free[free_len], block * sectors_per_block)?;
            submitted += 1;
            added = true;
        }
        if added {
            queue.kick();
        }
        queue.wait()?;
        while let Some((slot, status)) = queue.complete()? {
            if status != STATUS_OK {
                bail!(
                    "{} request {} of {} bytes: status={}",
                    plan.op.name(),
                    completed,
                    plan.bs,
                    status
                );
            }
            free[free_len] = slot;
            free_len += 1;
            completed += 1;
        }
    }
    let cycles = tsc::now() - start;

    let irqs = idt::device_irqs(QUEUE_VECTOR) - irqs_before;
    let stats = queue.stats();
    say!(
        "blkbench requests={} irqs={} notifies={} halts={}",
        requests,
        irqs,
        stats.notifies,
        stats.halts
    );
    report(plan, cycles)
}

/// Prints the result line.
fn report(plan: &Plan, cycles: u64) -> Result<(), Reason> {
    let ns = (u128::from(cycles) * 1_000_000 / u128::from(tsc::khz())).max(1);
    let bytes = u128::from(plan.total);
    // MiB/s times 10, rounded.
    let mib_s_10 = (bytes * 10_000_000_000 + ns * u128::from(MIB) / 2) / (ns * u128::from(MIB));
    let iops = u128::from(plan.total / plan.bs) * 1_000_000_000 / ns;
    say!(
        "blkbench op={} bs={} qd={} bytes={} ns={} mib_s={}.{} iops={}",
        plan.op.name(),
        plan.bs,
        plan.qd,
        plan.total,
        ns,
        mib_s_10 / 10,
        mib_s_10 % 10,
        iops
    );
    Ok(())
}
