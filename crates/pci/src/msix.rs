//! MSI-X: the capability, the vector table and the pending-bit array, with
//! masking. The table lives in a BAR; the device decides which.

/// MSI-X capability ID.
pub const CAPABILITY_ID: u8 = 0x11;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// The most vectors a function may have.
pub const MAX_VECTORS: u16 = 2048;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

/// An MSI message: what the device writes, and where, to interrupt a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (0xFEEx_xxxx for x86 LAPICs).
    pub address: u64,
    /// Message data (vector and delivery mode).
    pub data: u32,
}

/// Sends a device's MSI messages to the guest (KVM MSI routes and irqfds in
/// the VMM, a recorder in tests). One sender serves one device.
pub trait MsiSender: Send + Sync {
    /// Delivers `message`, the current content of table entry `vector`.
    fn send(&self, vector: u16, message: MsiMessage);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

impl Default for Entry {
    fn default() -> Entry {
        Entry {
            address_lo: 0,
            address_hi: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

/// What to do with an interrupt a device raises on a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Send this message now.
    Send(MsiMessage),
    /// The vector or function is masked: the pending bit is set instead.
    Pending,
    /// MSI-X is disabled or the vector does not exist: nothing happens.
    Dropped,
}

/// A function's MSI-X state.
#[derive(Debug, Clone)]
pub struct MsixTable {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    control: u16,
}

impl MsixTable {
    /// A table of `vectors` entries (1..=2048), all masked, MSI-X disabled.
    pub fn new(vectors: u16) -> MsixTable {
        let n = usize::from(vectors.clamp(1, MAX_VECTORS));
        MsixTable {
            entries: vec![Entry::default(); n],
            pending: vec![false; n],
            control: 0,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table has no vectors (never: at least one is created).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Size of the pending-bit array in bytes (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.entries.len().div_ceil(64) as u64 * 8
    }

    /// The capability body and its writable mask, for a table at
    /// `table_offset` in BAR `table_bar` and the PBA at `pba_offset` in `pba_bar`.
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut body = vec![CAPABILITY_ID, 0];
        body.extend_from_slice(&((self.entries.len() - 1) as u16).to_le_bytes());
        body.extend_from_slice(&(table_offset | u32::from(table_bar & 7)).to_le_bytes());
        body.extend_from_slice(&(pba_offset | u32::from(pba_bar & 7)).to_le_bytes());
        let mut writable = vec![0u8; body.len()];
        writable[3] = 0xc0; // enable and function mask
        (body, writable)
    }

    /// True when MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    /// Applies the message control value the guest wrote (from the capability);
    /// returns the vectors whose pending interrupts must be sent now.
    pub fn set_control(&mut self, control: u16) -> Vec<(u16, MsiMessage)> {
        self.control = control & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        self.flush_pending()
    }

    fn vector_live(&self, i: usize) -> bool {
        self.enabled()
            && self.control & CONTROL_FUNCTION_MASK == 0
            && self.entries[i].control & VECTOR_MASKED == 0
    }

    fn message(&self, i: usize) -> MsiMessage {
        let e = &self.entries[i];
        MsiMessage {
            address: u64::from(e.address_lo) | (u64::from(e.address_hi) << 32),
            data: e.data,
        }
    }

    fn flush_pending(&mut self) -> Vec<(u16, MsiMessage)> {
        let mut out = Vec::new();
        for i in 0..self.entries.len() {
            if self.pending[i] && self.vector_live(i) {
                self.pending[i] = false;
                out.push((i as u16, self.message(i)));
            }
        }
        out
    }

    /// Decides the fate of an interrupt on `vector`.
    pub fn deliver(&mut self, vector: u16) -> Delivery {
        let i = usize::from(vector);
        if i >= self.entries.len() || !self.enabled() {
            return Delivery::Dropped;
        }
        if self.vector_live(i) {
            Delivery::Send(self.message(i))
        } else {
            self.pending[i] = true;
            Delivery::Pending
        }
    }

    /// Guest read of the table; out-of-range or odd-sized reads return zeros.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((i, field)) = self.locate(offset, data.len()) else {
            return;
        };
        let e = &self.entries[i];
        let words = [e.address_lo, e.address_hi, e.data, e.control];
        if data.len() == 4 {
            data.copy_from_slice(&words[field].to_le_bytes());
        } else if data.len() == 8 && field % 2 == 0 {
            data[..4].copy_from_slice(&words[field].to_le_bytes());
            data[4..].copy_from_slice(&words[field + 1].to_le_bytes());
        }
    }

    /// Guest write of the table; returns the vectors that became deliverable
    /// and had interrupts pending (unmasking sends them).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<(u16, MsiMessage)> {
        let Some((i, field)) = self.locate(offset, data.len()) else {
            return Vec::new();
        };
        let mut words = Vec::new();
        if data.len() == 4 {
            words.push((
                field,
                u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            ));
        } else if data.len() == 8 && field % 2 == 0 {
            words.push((
                field,
                u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            ));
            words.push((
                field + 1,
                u32::from_le_bytes([data[4], data[5], data[6], data[7]]),
            ));
        }
        let e = &mut self.entries[i];
        for (f, v) in words {
            match f {
                0 => e.address_lo = v & !0x3,
                1 => e.address_hi = v,
                2 => e.data = v,
                _ => e.control = v & VECTOR_MASKED,
            }
        }
        self.flush_pending()
    }

