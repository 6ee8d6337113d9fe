//! Values as people read and write them: a duration in the units the configuration and the
//! declaration take (`365d`, `2m 35s`, `6s 250ms`), never months or years (which
//! `humantime` prints, and which nobody declared: `365d` came out as `11months 30days 3h 50m
//! 24s`). Pure; what it prints parses back as what it was.

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

#[cfg(test)]
mod tests {
    use super::*;

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
