//! The CMOS real-time clock (MC146818 at ports 0x70/0x71).

use crate::bail;
use crate::exit::Reason;
use core::fmt;
use x86_64::instructions::port::Port;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_CENTURY: u8 = 0x32;

const STATUS_A_UPDATING: u8 = 0x80;
const STATUS_B_24H: u8 = 0x02;
const STATUS_B_BINARY: u8 = 0x04;
const HOUR_PM: u8 = 0x80;
/// Bounds the wait for an update cycle (which takes < 2 ms).
const MAX_UIP_POLLS: u32 = 10_000;
const MAX_READS: u32 = 5;

/// A calendar date and time as the RTC reports it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

fn read_register(reg: u8) -> u8 {
    // SAFETY: selects a CMOS register (NMI stays enabled) and reads it; the
    // probe is the only CMOS user.
    unsafe {
        Port::new(0x70).write(reg);
        Port::new(0x71).read()
    }
}

fn raw_read(status_b: u8) -> Result<DateTime, Reason> {
    let binary = status_b & STATUS_B_BINARY != 0;
    let decode = |value: u8| {
        if binary {
            value
        } else {
            (value & 0x0f) + (value >> 4) * 10
        }
    };
    let hours = read_register(REG_HOURS);
    let mut hour = decode(hours & !HOUR_PM);
    if status_b & STATUS_B_24H == 0 {
        // 12-hour clock: 12 AM is 0h, PM adds 12.
        hour %= 12;
        if hours & HOUR_PM != 0 {
            hour += 12;
        }
    }
    let century = match decode(read_register(REG_CENTURY)) {
        c @ 19..=99 => u32::from(c),
        _ => 20,
    };
    let time = DateTime {
        year: century * 100 + u32::from(decode(read_register(REG_YEAR))),
        month: decode(read_register(REG_MONTH)),
        day: decode(read_register(REG_DAY)),
        hour,
        minute: decode(read_register(REG_MINUTES)),
        second: decode(read_register(REG_SECONDS)),
    };
    let valid = (1..=12).contains(&time.month)
        && (1..=31).contains(&time.day)
        && time.hour < 24
        && time.minute < 60
        && time.second < 60;
    if !valid {
        bail!("rtc returned an invalid time ({})", time);
    }
    Ok(time)
}

fn wait_not_updating() {
    for _ in 0..MAX_UIP_POLLS {
        if read_register(REG_STATUS_A) & STATUS_A_UPDATING == 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Reads the current date and time; two equal reads make a consistent one.
pub fn read() -> Result<DateTime, Reason> {
    let status_b = read_register(REG_STATUS_B);
    if status_b == 0xff {
        bail!("no cmos rtc (status b reads 0xff)");
    }
    wait_not_updating();
    let mut previous = raw_read(status_b)?;
    for _ in 0..MAX_READS {
        wait_not_updating();
        let current = raw_read(status_b)?;
        if current == previous {
            return Ok(current);
        }
        previous = current;
    }
    bail!("rtc did not settle")
}
