//! `probe=blk`: functional checks of a virtio block device on PCI bus 0
//! (see README.md): configuration, reads, a 1 MiB pattern written and read
//! back, flush, a read past the end, get-id, discard and write-zeroes; or,
//! with `blk_mode=ro`, that a read-only device refuses writes.

use super::Outcome;
use crate::exit::Reason;
use crate::idt;
use crate::mem::{as_qwords, fill_qwords, qwords_equal};
use crate::start_info::StartInfo;
use crate::tsc::Deadline;
use crate::virtio_blk::{
    feature, kind, Blk, Device, Dir, WaitMode, QUEUE_VECTOR, RANGE_SEGMENT_LEN, SECTOR_SIZE,
    STATUS_IOERR, STATUS_OK, STATUS_UNSUPP,
};
use crate::{bail, cmdline, ram, say};
use x86_64::instructions::interrupts;

/// One request at a time: header, up to 16 data descriptors (`blk_seg=`),
/// status.
const QUEUE_SIZE: usize = 32;
/// The pattern: sectors `PATTERN_SECTOR..+PATTERN_SECTORS`, in requests of
/// `CHUNK_BYTES`.
const PATTERN_SECTOR: u64 = 64;
const PATTERN_SECTORS: u64 = 2048;
const PATTERN_XOR: u64 = 0x5a5a_5a5a_5a5a_5a5a;
const CHUNK_BYTES: usize = 64 * 1024;
const DISCARD_SECTOR: u64 = 4096;
const DISCARD_SECTORS: u64 = 2048;
const ZEROES_SECTOR: u64 = 8192;
const ZEROES_SECTORS: u64 = 128;
/// Read at the start of the disk for `head=`.
const HEAD_BYTES: usize = 4096;
/// Sector written in `blk_mode=ro` (away from the header).
const RO_WRITE_SECTOR: u64 = 64;
const ID_BYTES: usize = 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadWrite,
    ReadOnly,
}

pub fn run(info: &StartInfo) -> Outcome {
    let mode = match cmdline::value(info.cmdline(), "blk_mode") {
        None | Some("rw") => Mode::ReadWrite,
        Some("ro") => Mode::ReadOnly,
        Some(other) => bail!("unknown blk_mode {}", other),
    };
    let slot = slot_option(info)?;
    let mut dev = Device::open(info, slot)?;
    dev.seg_override = seg_option(info)?;
    let c = dev.config;
    say!(
        "blk device={} capacity_sectors={} blk_size={} physical_block_exp={} min_io_size={} opt_io_size={} seg_max={} features={:#x}",
        dev.bdf,
        c.capacity,
        c.blk_size,
        c.physical_block_exp,
        c.min_io_size,
        c.opt_io_size,
        c.seg_max,
        dev.device_features
    );
    // A write buffer and a read buffer.
    let buffers = ram::scratch(info, 2 * CHUNK_BYTES)?;
    let (wbuf, rbuf) = buffers.split_at_mut(CHUNK_BYTES);
    let mut blk = dev.start::<QUEUE_SIZE>(WaitMode::Irq)?;
    let irqs_before = idt::device_irqs(QUEUE_VECTOR);
    match mode {
        Mode::ReadWrite => read_write(&mut blk, wbuf, rbuf)?,
        Mode::ReadOnly => read_only(&mut blk, wbuf, rbuf)?,
    }
    // Requests may all complete before the probe ever waits, and the MSI
    // is injected asynchronously (irqfd): under host load it can trail the
    // used ring. Wait for it in `hlt` (the 10 ms wake timer runs while `blk`
    // lives), for at most 200 ms.
    let deadline = Deadline::after_us(200_000);
    while idt::device_irqs(QUEUE_VECTOR) == irqs_before && !deadline.expired() {
        interrupts::enable_and_hlt();
        interrupts::disable();
    }
    let irqs = idt::device_irqs(QUEUE_VECTOR) - irqs_before;
    say!("blk msix_irqs={} halts={}", irqs, blk.run.stats.halts);
    if irqs == 0 {
        bail!("no msi-x interrupt from the request queue");
    }
    Ok(())
}

/// `blk_slot=N`: the PCI device number of the function to use.
pub fn slot_option(info: &StartInfo) -> Result<Option<u8>, Reason> {
    match cmdline::number(info.cmdline(), "blk_slot")? {
        None => Ok(None),
        Some(slot) if slot < 32 => Ok(Some(slot as u8)),
        Some(slot) => bail!("blk_slot={} is not a pci device number (0-31)", slot),
    }
}

