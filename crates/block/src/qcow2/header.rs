//! The qcow2 header (versions 2 and 3) and its extensions: parsing with
//! every field checked against the file and the caps, and serialising.

use super::{corrupt, Qcow2Error};

/// "QFI\xfb".
pub const MAGIC: u32 = 0x5146_49fb;
/// Length of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Length of the version 3 header this crate writes (with the compression type).
pub const V3_HEADER_LEN: u32 = 112;
/// Smallest and largest cluster size (bits) a qcow2 image may use.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size (bits): 2 MiB.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Most bytes of L1 table an image may have (QEMU's cap).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Most bytes of refcount table an image may have (QEMU's cap).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Longest backing file name.
pub const MAX_BACKING_NAME: u32 = 1023;
/// Most snapshots an image may list (QEMU's cap).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest guest size (QEMU's cap: 2^61 bytes).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;
/// Host offsets live in bits 9..=55 of table entries.
pub const MAX_HOST_OFFSET: u64 = (1 << 56) - 1;

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// The image was marked corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// An external data file holds the guest data.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// The compression type field is not zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// L2 entries are 128 bits with subcluster bitmaps.
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Incompatible bits this crate understands.
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION | INCOMPAT_EXTENDED_L2;
/// Compatible feature: refcounts may lag while the dirty bit is set.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_ENCRYPTION: u32 = 0x0537_be77;
/// Bitmaps extension (persistent dirty bitmaps).
pub const EXT_BITMAPS: u32 = 0x2385_2875;

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate (zlib without header), window 4 KiB.
    Zlib,
    /// Zstandard frames.
    Zstd,
}

