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

/// Rows changed against the rows estimated: `900,000 / 2,000,000`, but never a fraction whose
/// denominator is below its numerator: an estimate the work outgrew (more rows changed than
/// the table was estimated to hold, `2,000,000 / 1,983,738`) is said to be one,
/// `2,000,000 (table est. 1,983,738)`.
pub fn rows_of(done: i64, estimate: Option<i64>) -> String {
    match estimate {
        Some(total) if done > total => {
            format!("{} (table est. {})", thousands(done), thousands(total))
        }
        Some(total) => format!("{} / {}", thousands(done), thousands(total)),
        None => format!("{} / -", thousands(done)),
    }
}

/// A key as tables show it: a UUID by its first four hex digits (`0b7e…`), any other string
/// value longer than 16 characters cut to 15 and `…`; `--json` and `show` keep it whole.
pub fn short_key(key: &sluicegate::Key) -> String {
    let part = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) if is_uuid(s) => format!("{}…", &s[..4]),
        serde_json::Value::String(s) if s.chars().count() > 16 => {
            format!("{}…", s.chars().take(15).collect::<String>())
        }
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match key.values() {
        [v] => part(v),
        values => format!(
            "({})",
            values.iter().map(part).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
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

    #[test]
    fn rows_never_over_an_estimate_they_outgrew() {
        assert_eq!(rows_of(900_000, Some(2_000_000)), "900,000 / 2,000,000");
        assert_eq!(rows_of(2_000_000, Some(2_000_000)), "2,000,000 / 2,000,000");
        assert_eq!(
            rows_of(2_000_000, Some(1_983_738)),
            "2,000,000 (table est. 1,983,738)"
        );
        assert_eq!(rows_of(5, None), "5 / -");
    }

    #[test]
    fn keys_in_tables_are_short() {
        use sluicegate::Key;
        let uuid = Key(vec![serde_json::json!(
            "0b7e6c1e-9d1f-4c55-8a7e-2f1d3c4b5a69"
        )]);
        assert_eq!(short_key(&uuid), "0b7e…");
        assert_eq!(short_key(&Key::int(42)), "42");
        let pair = Key(vec![serde_json::json!(7), serde_json::json!(3)]);
        assert_eq!(short_key(&pair), "(7, 3)");
        let long = Key(vec![serde_json::json!("a-rather-long-text-key")]);
        assert_eq!(short_key(&long), "a-rather-long-t…");
        // Not a UUID (a hyphen out of place): only cut when long.
        let text = Key(vec![serde_json::json!("0b7e6c1e9d1f")]);
        assert_eq!(short_key(&text), "0b7e6c1e9d1f");
    }
}