/// `blk_seg=BYTES`: split request data into descriptors of at most this
/// many bytes (a multiple of 512).
pub fn seg_option(info: &StartInfo) -> Result<Option<usize>, Reason> {
    match cmdline::number(info.cmdline(), "blk_seg")? {
        None => Ok(None),
        Some(bytes)
            if bytes > 0 && bytes.is_multiple_of(SECTOR_SIZE) && bytes <= u64::from(u32::MAX) =>
        {
            Ok(Some(bytes as usize))
        }
        Some(bytes) => bail!("blk_seg={} is not a multiple of {}", bytes, SECTOR_SIZE),
    }
}

fn read_write(blk: &mut Blk<QUEUE_SIZE>, wbuf: &mut [u8], rbuf: &mut [u8]) -> Outcome {
    let c = blk.dev().config;
    let needed = ZEROES_SECTOR + ZEROES_SECTORS;
    if c.capacity < needed {
        bail!(
            "capacity {} sectors, the checks need {}",
            c.capacity,
            needed
        );
    }
    if blk.dev().features & feature::RO != 0 {
        bail!("device is read-only (use blk_mode=ro)");
    }

    // (a) The header the host test wrote.
    read_head(blk, rbuf)?;

    // (b) The pattern, 64 KiB per request.
    let chunk_sectors = (CHUNK_BYTES as u64) / SECTOR_SIZE;
    let mut sector = PATTERN_SECTOR;
    while sector < PATTERN_SECTOR + PATTERN_SECTORS {
        fill_pattern(wbuf, sector);
        let done = blk.request(kind::OUT, sector, wbuf, Dir::ToDevice)?;
        if done.status != STATUS_OK {
            bail!(
                "write of sectors {}+{}: status={}",
                sector,
                chunk_sectors,
                done.status
            );
        }
        sector += chunk_sectors;
    }

    // (c) Read back and compare, sector by sector.
    let mut sector = PATTERN_SECTOR;
    while sector < PATTERN_SECTOR + PATTERN_SECTORS {
        read(blk, sector, rbuf)?;
        if let Some(bad) = pattern_mismatch(rbuf, sector) {
            bail!("read back sector {}: not the pattern written", bad);
        }
        sector += chunk_sectors;
    }
    say!("blk write+read bytes={} ok", PATTERN_SECTORS * SECTOR_SIZE);

    // (d) Flush.
    if blk.dev().offers(feature::FLUSH) {
        let done = blk.request(kind::FLUSH, 0, &mut [], Dir::None)?;
        if done.status != STATUS_OK {
            bail!("flush: status={}", done.status);
        }
        say!("blk flush ok");
    } else {
        say!("blk flush unsupported");
    }

    // (e) One block past the end.
    let block = (c.blk_size as usize).max(SECTOR_SIZE as usize);
    let done = blk.request(kind::IN, c.capacity, &mut rbuf[..block], Dir::FromDevice)?;
    say!("blk beyond-end status={}", done.status);
    if done.status != STATUS_IOERR {
        bail!(
            "read at sector {} (capacity): status={}, want {}",
            c.capacity,
            done.status,
            STATUS_IOERR
        );
    }

    // (f) The serial.
    let done = blk.request(kind::GET_ID, 0, &mut rbuf[..ID_BYTES], Dir::FromDevice)?;
    match done.status {
        STATUS_OK => {
            let id = &rbuf[..ID_BYTES];
            let len = id.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
            say!("blk id={}", Printable(&id[..len]));
        }
        STATUS_UNSUPP => say!("blk id unsupported"),
        status => bail!("get-id: status={}", status),
    }

    // (g) Discard.
    if blk.dev().offers(feature::DISCARD) {
        let status = ranged(blk, kind::DISCARD, DISCARD_SECTOR, DISCARD_SECTORS, wbuf)?;
        say!("blk discard status={}", status);
        if status != STATUS_OK {
            bail!(
                "discard of sectors {}+{}: status={}",
                DISCARD_SECTOR,
                DISCARD_SECTORS,
                status
            );
        }
    }

    // (h) Write-zeroes over a pattern, then check the zeros.
    if blk.dev().offers(feature::WRITE_ZEROES) {
        let bytes = (ZEROES_SECTORS * SECTOR_SIZE) as usize;
        fill_pattern(&mut wbuf[..bytes], ZEROES_SECTOR);
        let done = blk.request(kind::OUT, ZEROES_SECTOR, &mut wbuf[..bytes], Dir::ToDevice)?;
        if done.status != STATUS_OK {
            bail!(
                "write of sectors {}+{}: status={}",
                ZEROES_SECTOR,
                ZEROES_SECTORS,
                done.status
            );
        }
        let status = ranged(blk, kind::WRITE_ZEROES, ZEROES_SECTOR, ZEROES_SECTORS, wbuf)?;
        say!("blk write-zeroes status={}", status);
        if status != STATUS_OK {
            bail!(
                "write-zeroes of sectors {}+{}: status={}",
                ZEROES_SECTOR,
                ZEROES_SECTORS,
                status
            );
        }
        read(blk, ZEROES_SECTOR, &mut rbuf[..bytes])?;
        if !qwords_equal(as_qwords(&mut rbuf[..bytes]), 0) {
            bail!(
                "sectors {}+{} are not zero after write-zeroes",
                ZEROES_SECTOR,
                ZEROES_SECTORS
            );
        }
    }
    Ok(())
}

