//! The ACPI PM1a event and control registers and PM timer (at 0x600, where
//! QEMU's q35 puts them), and the reset control register at 0xCF9.
//!
//! A write of SLP_EN with the S5 sleep type powers the machine off. S5 is type
//! 0 on QEMU's q35 and 5 on Cloud Hypervisor; both are accepted so that
//! guests written for either power off here. Other sleep states are not
//! offered and are ignored.

use std::time::Instant;

use vm_device::BusDevice;

use crate::{GuestRequest, GuestRequestSink};

/// Base of the PM1 block.
pub const PM_BASE: u64 = 0x600;
/// Ports claimed: PM1a_EVT (4), PM1a_CNT (2), padding (2), PM_TMR (4).
pub const PM_LEN: u64 = 12;
/// The reset control register.
pub const RESET_PORT: u64 = 0xcf9;

const PM1_CNT_OFFSET: u64 = 4;
const PM_TMR_OFFSET: u64 = 8;
const SLP_EN: u16 = 1 << 13;
const SCI_EN: u16 = 1;
const PM_TIMER_HZ: u128 = 3_579_545;
const S5_TYPES: [u16; 2] = [0, 5];

/// The PM1a block.
pub struct PowerManagement {
    sink: GuestRequestSink,
    pm1_status: u16,
    pm1_enable: u16,
    pm1_control: u16,
    started: Instant,
    sci: Option<SciLine>,
    sci_level: bool,
}

/// Drives the ACPI SCI (ISA IRQ 9, level-triggered): `true` asserts it.
pub type SciLine = Box<dyn FnMut(bool) + Send>;

/// PM1 status and enable bit of the fixed-feature power button.
pub const PWRBTN: u16 = 1 << 8;

impl PowerManagement {
    /// A PM block reporting power-off to `sink`.
    pub fn new(sink: GuestRequestSink) -> PowerManagement {
        PowerManagement {
            sink,
            pm1_status: 0,
            pm1_enable: 0,
            pm1_control: SCI_EN,
            started: Instant::now(),
            sci: None,
            sci_level: false,
        }
    }

    /// Connects the SCI, which is asserted while an enabled status bit is set.
    pub fn set_sci(&mut self, sci: SciLine) {
        self.sci = Some(sci);
        self.update_sci();
    }

    /// Presses the fixed-feature power button: PWRBTN_STS is set and, if the
    /// guest enabled it, the SCI asserted until the guest clears the status.
    pub fn press_power_button(&mut self) {
        self.pm1_status |= PWRBTN;
        self.update_sci();
    }

    fn update_sci(&mut self) {
        let level = self.pm1_status & self.pm1_enable != 0 && self.pm1_control & SCI_EN != 0;
        if level != self.sci_level {
            self.sci_level = level;
            if let Some(sci) = self.sci.as_mut() {
                sci(level);
            }
        }
    }

    fn timer(&self) -> u32 {
        let ticks = self.started.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000;
        (ticks & 0xff_ffff) as u32
    }

    fn write_control(&mut self, value: u16) {
        self.pm1_control = value & !SLP_EN;
        let sleep_type = (value >> 10) & 0x7;
        if value & SLP_EN != 0 && S5_TYPES.contains(&sleep_type) {
            (self.sink)(GuestRequest::PowerOff);
        }
    }
}

/// Reads `width` little-endian bytes of `value` starting at byte `shift`.
fn put(data: &mut [u8], value: u64, shift: u64) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = value
            .checked_shr(((shift + i as u64) * 8) as u32)
            .unwrap_or(0) as u8;
    }
}

