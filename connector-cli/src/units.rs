//! Human-friendly durations (`500ms`, `5s`, `2m`) and sizes (`64MiB`) for flags.

use std::time::Duration;

/// Parses `N`, `Nms`, `Ns`, `Nm` or `Nh` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 5s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// A duration that may be switched off (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

/// Parses `off` (or `0`) as no duration, anything else as [`parse_duration`] does.
pub fn parse_optional_duration(text: &str) -> Result<OptionalDuration, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(OptionalDuration(None));
    }
    let duration = parse_duration(text)?;
    Ok(OptionalDuration((!duration.is_zero()).then_some(duration)))
}

/// Parses a byte count: `N`, `NKiB`, `NMiB`, `NGiB` (also `K`, `M`, `G`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 64MiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use KiB, MiB or GiB)")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5x").is_err());
        assert_eq!(parse_optional_duration("off").unwrap(), OptionalDuration(None));
        assert_eq!(parse_optional_duration("0").unwrap(), OptionalDuration(None));
        assert_eq!(
            parse_optional_duration("4h").unwrap(),
            OptionalDuration(Some(Duration::from_secs(4 * 3600)))
        );
        assert!(parse_optional_duration("never").is_err());
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("-1").is_err());
    }
}
