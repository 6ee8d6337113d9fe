//! Values and mistakes as people read and write them: a duration in the units the
//! configuration and the declaration take (`365d`, `2m 35s`, `6s 250ms`), never months or years
//! (which `humantime` prints, and which nobody declared: `365d` came out as `11months 30days 3h
//! 50m 24s`); a deserializer's complaint without Rust's type names; the known word nearest to a
//! mistyped one. Pure; a duration it prints parses back as what it was.

use std::time::Duration;

/// `d`, `h`, `m`, `s` and `ms`, largest first, space-separated; `0s` for zero. Below a
/// millisecond: `us`, then `ns`.
pub fn duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let mut secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    let (ms, us, ns) = (nanos / 1_000_000, (nanos / 1_000) % 1_000, nanos % 1_000);
    for (n, unit) in [(ms, "ms"), (us, "us"), (ns, "ns")] {
        if n > 0 {
            parts.push(format!("{n}{unit}"));
        }
    }
    parts.join(" ")
}

/// A deserializer's words for what it expected, in a user's words: no Rust type names, and the
/// form a duration takes.
pub fn in_user_words(said: &str) -> String {
    let mut s = said.to_owned();
    for (rust, user) in [
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u16", "expected a whole number (0 or more)"),
        ("expected u8", "expected a whole number (0 or more)"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        (
            "expected a sequence",
            "expected a list (TOML: [\"A\", \"B\"]; environment: A,B)",
        ),
        ("expected a boolean", "expected true or false"),
        ("expected a map", "expected a table"),
    ] {
        s = s.replace(rust, user);
    }
    if s.contains("expected a duration") && !s.contains("250ms") {
        s.push_str(" (write it like 250ms, 30s, 5m, 7d)");
    }
    s.replace("expected one of `", "expected one of: `")
}

/// The known word nearest to an unknown one, if it is near enough to be a typo
/// (`filter_subject` → `filter_subjects`).
pub fn did_you_mean<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// An error with its causes, `a: b: c`, each said once (clients often wrap an error in one
/// that says the same).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistakes_are_told_in_a_users_words() {
        assert_eq!(
            in_user_words("invalid type: string \"x\", expected i64"),
            "invalid type: string \"x\", expected a whole number"
        );
        assert!(
            in_user_words("invalid value: string \"5 minutes\", expected a duration")
                .ends_with("(write it like 250ms, 30s, 5m, 7d)")
        );
        assert_eq!(
            did_you_mean("filter_subject", &["stream", "filter_subjects", "name"]),
            Some("filter_subjects")
        );
        assert_eq!(did_you_mean("zzz", &["stream", "name"]), None);
    }

    #[test]
    fn durations_come_out_in_the_units_they_were_written_in() {
        let s = Duration::from_secs;
        assert_eq!(duration(s(365 * 86_400)), "365d");
        assert_eq!(duration(s(7 * 86_400)), "7d");
        assert_eq!(duration(s(155)), "2m 35s");
        assert_eq!(duration(s(3_600 + 1)), "1h 1s");
        assert_eq!(duration(Duration::from_millis(6_250)), "6s 250ms");
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(Duration::from_nanos(1_500)), "1us 500ns");
        for d in [
            s(365 * 86_400),
            s(155),
            Duration::from_millis(6_250),
            s(90_061),
        ] {
            assert_eq!(
                humantime::parse_duration(&duration(d)).unwrap(),
                d,
                "{}",
                duration(d)
            );
        }
    }
}
