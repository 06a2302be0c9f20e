//! The legacy 8259 PIC pair: moved off the exception vectors and masked, so
//! that firmware-enabled ISA interrupts (e.g. the PIT on IRQ0, which SeaBIOS
//! leaves at vector 8) cannot arrive once the probe enables interrupts.

use x86_64::instructions::port::Port;

const MASTER_COMMAND: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_COMMAND: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;
const ICW1_INIT_ICW4: u8 = 0x11;
const ICW4_8086: u8 = 0x01;

/// First vector of the master PIC after [`disable`]; the slave follows at +8.
pub const VECTOR_BASE: u8 = 0x20;

fn write(port: u16, value: u8) {
    // SAFETY: reprogramming the PICs only affects legacy interrupt delivery,
    // which the probe does not use.
    unsafe { Port::new(port).write(value) }
}

/// Remaps both PICs to [`VECTOR_BASE`]..+16 and masks every line. A spurious
/// IRQ 7/15 can still arrive there and must have a handler.
pub fn disable() {
    write(MASTER_COMMAND, ICW1_INIT_ICW4);
    write(SLAVE_COMMAND, ICW1_INIT_ICW4);
    write(MASTER_DATA, VECTOR_BASE);
    write(SLAVE_DATA, VECTOR_BASE + 8);
    write(MASTER_DATA, 1 << 2); // slave on IRQ2
    write(SLAVE_DATA, 2); // cascade identity
    write(MASTER_DATA, ICW4_8086);
    write(SLAVE_DATA, ICW4_8086);
    write(MASTER_DATA, 0xff);
    write(SLAVE_DATA, 0xff);
}
