//! The VMDK text descriptor: `key=value` lines (createType, parent hints)
//! and extent lines (`RW 2048 SPARSE "disk-s001.vmdk"`), either as a file of
//! its own or embedded in a monolithic sparse file.

use std::io;

use crate::readonly::invalid;

/// The longest descriptor read (file or embedded).
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// The most extents one descriptor may list.
pub const MAX_EXTENTS: usize = 4096;

/// What the first line of a descriptor file says.
pub const DESCRIPTOR_SIGNATURE: &str = "# Disk DescriptorFile";

/// How an extent stores its sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// A hosted sparse file (KDMV header, grain directory and tables).
    Sparse,
    /// A flat file (`FLAT` or `VMFS`) read from a sector offset on.
    Flat,
    /// No file: the extent reads as zeros.
    Zero,
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// How the extent stores its sectors.
    pub kind: ExtentKind,
    /// Length in 512-byte sectors.
    pub sectors: u64,
    /// The file name as written (none for `ZERO`).
    pub file_name: Option<String>,
    /// Where a flat extent starts in its file, in sectors.
    pub start_sector: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `createType` (e.g. `monolithicSparse`, `twoGbMaxExtentFlat`).
    pub create_type: Option<String>,
    /// `parentFileNameHint`: set for a child (differencing) image.
    pub parent_file_name_hint: Option<String>,
    /// The extents in disk order.
    pub extents: Vec<ExtentLine>,
}

impl Descriptor {
    /// The disk size the extents add up to, in sectors.
    pub fn total_sectors(&self) -> io::Result<u64> {
        self.extents.iter().try_fold(0u64, |sum, e| {
            sum.checked_add(e.sectors)
                .ok_or_else(|| invalid("vmdk descriptor: the extent sizes overflow"))
        })
    }
}

/// Whether `text` starts like a descriptor file.
pub fn looks_like_descriptor(text: &[u8]) -> bool {
    text.starts_with(DESCRIPTOR_SIGNATURE.as_bytes())
}