impl CompressionType {
    /// The name qemu-img uses.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// A header extension this crate does not interpret, kept to be written back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawExtension {
    /// Extension type.
    pub kind: u32,
    /// Its data (without padding).
    pub data: Vec<u8>,
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Guest size in bytes.
    pub size: u64,
    /// L1 entries.
    pub l1_size: u32,
    /// Host offset of the L1 table.
    pub l1_table_offset: u64,
    /// Host offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of refcount table.
    pub refcount_table_clusters: u32,
    /// Snapshots in the snapshot table.
    pub nb_snapshots: u32,
    /// Host offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (0..=6).
    pub refcount_order: u32,
    /// Length of the header proper (before the extensions).
    pub header_length: u32,
    /// How compressed clusters are compressed.
    pub compression_type: CompressionType,
    /// Backing file name, as stored.
    pub backing_file: Option<String>,
    /// Backing file format (extension), as stored.
    pub backing_format: Option<String>,
    /// Extensions kept verbatim (feature name table, bitmaps, ...).
    pub other_extensions: Vec<RawExtension>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(v)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Whether L2 entries carry subcluster bitmaps.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTENDED_L2 != 0
    }

    /// Whether the image was left dirty (lazy refcounts not yet settled).
    pub fn dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    /// Whether the image was marked corrupt.
    pub fn corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }

    /// Whether lazy refcounts are enabled.
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    /// Parses the first cluster of an image (`first` holds at least the
    /// header, its extensions and the backing name, or the whole file when
    /// shorter). `file_len` bounds every offset.
    pub fn parse(first: &[u8], file_len: u64) -> Result<Header, Qcow2Error> {
        if first.len() < V2_HEADER_LEN as usize {
            return Err(corrupt("header", 0, "file shorter than a qcow2 header"));
        }
        if be32(first, 0) != MAGIC {
            return Err(corrupt("header", 0, "bad magic (not a qcow2 image)"));
        }
        let version = be32(first, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(first, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(corrupt(
                "header",
                20,
                format!("cluster_bits {cluster_bits} outside 9..=21"),
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        if be32(first, 32) != 0 {
            return Err(Qcow2Error::Unsupported("encrypted images".into()));
        }
        let mut h = Header {
            version,
            cluster_bits,
            size: be64(first, 24),
            l1_size: be32(first, 36),
            l1_table_offset: be64(first, 40),
            refcount_table_offset: be64(first, 48),
            refcount_table_clusters: be32(first, 56),
            nb_snapshots: be32(first, 60),
            snapshots_offset: be64(first, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: CompressionType::Zlib,
            backing_file: None,
            backing_format: None,
            other_extensions: Vec::new(),
        };
        if version == 3 {
            if first.len() < 104 {
                return Err(corrupt("header", 0, "file shorter than a v3 header"));
            }
            h.incompatible_features = be64(first, 72);
            h.compatible_features = be64(first, 80);
            h.autoclear_features = be64(first, 88);
            h.refcount_order = be32(first, 96);
            h.header_length = be32(first, 100);
            if h.header_length < 104 || h.header_length as usize > first.len() {
                return Err(corrupt(
                    "header",
                    100,
                    format!("header_length {} invalid", h.header_length),
                ));
            }
            if h.header_length % 8 != 0 && h.header_length > 104 {
                return Err(corrupt("header", 100, "header_length not a multiple of 8"));
            }
            let unknown = h.incompatible_features & !INCOMPAT_KNOWN;
            if h.incompatible_features & INCOMPAT_DATA_FILE != 0 {
                return Err(Qcow2Error::Unsupported("external data files".into()));
            }
            if unknown != 0 {
                return Err(Qcow2Error::Unsupported(format!(
                    "incompatible features {unknown:#x}"
                )));
            }
            if h.header_length > 104 {
                h.compression_type = match first[104] {
                    0 => CompressionType::Zlib,
                    1 => CompressionType::Zstd,
                    t => {
                        return Err(corrupt(
                            "header",
                            104,
                            format!("unknown compression type {t}"),
                        ))
                    }
                };
            }
            let flagged = h.incompatible_features & INCOMPAT_COMPRESSION != 0;
            if flagged != (h.compression_type != CompressionType::Zlib) {
                return Err(corrupt(
                    "header",
                    72,
                    "compression type and its incompatible bit disagree",
                ));
            }
            if h.refcount_order > 6 {
                return Err(corrupt(
                    "header",
                    96,
                    format!("refcount_order {} above 6", h.refcount_order),
                ));
            }
        }
        if h.size > MAX_VIRTUAL_SIZE {
            return Err(corrupt("header", 24, format!("size {} too large", h.size)));
        }
        h.check_table(
            "L1 table",
            40,
            h.l1_table_offset,
            h.l1_size as u64 * 8,
            file_len,
        )?;
        if h.l1_size as u64 * 8 > MAX_L1_BYTES {
            return Err(corrupt(
                "header",
                36,
                format!("L1 size {} above the cap", h.l1_size),
            ));
        }
        let l2_entries = cluster_size / h.l2_entry_bytes();
        let needed = h.size.div_ceil(cluster_size * l2_entries);
        if (h.l1_size as u64) < needed {
            return Err(corrupt(
                "header",
                36,
                format!("L1 size {} too small for {} bytes", h.l1_size, h.size),
            ));
        }
        let reftable_bytes = h.refcount_table_clusters as u64 * cluster_size;
        if reftable_bytes == 0 || reftable_bytes > MAX_REFTABLE_BYTES {
            return Err(corrupt(
                "header",
                56,
                format!(
                    "refcount table of {} clusters (0 or above the cap)",
                    h.refcount_table_clusters
                ),
            ));
        }
        h.check_table(
            "refcount table",
            48,
            h.refcount_table_offset,
            reftable_bytes,
            file_len,
        )?;
        if h.nb_snapshots > MAX_SNAPSHOTS {
            return Err(corrupt(
                "header",
                60,
                format!("{} snapshots above the cap", h.nb_snapshots),
            ));
        }
        if h.nb_snapshots > 0 {
            h.check_table("snapshot table", 64, h.snapshots_offset, 1, file_len)?;
        }
        h.parse_extensions(first)?;
        h.parse_backing_name(first)?;
        Ok(h)
    }

    /// Bytes per L2 entry.
    pub fn l2_entry_bytes(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }

    fn check_table(
        &self,
        what: &'static str,
        field: u64,
        offset: u64,
        len: u64,
        file_len: u64,
    ) -> Result<(), Qcow2Error> {
        if len == 0 {
            return Ok(());
        }
        if offset % self.cluster_size() != 0 {
            return Err(corrupt(
                what,
                offset,
                format!("offset (header field {field}) not cluster aligned"),
            ));
        }
        if offset == 0 || offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(corrupt(
                what,
                offset,
                format!(
                    "{len} bytes at header field {field} lie outside the file ({file_len} bytes)"
                ),
            ));
        }
        Ok(())
    }

    fn parse_extensions(&mut self, first: &[u8]) -> Result<(), Qcow2Error> {
        let limit = if self.backing_file_offset_raw(first) != 0 {
            (self.backing_file_offset_raw(first) as usize).min(first.len())
        } else {
            first.len()
        };
        let mut at = self.header_length as usize;
        loop {
            if at + 8 > limit {
                // Version 2 images may end the header without an end marker.
                return Ok(());
            }
            let kind = be32(first, at);
            let len = be32(first, at + 4) as usize;
            at += 8;
            if kind == EXT_END {
                return Ok(());
            }
            if at + len > limit {
                return Err(corrupt(
                    "header extension",
                    at as u64 - 8,
                    format!("extension {kind:#x} of {len} bytes runs past the first cluster"),
                ));
            }
            let data = &first[at..at + len];
            match kind {
                EXT_BACKING_FORMAT => {
                    self.backing_format = Some(
                        std::str::from_utf8(data)
                            .map_err(|_| {
                                corrupt("header extension", at as u64, "backing format not UTF-8")
                            })?
                            .to_string(),
                    )
                }
                EXT_DATA_FILE => return Err(Qcow2Error::Unsupported("external data files".into())),
                EXT_ENCRYPTION => return Err(Qcow2Error::Unsupported("encrypted images".into())),
                _ => self.other_extensions.push(RawExtension {
                    kind,
                    data: data.to_vec(),
                }),
            }
            at += len.div_ceil(8) * 8;
        }
    }

    fn backing_file_offset_raw(&self, first: &[u8]) -> u64 {
        be64(first, 8)
    }

    fn parse_backing_name(&mut self, first: &[u8]) -> Result<(), Qcow2Error> {
        let offset = be64(first, 8);
        let len = be32(first, 16);
        if offset == 0 {
            return Ok(());
        }
        if len == 0 || len > MAX_BACKING_NAME {
            return Err(corrupt(
                "backing file name",
                offset,
                format!("length {len} outside 1..={MAX_BACKING_NAME}"),
            ));
        }
        let end = offset
            .checked_add(len as u64)
            .filter(|e| *e <= first.len() as u64)
            .ok_or_else(|| {
                corrupt(
                    "backing file name",
                    offset,
                    "lies outside the first cluster",
                )
            })?;
        let name = std::str::from_utf8(&first[offset as usize..end as usize])
            .map_err(|_| corrupt("backing file name", offset, "not UTF-8"))?;
        self.backing_file = Some(name.to_string());
        Ok(())
    }

    /// Whether the header has the bitmaps extension (persistent bitmaps,
    /// which this crate does not maintain).
    pub fn has_bitmaps(&self) -> bool {
        self.other_extensions.iter().any(|e| e.kind == EXT_BITMAPS)
    }

    /// Serialises header, extensions and backing name into one cluster.
    pub fn serialize(&self) -> Result<Vec<u8>, Qcow2Error> {
        let cs = self.cluster_size() as usize;
        let mut out = Vec::with_capacity(cs);
        let header_length = if self.version == 2 {
            V2_HEADER_LEN
        } else {
            V3_HEADER_LEN
        };
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes()); // backing offset, patched below
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&self.cluster_bits.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&self.l1_size.to_be_bytes());
        out.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        out.extend_from_slice(&self.refcount_table_offset.to_be_bytes());
        out.extend_from_slice(&self.refcount_table_clusters.to_be_bytes());
        out.extend_from_slice(&self.nb_snapshots.to_be_bytes());
        out.extend_from_slice(&self.snapshots_offset.to_be_bytes());
        let mut incompat = self.incompatible_features;
        if self.compression_type == CompressionType::Zstd {
            incompat |= INCOMPAT_COMPRESSION;
        }
        if self.version == 3 {
            out.extend_from_slice(&incompat.to_be_bytes());
            out.extend_from_slice(&self.compatible_features.to_be_bytes());
            out.extend_from_slice(&self.autoclear_features.to_be_bytes());
            out.extend_from_slice(&self.refcount_order.to_be_bytes());
            out.extend_from_slice(&header_length.to_be_bytes());
            out.push(match self.compression_type {
                CompressionType::Zlib => 0,
                CompressionType::Zstd => 1,
            });
            out.resize(header_length as usize, 0);
        }
        let push_ext = |out: &mut Vec<u8>, kind: u32, data: &[u8]| {
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(8) * 8, 0);
        };
        if let Some(fmt) = &self.backing_format {
            push_ext(&mut out, EXT_BACKING_FORMAT, fmt.as_bytes());
        }
        for ext in &self.other_extensions {
            push_ext(&mut out, ext.kind, &ext.data);
        }
        push_ext(&mut out, EXT_END, &[]);
        if let Some(name) = &self.backing_file {
            if name.is_empty() || name.len() > MAX_BACKING_NAME as usize {
                return Err(Qcow2Error::Invalid(format!(
                    "backing file name of {} bytes",
                    name.len()
                )));
            }
            let at = out.len() as u64;
            out[8..16].copy_from_slice(&at.to_be_bytes());
            out[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        if out.len() > cs {
            return Err(Qcow2Error::Invalid(
                "header, extensions and backing name do not fit in one cluster".into(),
            ));
        }
        Ok(out)
    }
}

/// The names of the features this crate sets, for the feature name table.
pub fn feature_name_table() -> RawExtension {
    let mut data = Vec::new();
    let names: [(u8, u8, &str); 6] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
    ];
    for (kind, bit, name) in names {
        let mut entry = [0u8; 48];
        entry[0] = kind;
        entry[1] = bit;
        entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
        data.extend_from_slice(&entry);
    }
    RawExtension {
        kind: EXT_FEATURE_TABLE,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            cluster_bits: 16,
            size: 1 << 30,
            l1_size: 2,
            l1_table_offset: 3 << 16,
            refcount_table_offset: 1 << 16,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V3_HEADER_LEN,
            compression_type: CompressionType::Zstd,
            backing_file: Some("base.img".into()),
            backing_format: Some("raw".into()),
            other_extensions: vec![feature_name_table()],
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let bytes = h.serialize().unwrap();
        let back = Header::parse(&bytes, 1 << 20).unwrap();
        let mut expect = h.clone();
        expect.incompatible_features |= INCOMPAT_COMPRESSION;
        assert_eq!(back, expect);
    }

    fn parse_err(bytes: &[u8]) -> String {
        Header::parse(bytes, 1 << 20).unwrap_err().to_string()
    }

    #[test]
    fn malformed_headers_name_the_field() {
        let good = sample().serialize().unwrap();
        let mut b = good.clone();
        b[0] = 0;
        assert!(parse_err(&b).contains("bad magic"));
        let mut b = good.clone();
        b[23] = 30;
        assert!(parse_err(&b).contains("cluster_bits 30"));
        let mut b = good.clone();
        b[36..40].copy_from_slice(&0x1000_0000u32.to_be_bytes());
        assert!(parse_err(&b).contains("L1 table"), "{}", parse_err(&b));
        let mut b = good.clone();
        b[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(parse_err(&b).contains("outside the file"));
        let mut b = good.clone();
        b[56..60].copy_from_slice(&1000u32.to_be_bytes());
        assert!(parse_err(&b).contains("refcount table"));
        let mut b = good.clone();
        b[99] = 9;
        assert!(parse_err(&b).contains("refcount_order 9"));
        let mut b = good.clone();
        b[16..20].copy_from_slice(&5000u32.to_be_bytes());
        assert!(parse_err(&b).contains("backing file name"));
        let mut b = good.clone();
        b[75] |= 0x40;
        assert!(parse_err(&b).contains("unsupported"));
        let mut b = good.clone();
        // First extension (backing format) claims a huge length.
        b[116..120].copy_from_slice(&0xffffu32.to_be_bytes());
        assert!(parse_err(&b).contains("header extension"));
        assert!(parse_err(&good[..50]).contains("shorter"));
        let mut b = good.clone();
        b[104] = 7;
        assert!(parse_err(&b).contains("compression type 7"));
        let mut b = good;
        b[60..64].copy_from_slice(&1_000_000u32.to_be_bytes());
        assert!(parse_err(&b).contains("snapshots above the cap"));
    }
}
