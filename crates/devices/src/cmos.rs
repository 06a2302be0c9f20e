//! The CMOS RTC and NVRAM (ports 0x70/0x71): the host's UTC time, and the
//! memory-size bytes firmware conventionally leaves there.
//!
//! The guest may set the clock: time written while status B's SET bit is on
//! becomes an offset from the host clock when SET is cleared.

use std::time::{SystemTime, UNIX_EPOCH};

use vm_device::BusDevice;

/// The index port (0x71 is data).
pub const PORT: u64 = 0x70;
/// Ports claimed.
pub const LEN: u64 = 2;

const SECONDS: usize = 0x00;
const MINUTES: usize = 0x02;
const HOURS: usize = 0x04;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const STATUS_A: usize = 0x0a;
const STATUS_B: usize = 0x0b;
const STATUS_C: usize = 0x0c;
const STATUS_D: usize = 0x0d;
const CENTURY: usize = 0x32;
const B_SET: u8 = 0x80;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;

/// The CMOS chip.
pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    /// Seconds added to the host clock.
    offset: i64,
    now: fn() -> i64,
}

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4).saturating_mul(10).saturating_add(v & 0xf)
}

impl Cmos {
    /// A CMOS for a guest with `mem_below_4g` bytes of RAM under the MMIO hole
    /// and `mem_above_4g` bytes above 4 GiB.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Cmos {
        Cmos::with_clock(mem_below_4g, mem_above_4g, host_now)
    }

    fn with_clock(mem_below_4g: u64, mem_above_4g: u64, now: fn() -> i64) -> Cmos {
        let mut nvram = [0u8; 128];
        nvram[STATUS_A] = 0x26;
        nvram[STATUS_B] = B_24H;
        nvram[STATUS_D] = 0x80;
        // Base memory: 640 KiB.
        nvram[0x15] = 0x80;
        nvram[0x16] = 0x02;
        // Extended memory above 1 MiB in KiB, capped at 0xffff.
        let ext_kib = (mem_below_4g.saturating_sub(1 << 20) >> 10).min(0xffff) as u16;
        nvram[0x17..0x19].copy_from_slice(&ext_kib.to_le_bytes());
        nvram[0x30..0x32].copy_from_slice(&ext_kib.to_le_bytes());
        // Memory above 16 MiB in 64 KiB units.
        let above_16m = (mem_below_4g.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        nvram[0x34..0x36].copy_from_slice(&above_16m.to_le_bytes());
        // Memory above 4 GiB in 64 KiB units (24 bits).
        let high = (mem_above_4g >> 16).min(0xff_ffff) as u32;
        nvram[0x5b..0x5e].copy_from_slice(&high.to_le_bytes()[..3]);
        Cmos {
            index: 0,
            nvram,
            offset: 0,
            now,
        }
    }

    fn encode(&self, v: u8) -> u8 {
        if self.nvram[STATUS_B] & B_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.nvram[STATUS_B] & B_BINARY != 0 {
            v
        } else {
            from_bcd(v)
        }
    }

    fn guest_time(&self) -> i64 {
        (self.now)().saturating_add(self.offset)
    }

    fn time_register(&self, reg: usize) -> u8 {
        let t = self.guest_time();
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        match reg {
            SECONDS => self.encode((secs % 60) as u8),
            MINUTES => self.encode((secs / 60 % 60) as u8),
            HOURS => {
                let h = (secs / 3600) as u8;
                if self.nvram[STATUS_B] & B_24H != 0 {
                    self.encode(h)
                } else {
                    let pm = if h >= 12 { 0x80 } else { 0 };
                    let h12 = match h % 12 {
                        0 => 12,
                        x => x,
                    };
                    self.encode(h12) | pm
                }
            }
            WEEKDAY => self.encode(((days + 4).rem_euclid(7) + 1) as u8),
            DAY => self.encode(day as u8),
            MONTH => self.encode(month as u8),
            YEAR => self.encode(year.rem_euclid(100) as u8),
            CENTURY => self.encode(year.div_euclid(100).clamp(0, 99) as u8),
            _ => 0,
        }
    }

    /// Freezes the current time into NVRAM so that the guest can edit it.
    fn latch_time(&mut self) {
        for reg in [SECONDS, MINUTES, HOURS, DAY, MONTH, YEAR, CENTURY] {
            self.nvram[reg] = self.time_register(reg);
        }
    }

    /// Turns the time the guest wrote into an offset from the host clock.
    fn commit_time(&mut self) {
        let d = |r: usize| u32::from(self.decode(self.nvram[r]));
        let hour = if self.nvram[STATUS_B] & B_24H != 0 {
            d(HOURS)
        } else {
            let raw = self.nvram[HOURS];
            let h = u32::from(self.decode(raw & 0x7f)) % 12;
            h + if raw & 0x80 != 0 { 12 } else { 0 }
        };
        let year = i64::from(d(CENTURY)) * 100 + i64::from(d(YEAR));
        let (month, day) = (d(MONTH).clamp(1, 12), d(DAY).clamp(1, 31));
        let t = days_from_civil(year, month, day) * 86_400
            + i64::from(hour.min(23)) * 3600
            + i64::from(d(MINUTES).min(59)) * 60
            + i64::from(d(SECONDS).min(59));
        self.offset = t - (self.now)();
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(b) = data.first_mut() else { return };
        *b = match offset {
            0 => self.index,
            _ => {
                let reg = usize::from(self.index & 0x7f);
                match reg {
                    SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY
                        if self.nvram[STATUS_B] & B_SET == 0 =>
                    {
                        self.time_register(reg)
                    }
                    STATUS_C => std::mem::take(&mut self.nvram[STATUS_C]),
                    _ => self.nvram[reg],
                }
            }
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if offset == 0 {
            self.index = v;
            return;
        }
        let reg = usize::from(self.index & 0x7f);
        match reg {
            STATUS_B => {
                let was_set = self.nvram[STATUS_B] & B_SET != 0;
                if v & B_SET != 0 && !was_set {
                    self.latch_time();
                }
                self.nvram[STATUS_B] = v;
                if was_set && v & B_SET == 0 {
                    self.commit_time();
                }
            }
            STATUS_C | STATUS_D => {}
            STATUS_A => self.nvram[STATUS_A] = v & 0x7f,
            _ => self.nvram[reg] = v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-23 21:35:25 UTC, a Monday.
    const NOW: i64 = 1_795_469_725;

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0, &[reg]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    fn write(c: &mut Cmos, reg: u8, v: u8) {
        c.write(0, &[reg]);
        c.write(1, &[v]);
    }

    #[test]
    fn reads_bcd_time() {
        let mut c = Cmos::with_clock(512 << 20, 0, || NOW);
        assert_eq!(read(&mut c, 0x09), 0x26);
        assert_eq!(read(&mut c, 0x32), 0x20);
        assert_eq!(read(&mut c, 0x08), 0x11);
        assert_eq!(read(&mut c, 0x07), 0x23);
        assert_eq!(read(&mut c, 0x04), 0x21);
        assert_eq!(read(&mut c, 0x02), 0x35);
        assert_eq!(read(&mut c, 0x00), 0x25);
        assert_eq!(read(&mut c, 0x06), 2, "Monday is day 2");
    }

    #[test]
    fn binary_and_12h_modes() {
        let mut c = Cmos::with_clock(512 << 20, 0, || NOW);
        write(&mut c, 0x0b, B_BINARY);
        assert_eq!(read(&mut c, 0x09), 26);
        assert_eq!(read(&mut c, 0x04), 0x80 | 9, "9 PM");
    }

    #[test]
    fn guest_sets_the_clock() {
        let mut c = Cmos::with_clock(512 << 20, 0, || NOW);
        write(&mut c, 0x0b, B_SET | B_24H);
        write(&mut c, 0x09, 0x30);
        write(&mut c, 0x0b, B_24H);
        assert_eq!(read(&mut c, 0x09), 0x30);
        assert_eq!(read(&mut c, 0x08), 0x11);
        assert_eq!(
            c.offset,
            days_from_civil(2030, 11, 23) * 86_400 - (NOW - NOW % 86_400)
        );
    }

    #[test]
    fn memory_size_bytes() {
        let mut c = Cmos::with_clock(3 << 30, 1 << 30, || NOW);
        let above_16m = u16::from_le_bytes([read(&mut c, 0x34), read(&mut c, 0x35)]);
        assert_eq!(u64::from(above_16m), ((3u64 << 30) - (16 << 20)) >> 16);
        assert_eq!(read(&mut c, 0x5c), 0x40);
    }

    #[test]
    fn hostile_register_values_do_not_panic() {
        let mut c = Cmos::with_clock(16 << 20, 0, || NOW);
        for reg in 0..=255u8 {
            write(&mut c, 0x0b, B_SET);
            write(&mut c, reg, 0xff);
            write(&mut c, 0x0b, 0);
            read(&mut c, reg);
        }
        c.read(1, &mut []);
        c.write(1, &[]);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