fn unquote(value: &str) -> &str {
    let v = value.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// Parses descriptor text. `where_` names its origin for errors (e.g.
/// "vmdk descriptor at offset 0x200").
pub fn parse(bytes: &[u8], where_: &str) -> io::Result<Descriptor> {
    // An embedded descriptor is padded with NULs to its sector count.
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let text = std::str::from_utf8(&bytes[..end])
        .map_err(|e| invalid(format!("{where_}: not UTF-8 text ({e})")))?;
    let mut descriptor = Descriptor {
        create_type: None,
        parent_file_name_hint: None,
        extents: Vec::new(),
    };
    for (index, raw_line) in text.lines().enumerate() {
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| invalid(format!("{where_} line {}: {why}: {line:?}", index + 1));
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") && !line.starts_with(&format!("{first}="))
        {
            if descriptor.extents.len() >= MAX_EXTENTS {
                return Err(bad(&format!("more than {MAX_EXTENTS} extents")));
            }
            descriptor
                .extents
                .push(parse_extent(line).map_err(|why| bad(&why))?);
        } else if let Some((key, value)) = line.split_once('=') {
            match key.trim() {
                "createType" => descriptor.create_type = Some(unquote(value).to_owned()),
                "parentFileNameHint" => {
                    descriptor.parent_file_name_hint = Some(unquote(value).to_owned())
                }
                _ => {}
            }
        } else {
            return Err(bad("neither a key=value line nor an extent line"));
        }
    }
    Ok(descriptor)
}

/// Parses `ACCESS SECTORS TYPE ["NAME" [OFFSET]]`.
fn parse_extent(line: &str) -> Result<ExtentLine, String> {
    let mut rest = line;
    let mut word = || -> Option<&str> {
        let trimmed = rest.trim_start();
        let end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
        let (w, r) = trimmed.split_at(end);
        rest = r;
        (!w.is_empty()).then_some(w)
    };
    let access = word().ok_or("no access mode")?;
    if access == "NOACCESS" {
        return Err("NOACCESS extents are not supported".into());
    }
    let sectors: u64 = word()
        .ok_or("no extent size")?
        .parse()
        .map_err(|_| "the extent size is not a number".to_owned())?;
    let kind = match word().ok_or("no extent type")? {
        "SPARSE" => ExtentKind::Sparse,
        "FLAT" | "VMFS" => ExtentKind::Flat,
        "ZERO" => ExtentKind::Zero,
        other => return Err(format!("extent type {other} is not supported")),
    };
    let tail = rest.trim();
    if kind == ExtentKind::Zero {
        if !tail.is_empty() {
            return Err("a ZERO extent takes no file name".into());
        }
        return Ok(ExtentLine {
            kind,
            sectors,
            file_name: None,
            start_sector: 0,
        });
    }
    let quoted = tail
        .strip_prefix('"')
        .ok_or("the file name must be in double quotes")?;
    let close = quoted
        .find('"')
        .ok_or("the file name has no closing quote")?;
    let name = &quoted[..close];
    if name.is_empty() {
        return Err("empty file name".into());
    }
    let after = quoted[close + 1..].trim();
    let start_sector = match (kind, after) {
        (_, "") => 0,
        (ExtentKind::Flat, offset) => offset
            .parse()
            .map_err(|_| "the flat extent offset is not a number".to_owned())?,
        _ => return Err("unexpected text after the file name".into()),
    };
    Ok(ExtentLine {
        kind,
        sectors,
        file_name: Some(name.to_owned()),
        start_sector,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
createType=\"twoGbMaxExtentFlat\"\n\n# Extent description\nRW 4192256 FLAT \"a b-f001.vmdk\" 0\n\
RDONLY 2048 SPARSE \"s.vmdk\"\nRW 100 ZERO\nRW 8 VMFS \"v.img\" 16\n\n# The Disk Data Base\n#DDB\n\n\
ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"4161\"\n";

    #[test]
    fn parses_keys_and_extents() {
        let d = parse(SAMPLE.as_bytes(), "test").unwrap();
        assert_eq!(d.create_type.as_deref(), Some("twoGbMaxExtentFlat"));
        assert_eq!(d.parent_file_name_hint, None);
        assert_eq!(d.extents.len(), 4);
        assert_eq!(
            d.extents[0],
            ExtentLine {
                kind: ExtentKind::Flat,
                sectors: 4192256,
                file_name: Some("a b-f001.vmdk".into()),
                start_sector: 0
            }
        );
        assert_eq!(d.extents[1].kind, ExtentKind::Sparse);
        assert_eq!(d.extents[2].kind, ExtentKind::Zero);
        assert_eq!(d.extents[2].file_name, None);
        assert_eq!(d.extents[3].start_sector, 16);
        assert_eq!(d.total_sectors().unwrap(), 4192256 + 2048 + 100 + 8);
        assert!(looks_like_descriptor(SAMPLE.as_bytes()));
    }

    #[test]
    fn nul_padding_ends_the_text() {
        let mut bytes = SAMPLE.as_bytes().to_vec();
        bytes.resize(4096, 0);
        assert_eq!(parse(&bytes, "t").unwrap().extents.len(), 4);
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, want) in [
            ("RW x SPARSE \"a\"", "not a number"),
            ("RW 10 SPARSE a", "double quotes"),
            ("RW 10 SPARSE \"a", "closing quote"),
            ("RW 10 SPARSE \"\"", "empty file name"),
            ("RW 10 VMFSSPARSE \"a\"", "not supported"),
            ("NOACCESS 10 FLAT \"a\"", "NOACCESS"),
            ("RW 10 FLAT \"a\" zz", "offset is not a number"),
            ("RW 10 SPARSE \"a\" 5", "unexpected text"),
            ("RW 10 ZERO \"a\"", "no file name"),
            ("RW", "no extent size"),
            ("RW 10", "no extent type"),
            ("garbage line", "neither"),
        ] {
            let e = parse(
                format!("# Disk DescriptorFile\n{text}\n").as_bytes(),
                "desc",
            )
            .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            let msg = e.to_string();
            assert!(msg.contains(want), "{text}: {msg}");
            assert!(msg.starts_with("desc line 2"), "{msg}");
        }
        assert!(parse(&[0xff, 0xfe, b'a'], "d").is_err(), "not UTF-8");
    }

    #[test]
    fn extent_count_and_size_are_capped() {
        let mut text = String::new();
        for _ in 0..=MAX_EXTENTS {
            text.push_str("RW 1 ZERO\n");
        }
        assert!(parse(text.as_bytes(), "d")
            .unwrap_err()
            .to_string()
            .contains("extents"));
        let d = parse(
            format!("RW {} ZERO\nRW {} ZERO\n", u64::MAX, 1).as_bytes(),
            "d",
        )
        .unwrap();
        assert!(d.total_sectors().is_err());
    }

    #[test]
    fn parent_hint_is_seen() {
        let d = parse(b"parentFileNameHint=\"base.vmdk\"\nRW 1 ZERO\n", "d").unwrap();
        assert_eq!(d.parent_file_name_hint.as_deref(), Some("base.vmdk"));
    }
}
