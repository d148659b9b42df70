//! Kubernetes quantities (`10Gi`, `500M`, `250m`, `1e3`), as the API server reads them.

/// The value of a Kubernetes quantity (`10Gi`, `500M`, `1.5`, `1e3`), or `None` when malformed.
pub fn value(q: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .or_else(|| q.strip_suffix('P').map(|n| (n, 1e15)))
        .or_else(|| q.strip_suffix('E').map(|n| (n, 1e18)))
        .unwrap_or((q, 1.0));
    let plain = number.trim_start_matches(['+', '-']);
    let digits_ok = !plain.is_empty()
        && plain.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && plain
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !digits_ok {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(value("10Gi"), Some(10.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(value("500M"), Some(5e8));
        assert_eq!(value("1.5"), Some(1.5));
        assert_eq!(value("100m"), Some(0.1));
        assert_eq!(value("1e3"), Some(1000.0));
        for bad in ["", "Gi", "ten", "1 Gi", "1Gb", "--1"] {
            assert_eq!(value(bad), None, "{bad:?}");
        }
    }
}
