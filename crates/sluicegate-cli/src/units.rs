//! Numbers as people read them: thousands separators, binary sizes, short durations. Shared by
//! the terminal output and the dashboard.

use std::time::Duration;

/// An integer with thousands separators: `1,894,629`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// A size in bytes in binary units: `512 B`, `16 MiB`, `1 GiB`, `1.5 GiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Milliseconds as a person says them: `100 ms`, `30s`, `10m`, `1h30m`.
pub fn millis(ms: i64) -> String {
    if ms < 1000 {
        return format!("{ms} ms");
    }
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64))
        .to_string()
        .replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(thousands(1_894_629), "1,894,629");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(-1_000), "-1,000");
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(16 * 1024 * 1024), "16 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(millis(100), "100 ms");
        assert_eq!(millis(600_000), "10m");
        assert_eq!(millis(30_000), "30s");
        assert_eq!(millis(5_400_000), "1h30m");
    }
}