    /// Guest read of the pending-bit array.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (k, b) in data.iter_mut().enumerate() {
            let byte = offset.saturating_add(k as u64);
            *b = (0..8u64)
                .filter(|bit| {
                    let i = byte.saturating_mul(8).saturating_add(*bit) as usize;
                    self.pending.get(i).copied().unwrap_or(false)
                })
                .fold(0u8, |acc, bit| acc | (1 << bit));
        }
    }

    /// (entry, dword field) of a 4- or 8-byte access at `offset`.
    fn locate(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        if !(len == 4 || len == 8) || offset % 4 != 0 {
            return None;
        }
        let i = usize::try_from(offset / ENTRY_SIZE).ok()?;
        if i >= self.entries.len() {
            return None;
        }
        Some((i, ((offset % ENTRY_SIZE) / 4) as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(
        t: &mut MsixTable,
        v: u64,
        addr: u32,
        data: u32,
        masked: bool,
    ) -> Vec<(u16, MsiMessage)> {
        t.write_table(v * 16, &addr.to_le_bytes());
        t.write_table(v * 16 + 4, &0u32.to_le_bytes());
        t.write_table(v * 16 + 8, &data.to_le_bytes());
        t.write_table(v * 16 + 12, &u32::from(masked).to_le_bytes())
    }

    #[test]
    fn delivery_follows_enable_and_masks() {
        let mut t = MsixTable::new(2);
        assert_eq!(t.deliver(0), Delivery::Dropped, "disabled");
        t.set_control(CONTROL_ENABLE);
        assert_eq!(t.deliver(0), Delivery::Pending, "vectors start masked");
        let fired = program(&mut t, 0, 0xfee0_0000, 0x41, false);
        assert_eq!(
            fired,
            vec![(
                0,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                }
            )],
            "unmasking sends the pending interrupt"
        );
        assert_eq!(
            t.deliver(0),
            Delivery::Send(MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            })
        );
        t.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        assert_eq!(t.deliver(0), Delivery::Pending);
        let mut pba = [0u8; 8];
        t.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1);
        assert_eq!(t.set_control(CONTROL_ENABLE).len(), 1);
        assert_eq!(t.deliver(7), Delivery::Dropped, "no such vector");
    }

    #[test]
    fn table_reads_and_hostile_accesses() {
        let mut t = MsixTable::new(3);
        program(&mut t, 2, 0xfee0_1003, 0x55, true);
        let mut b = [0u8; 4];
        t.read_table(32, &mut b);
        assert_eq!(
            u32::from_le_bytes(b),
            0xfee0_1000,
            "low address bits are reserved"
        );
        let mut q = [0u8; 8];
        t.read_table(40, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1_0000_0055);
        for (off, len) in [
            (1u64, 4usize),
            (48, 4),
            (u64::MAX - 3, 4),
            (0, 2),
            (4, 8),
            (0, 0),
        ] {
            let mut d = vec![0xaau8; len];
            t.read_table(off, &mut d);
            assert!(d.iter().all(|x| *x == 0));
            assert!(t.write_table(off, &d).is_empty());
        }
        let mut pba = [0u8; 16];
        t.read_pba(u64::MAX, &mut pba);
        let (cap, mask) = t.capability(0, 0x8000, 0, 0x9000);
        assert_eq!(cap.len(), 12);
        assert_eq!(&cap[2..4], &2u16.to_le_bytes());
        assert_eq!(mask[3], 0xc0);
        assert_eq!(MsixTable::new(0).len(), 1);
        assert_eq!(MsixTable::new(u16::MAX).len(), 2048);
    }
}