fn read_only(blk: &mut Blk<QUEUE_SIZE>, wbuf: &mut [u8], rbuf: &mut [u8]) -> Outcome {
    if !blk.dev().offers(feature::RO) {
        bail!("device does not offer VIRTIO_BLK_F_RO");
    }
    let sector = &mut wbuf[..SECTOR_SIZE as usize];
    sector.fill(0xa5);
    let done = blk.request(kind::OUT, RO_WRITE_SECTOR, sector, Dir::ToDevice)?;
    say!("blk readonly write status={}", done.status);
    if done.status != STATUS_IOERR {
        bail!(
            "write to a read-only device: status={}, want {}",
            done.status,
            STATUS_IOERR
        );
    }
    read_head(blk, rbuf)
}

/// Reads the first sectors and prints their first 16 bytes.
fn read_head(blk: &mut Blk<QUEUE_SIZE>, rbuf: &mut [u8]) -> Outcome {
    read(blk, 0, &mut rbuf[..HEAD_BYTES])?;
    say!("blk head={}", Printable(&rbuf[..16]));
    Ok(())
}

/// Reads `buf.len()` bytes at `sector`; FAIL unless the status is OK and
/// the used length covers the data and the status byte.
fn read(blk: &mut Blk<QUEUE_SIZE>, sector: u64, buf: &mut [u8]) -> Outcome {
    let done = blk.request(kind::IN, sector, buf, Dir::FromDevice)?;
    if done.status != STATUS_OK {
        bail!(
            "read of {} bytes at sector {}: status={}",
            buf.len(),
            sector,
            done.status
        );
    }
    if done.len as usize != buf.len() + 1 {
        bail!(
            "read of {} bytes at sector {}: used length {}, want {}",
            buf.len(),
            sector,
            done.len,
            buf.len() + 1
        );
    }
    Ok(())
}

/// The 512-byte sector `sector` of the pattern: its number XOR
/// 0x5a5a5a5a5a5a5a5a, little endian, repeated.
fn sector_word(sector: u64) -> u64 {
    sector ^ PATTERN_XOR
}

/// Fills `buf` with the pattern of the sectors from `first`.
fn fill_pattern(buf: &mut [u8], first: u64) {
    for (i, sector) in as_qwords(buf)
        .chunks_exact_mut(SECTOR_SIZE as usize / 8)
        .enumerate()
    {
        fill_qwords(sector, sector_word(first + i as u64));
    }
}

/// The first sector of `buf` (holding sectors from `first`) that is not
/// the pattern.
fn pattern_mismatch(buf: &mut [u8], first: u64) -> Option<u64> {
    as_qwords(buf)
        .chunks_exact(SECTOR_SIZE as usize / 8)
        .enumerate()
        .find(|(i, words)| !qwords_equal(words, sector_word(first + *i as u64)))
        .map(|(i, _)| first + i as u64)
}

/// A discard or write-zeroes over `sectors` sectors from `sector`, in
/// requests of one segment each, as large as the device allows. Returns
/// the first non-OK status (or OK).
fn ranged(
    blk: &mut Blk<QUEUE_SIZE>,
    kind: u32,
    sector: u64,
    sectors: u64,
    buf: &mut [u8],
) -> Result<u8, Reason> {
    let c = blk.dev().config;
    let limit = match kind {
        kind::DISCARD => c.max_discard_sectors,
        _ => c.max_write_zeroes_sectors,
    };
    // 0: the device states no limit.
    let limit = if limit == 0 {
        sectors
    } else {
        u64::from(limit)
    };
    let mut start = sector;
    while start < sector + sectors {
        let count = limit.min(sector + sectors - start);
        let segment = &mut buf[..RANGE_SEGMENT_LEN];
        segment[..8].copy_from_slice(&start.to_le_bytes());
        segment[8..12].copy_from_slice(&(count as u32).to_le_bytes());
        // Flags: no unmap.
        segment[12..].copy_from_slice(&0u32.to_le_bytes());
        let done = blk.request(kind, 0, segment, Dir::ToDevice)?;
        if done.status != STATUS_OK {
            return Ok(done.status);
        }
        start += count;
    }
    Ok(STATUS_OK)
}

/// Bytes as text, `.` for anything but printable ASCII.
struct Printable<'a>(&'a [u8]);

impl core::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use core::fmt::Write;
        for &b in self.0 {
            f.write_char(if (0x20..0x7f).contains(&b) {
                char::from(b)
            } else {
                '.'
            })?;
        }
        Ok(())
    }
}
