//! Sizes as qemu-img reads and prints them: `512`, `64k`, `1.5G`, and
//! "1 MiB (1048576 bytes)".

/// Parses a size with an optional k/M/G/T/P/E suffix (powers of 1024;
/// a `b` suffix or none means bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'b' => 0,
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                'e' => 60,
                _ => return Err(format!("invalid size suffix in '{s}'")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    if let Ok(v) = num.parse::<u64>() {
        return v
            .checked_mul(1u64 << shift)
            .ok_or_else(|| format!("size '{s}' is too large"));
    }
    let v: f64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    let bytes = v * (1u64 << shift) as f64;
    if !(0.0..1.8e19).contains(&bytes) || !bytes.is_finite() {
        return Err(format!("size '{s}' is out of range"));
    }
    Ok(bytes as u64)
}

/// Formats a size as qemu-img does: three significant digits and a binary unit.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let mut s = format!("{v:.digits$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s} {}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print_like_qemu_img() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        assert!(parse_size("12x").is_err());
        assert!(parse_size("99999999999E").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(human(1 << 20), "1 MiB");
        assert_eq!(human(200704), "196 KiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(100), "100 B");
    }
}