impl BusDevice for PowerManagement {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let regs = u64::from(self.pm1_status)
            | (u64::from(self.pm1_enable) << 16)
            | (u64::from(self.pm1_control) << 32);
        if offset >= PM_TMR_OFFSET {
            put(data, u64::from(self.timer()), offset - PM_TMR_OFFSET);
        } else {
            put(data, regs, offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        let n = data.len().min(8);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u64::from_le_bytes(bytes);
        match (offset, n) {
            (0, 2) | (0, 4) => {
                // Write-one-to-clear status; enable in the upper half of a dword write.
                self.pm1_status &= !(value as u16);
                if n == 4 {
                    self.pm1_enable = (value >> 16) as u16;
                }
            }
            (2, 2) => self.pm1_enable = value as u16,
            (PM1_CNT_OFFSET, 2) | (PM1_CNT_OFFSET, 4) => self.write_control(value as u16),
            (PM1_CNT_OFFSET, 1) => self.write_control((self.pm1_control & 0xff00) | value as u16),
            (5, 1) => self.write_control((self.pm1_control & 0xff) | ((value as u16) << 8)),
            _ => {}
        }
        self.update_sci();
    }
}

/// The reset control register: writing bit 2 (RST_CPU) resets the machine.
pub struct ResetControl {
    sink: GuestRequestSink,
    value: u8,
}

impl ResetControl {
    /// A reset register reporting to `sink`.
    pub fn new(sink: GuestRequestSink) -> ResetControl {
        ResetControl { sink, value: 0 }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.value;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            self.value = b & 0x0a;
            if b & 0x04 != 0 {
                (self.sink)(GuestRequest::Reset);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn recorder() -> (GuestRequestSink, Arc<Mutex<Vec<GuestRequest>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (Arc::new(move |r| s.lock().unwrap().push(r)), seen)
    }

    #[test]
    fn s5_powers_off_for_qemu_and_ch_sleep_types() {
        let (sink, seen) = recorder();
        let mut pm = PowerManagement::new(sink);
        pm.write(4, &0x2000u16.to_le_bytes());
        pm.write(4, &0x3400u16.to_le_bytes());
        pm.write(4, &0x2400u16.to_le_bytes()); // S1: not offered, ignored
        pm.write(4, &0x0001u16.to_le_bytes()); // no SLP_EN
        assert_eq!(*seen.lock().unwrap(), vec![GuestRequest::PowerOff; 2]);
        let mut b = [0u8; 2];
        pm.read(4, &mut b);
        assert_eq!(u16::from_le_bytes(b) & SLP_EN, 0);
    }

    #[test]
    fn timer_advances_and_odd_accesses_are_harmless() {
        let (sink, seen) = recorder();
        let mut pm = PowerManagement::new(sink);
        let mut t0 = [0u8; 4];
        pm.read(8, &mut t0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut t1 = [0u8; 4];
        pm.read(8, &mut t1);
        assert!(u32::from_le_bytes(t1) > u32::from_le_bytes(t0));
        for off in 0..PM_LEN {
            pm.write(off, &[0; 3]);
            pm.write(off, &[]);
            pm.read(off, &mut [0u8; 8]);
        }
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn power_button_raises_and_lowers_the_sci() {
        let (sink, _) = recorder();
        let levels = Arc::new(Mutex::new(Vec::new()));
        let l = levels.clone();
        let mut pm = PowerManagement::new(sink);
        pm.set_sci(Box::new(move |level| l.lock().unwrap().push(level)));
        pm.press_power_button();
        assert!(levels.lock().unwrap().is_empty(), "not enabled yet: no SCI");
        pm.write(2, &PWRBTN.to_le_bytes());
        assert_eq!(
            *levels.lock().unwrap(),
            vec![true],
            "enabling a pending event asserts the SCI"
        );
        let mut sts = [0u8; 2];
        pm.read(0, &mut sts);
        assert_eq!(u16::from_le_bytes(sts) & PWRBTN, PWRBTN);
        pm.write(0, &PWRBTN.to_le_bytes());
        assert_eq!(
            *levels.lock().unwrap(),
            vec![true, false],
            "clearing the status lowers it"
        );
        pm.press_power_button();
        assert_eq!(*levels.lock().unwrap(), vec![true, false, true]);
    }

    #[test]
    fn reset_register() {
        let (sink, seen) = recorder();
        let mut r = ResetControl::new(sink);
        r.write(0, &[0x02]);
        r.write(0, &[0x06]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestRequest::Reset]);
    }
}
