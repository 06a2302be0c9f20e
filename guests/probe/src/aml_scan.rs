//! Byte-level searches in AML (DSDT) without an interpreter: the `\_S5`
//! package, `Device (PCI0)` declarations, the host bridge's `_CBA` (ECAM
//! base) and its `_CRS` memory windows.
//!
//! These only understand the static forms firmware uses for them
//! (`Name (_S5, Package () {...})`, `Name (_CRS, ResourceTemplate () {...})`,
//! `Name (_CBA, n)` or `Method (_CBA) { Return (n) }`); anything computed
//! is reported as missing.

use alloc::vec::Vec;

const NAME_OP: u8 = 0x08;
const METHOD_OP: u8 = 0x14;
const RETURN_OP: u8 = 0xa4;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const EXT_OP_PREFIX: u8 = 0x5b;
const DEVICE_OP: u8 = 0x82;
const ROOT_CHAR: u8 = b'\\';
const PARENT_PREFIX: u8 = b'^';
const DUAL_NAME_PREFIX: u8 = 0x2e;
const MULTI_NAME_PREFIX: u8 = 0x2f;

/// Resource descriptor item types (large items) and the small end tag.
const LARGE_WORD_ADDRESS: u8 = 0x08;
const LARGE_DWORD_ADDRESS: u8 = 0x07;
const LARGE_QWORD_ADDRESS: u8 = 0x0a;
const SMALL_END_TAG: u8 = 0x0f;
/// Address space descriptor resource types.
const RESOURCE_MEMORY: u8 = 0;
const RESOURCE_BUS: u8 = 2;

/// A memory range a host bridge forwards to PCI (`_CRS` address space
/// descriptor of resource type memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemWindow {
    pub base: u64,
    pub len: u64,
}

impl MemWindow {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.len)
    }
}

/// Decodes a PkgLength at `aml[at..]`: `(length, bytes used by the encoding)`.
fn pkg_length(aml: &[u8], at: usize) -> Option<(usize, usize)> {
    let lead = *aml.get(at)?;
    let extra = usize::from(lead >> 6);
    if extra == 0 {
        return Some((usize::from(lead & 0x3f), 1));
    }
    let mut len = usize::from(lead & 0x0f);
    for i in 0..extra {
        len |= usize::from(*aml.get(at + 1 + i)?) << (4 + 8 * i);
    }
    Some((len, 1 + extra))
}

/// Decodes a constant integer term at `aml[at..]`: `(value, bytes used)`.
fn integer(aml: &[u8], at: usize) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> {
        let bytes = aml.get(at + 1..at + 1 + n)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |v, &b| (v << 8) | u64::from(b)),
        )
    };
    match *aml.get(at)? {
        0x00 => Some((0, 1)),        // ZeroOp
        0x01 => Some((1, 1)),        // OneOp
        0xff => Some((u64::MAX, 1)), // OnesOp
        0x0a => Some((le(1)?, 2)),   // BytePrefix
        0x0b => Some((le(2)?, 3)),   // WordPrefix
        0x0c => Some((le(4)?, 5)),   // DWordPrefix
        0x0e => Some((le(8)?, 9)),   // QWordPrefix
        _ => None,
    }
}

/// Offsets just past every `Name (NAME, <op> ...)` whose data object starts
/// with `op`, where NAME is the single segment `name` (optionally rooted).
fn named_objects<'a>(aml: &'a [u8], name: &'a [u8; 4], op: u8) -> impl Iterator<Item = usize> + 'a {
    (1..aml.len().saturating_sub(4))
        .filter(move |&i| {
            if &aml[i..i + 4] != name || aml.get(i + 4) != Some(&op) {
                return false;
            }
            aml[i - 1] == NAME_OP || (aml[i - 1] == ROOT_CHAR && i >= 2 && aml[i - 2] == NAME_OP)
        })
        .map(|i| i + 5)
}

/// SLP_TYPa of `\_S5`: the first element of its package.
pub fn s5_slp_typa(aml: &[u8]) -> Option<u64> {
    named_objects(aml, b"_S5_", PACKAGE_OP).find_map(|at| {
        let (_, used) = pkg_length(aml, at)?;
        let num_elements = *aml.get(at + used)?;
        if num_elements == 0 {
            return None;
        }
        integer(aml, at + used + 1).map(|(value, _)| value)
    })
}

