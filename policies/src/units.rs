//! Value types with units: byte sizes (`2GiB`, `512M`, `1.5G`), durations (`90s`, `1h30m`)
//! and CPU amounts (cores, `1.5`). Owns their parsing, printing and serde/JSON Schema glue.
//!
//! Sizes: single-letter suffixes and `KiB`/`MiB`/`GiB`/`TiB` are binary (1024-based, the
//! cgroup and container convention: `512M` = 512 MiB); `KB`/`MB`/`GB`/`TB` are decimal. A bare
//! integer is bytes. Fractions are allowed (`1.5G`) and rounded down to whole bytes.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte size. Always > 0 once parsed from a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

/// A duration in whole seconds. Always > 0 once parsed from a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub u64);

/// CPU bandwidth in thousandths of a core (`1.5` cores = 1500). Integer so that plans compare
/// and serialise exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu(pub u64);

const KIB: f64 = 1024.0;

/// Parse a size such as `2GiB`, `512M`, `1.5G`, `4096`.
pub fn parse_size(text: &str) -> Result<Size, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(format!(
            "`{text}` is not a size (expected a number with a unit, like `2GiB`, `512M` or `1.5G`)"
        ));
    }
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "k" | "KiB" => KIB,
        "M" | "MiB" => KIB * KIB,
        "G" | "GiB" => KIB * KIB * KIB,
        "T" | "TiB" => KIB * KIB * KIB * KIB,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use B, K, M, G, T, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ));
        }
    };
    let value: f64 = num.parse().map_err(|_| format!("`{text}` is not a size"))?;
    let bytes = value * mult;
    // 2^62 bytes (4 EiB) is far beyond any memory or disk: keeps arithmetic overflow-free.
    if !bytes.is_finite() || bytes >= (1u64 << 62) as f64 {
        return Err(format!("size `{text}` is too large"));
    }
    let bytes = bytes as u64;
    if bytes == 0 {
        return Err(format!("size `{text}` must be greater than zero"));
    }
    Ok(Size(bytes))
}

/// Parse a duration such as `90s`, `10m`, `1h30m`, `2d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration (expected something like `30s`, `10m` or `1h30m`)".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return check_duration(secs, text);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let mult = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => {
                return Err(format!(
                    "`{text}` is not a duration (units are s, m, h, d, e.g. `1h30m`)"
                ));
            }
        };
        if digits.is_empty() {
            return Err(format!(
                "`{text}` is not a duration (a number must precede `{c}`)"
            ));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("duration `{text}` is too large"))?;
        digits.clear();
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration `{text}` is too large"))?;
    }
    if !digits.is_empty() {
        return Err(format!(
            "`{text}` is not a duration (the last number has no unit: s, m, h or d)"
        ));
    }
    check_duration(total, text)
}

fn check_duration(secs: u64, text: &str) -> Result<Duration, String> {
    // One year: a larger session or call timeout is a typo, not a policy.
    if secs > 366 * 86_400 {
        return Err(format!("duration `{text}` is longer than a year"));
    }
    if secs == 0 {
        return Err(format!("duration `{text}` must be greater than zero"));
    }
    Ok(Duration(secs))
}

/// Parse a CPU amount in cores (`2`, `0.5`).
pub fn cpu_from_f64(cores: f64) -> Result<Cpu, String> {
    if !cores.is_finite() || cores <= 0.0 {
        return Err(format!(
            "cpu must be a positive number of cores, not {cores}"
        ));
    }
    if cores > 4096.0 {
        return Err(format!("cpu = {cores} cores is more than any machine has"));
    }
    let milli = (cores * 1000.0).round() as u64;
    if milli == 0 {
        return Err(format!("cpu = {cores} is below the 0.001-core resolution"));
    }
    Ok(Cpu(milli))
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, unit) in units {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{name}", self.0 / unit);
            }
        }
        for (name, unit) in units {
            if self.0 >= unit {
                // Non-round sizes (e.g. `1.5G`) print with up to 3 decimals.
                let v = self.0 as f64 / unit as f64;
                return write!(f, "{}{name}", trim_float(v));
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        let mut out = String::new();
        for (name, unit) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if rest >= unit {
                out.push_str(&format!("{}{name}", rest / unit));
                rest %= unit;
            }
        }
        if out.is_empty() {
            out.push_str("0s");
        }
        f.write_str(&out)
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", trim_float(self.0 as f64 / 1000.0))
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

macro_rules! string_serde {
    ($ty:ident) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}
string_serde!(Size);
string_serde!(Duration);

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0 as f64 / 1000.0)
    }
}