/// The ECAM base of the first `_CBA` object that is a constant or a method
/// returning one (QEMU microvm has no MCFG; its host bridge has `_CBA`).
pub fn config_base(aml: &[u8]) -> Option<u64> {
    (1..aml.len().saturating_sub(4))
        .filter(|&i| &aml[i..i + 4] == b"_CBA")
        .find_map(|i| {
            if aml[i - 1] == NAME_OP {
                return integer(aml, i + 4).map(|(value, _)| value);
            }
            // MethodOp PkgLength NameString MethodFlags ReturnOp Integer: the
            // PkgLength (1-4 bytes) must end right before the name.
            let is_method = (2..=5).filter_map(|back| i.checked_sub(back)).any(|op| {
                aml[op] == METHOD_OP
                    && pkg_length(aml, op + 1).is_some_and(|(_, used)| op + 1 + used == i)
            });
            if is_method && aml.get(i + 5) == Some(&RETURN_OP) {
                return integer(aml, i + 6).map(|(value, _)| value);
            }
            None
        })
}

/// Whether some `Device (...)` declaration's name ends in segment `name`.
pub fn declares_device(aml: &[u8], name: &[u8; 4]) -> bool {
    (0..aml.len().saturating_sub(1))
        .filter(|&i| aml[i] == EXT_OP_PREFIX && aml[i + 1] == DEVICE_OP)
        .any(|i| {
            pkg_length(aml, i + 2)
                .and_then(|(_, used)| last_name_segment(aml, i + 2 + used))
                .is_some_and(|segment| segment == name)
        })
}

/// The last NameSeg of the NameString at `aml[at..]`.
fn last_name_segment(aml: &[u8], mut at: usize) -> Option<&[u8]> {
    while matches!(aml.get(at), Some(&ROOT_CHAR) | Some(&PARENT_PREFIX)) {
        at += 1;
    }
    let segments = match *aml.get(at)? {
        DUAL_NAME_PREFIX => {
            at += 1;
            2
        }
        MULTI_NAME_PREFIX => {
            at += 2;
            usize::from(*aml.get(at - 1)?)
        }
        0 => return None,
        _ => 1,
    };
    let last = at + 4 * segments.checked_sub(1)?;
    aml.get(last..last + 4)
}

/// Memory windows of the first `Name (_CRS, ResourceTemplate ...)` that
/// lists a bus number range (that is, a PCI host bridge's), or `None` if
/// there is no such `_CRS`.
pub fn host_bridge_windows(aml: &[u8]) -> Option<Vec<MemWindow>> {
    named_objects(aml, b"_CRS", BUFFER_OP).find_map(|at| {
        let (pkg_len, used) = pkg_length(aml, at)?;
        let (size, size_used) = integer(aml, at + used)?;
        let start = at + used + size_used;
        let end = (at + pkg_len)
            .min(start.saturating_add(size as usize))
            .min(aml.len());
        parse_resources(aml.get(start..end)?)
    })
}

/// Walks a resource template: `Some(memory windows)` if it has a bus
/// number descriptor.
fn parse_resources(template: &[u8]) -> Option<Vec<MemWindow>> {
    let mut windows = Vec::new();
    let mut has_bus = false;
    let mut at = 0;
    while let Some(&tag) = template.get(at) {
        if tag & 0x80 == 0 {
            if (tag >> 3) & 0x0f == SMALL_END_TAG {
                break;
            }
            at += 1 + usize::from(tag & 0x07);
            continue;
        }
        let len = usize::from(u16::from_le_bytes([
            *template.get(at + 1)?,
            *template.get(at + 2)?,
        ]));
        let data = template.get(at + 3..at + 3 + len)?;
        let field = |offset: usize, size: usize| -> Option<u64> {
            let bytes = data.get(offset..offset + size)?;
            Some(
                bytes
                    .iter()
                    .rev()
                    .fold(0u64, |v, &b| (v << 8) | u64::from(b)),
            )
        };
        // Address space descriptors: type, flags, type flags, then
        // granularity, minimum, maximum, translation, length.
        let width = match tag & 0x7f {
            LARGE_WORD_ADDRESS => 2,
            LARGE_DWORD_ADDRESS => 4,
            LARGE_QWORD_ADDRESS => 8,
            _ => 0,
        };
        if width != 0 {
            match *data.first()? {
                RESOURCE_BUS => has_bus = true,
                RESOURCE_MEMORY => {
                    let base = field(3 + width, width)?;
                    let len = field(3 + 4 * width, width)?;
                    if len != 0 {
                        windows.push(MemWindow { base, len });
                    }
                }
                _ => {}
            }
        }
        at += 3 + len;
    }
    has_bus.then_some(windows)
}