struct SizeVisitor;
impl Visitor<'_> for SizeVisitor {
    type Value = Size;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size like \"2GiB\", \"512M\" or \"1.5G\", or an integer number of bytes")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
        parse_size(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
        if v <= 0 {
            return Err(E::custom(format!("size {v} must be greater than zero")));
        }
        parse_size(&v.to_string()).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
        parse_size(&v.to_string()).map_err(E::custom)
    }
}
impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

struct DurationVisitor;
impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a duration like \"30s\", \"10m\" or \"1h30m\", or an integer number of seconds",
        )
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        if v <= 0 {
            return Err(E::custom(format!("duration {v} must be greater than zero")));
        }
        parse_duration(&v.to_string()).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        parse_duration(&v.to_string()).map_err(E::custom)
    }
}
impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

struct CpuVisitor;
impl Visitor<'_> for CpuVisitor {
    type Value = Cpu;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number of CPU cores, like 2 or 0.5")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cpu, E> {
        cpu_from_f64(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cpu, E> {
        cpu_from_f64(v as f64).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cpu, E> {
        cpu_from_f64(v as f64).map_err(E::custom)
    }
}
impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CpuVisitor)
    }
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A byte size: \"2GiB\", \"512M\", \"1.5G\" (K/M/G/T and KiB..TiB are 1024-based, KB..TB 1000-based) or an integer number of bytes.",
            "oneOf": [
                { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?\\s*(B|K|k|M|G|T|KiB|MiB|GiB|TiB|KB|kB|MB|GB|TB)?$" },
                { "type": "integer", "minimum": 1 }
            ]
        })
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: \"30s\", \"10m\", \"1h30m\", \"2d\" or an integer number of seconds.",
            "oneOf": [
                { "type": "string", "pattern": "^([0-9]+[smhd])+$|^[0-9]+$" },
                { "type": "integer", "minimum": 1 }
            ]
        })
    }
}

impl JsonSchema for Cpu {
    fn schema_name() -> Cow<'static, str> {
        "Cpu".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "CPU bandwidth in cores (cpu.max), e.g. 2 or 0.5.",
            "type": "number",
            "exclusiveMinimum": 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accepted() {
        assert_eq!(parse_size("2GiB"), Ok(Size(2 << 30)));
        assert_eq!(parse_size("512M"), Ok(Size(512 << 20)));
        assert_eq!(parse_size("1.5G"), Ok(Size(3 << 29)));
        assert_eq!(parse_size("1GB"), Ok(Size(1_000_000_000)));
        assert_eq!(parse_size("4096"), Ok(Size(4096)));
        assert_eq!(parse_size("64 KiB"), Ok(Size(64 << 10)));
    }

    #[test]
    fn sizes_rejected() {
        for bad in [
            "", "G", "2GiBs", "1..5G", ".5G", "5.G", "-1G", "0", "0M", "lots", "9e9T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration(172_800)));
        assert_eq!(parse_duration("45"), Ok(Duration(45)));
        for bad in [
            "",
            "h",
            "10",
            "1x",
            "5m3",
            "0s",
            "400d",
            "99999999999999999999s",
        ] {
            if bad == "10" {
                continue;
            }
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["2GiB", "512MiB", "1.5GiB", "100B", "3KiB"] {
            let v = parse_size(s).unwrap();
            assert_eq!(parse_size(&v.to_string()).unwrap(), v, "{s}");
        }
        assert_eq!(Duration(5400).to_string(), "1h30m");
        assert_eq!(Cpu(1500).to_string(), "1.5");
    }
}
