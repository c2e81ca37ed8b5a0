//! Go's `time.ParseDuration` and `Duration.String`, which HEALTHCHECK's
//! options and its history text go through.

const NANOSECOND: u64 = 1;
const MICROSECOND: u64 = 1_000 * NANOSECOND;
const MILLISECOND: u64 = 1_000 * MICROSECOND;
const SECOND: u64 = 1_000 * MILLISECOND;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

/// The largest magnitude Go's parser accumulates, `1<<63`.
const LIMIT: u64 = 1 << 63;

/// Parses `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+` into nanoseconds, with Go's
/// error messages (`time: invalid duration "x"`).
pub fn parse(text: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", quote(text));
    let mut s = text.as_bytes();
    let mut negative = false;
    if let Some((&sign @ (b'-' | b'+'), rest)) = s.split_first() {
        negative = sign == b'-';
        s = rest;
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(invalid());
        }
        let before = s.len();
        let (mut value, rest) = leading_int(s).ok_or_else(invalid)?;
        s = rest;
        let whole_digits = before != s.len();
        let mut fraction = (0, 1.0);
        let mut fraction_digits = false;
        if let Some((b'.', rest)) = s.split_first() {
            let before = rest.len();
            let (f, scale, rest) = leading_fraction(rest);
            fraction = (f, scale);
            fraction_digits = before != rest.len();
            s = rest;
        }
        if !whole_digits && !fraction_digits {
            return Err(invalid());
        }
        let unit_len = s
            .iter()
            .position(|c| *c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", quote(text)));
        }
        let (unit_text, rest) = s.split_at(unit_len);
        s = rest;
        let unit_text = String::from_utf8_lossy(unit_text);
        let unit = match unit_text.as_ref() {
            "ns" => NANOSECOND,
            "us" | "\u{b5}s" | "\u{3bc}s" => MICROSECOND,
            "ms" => MILLISECOND,
            "s" => SECOND,
            "m" => MINUTE,
            "h" => HOUR,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    quote(&unit_text),
                    quote(text)
                ));
            }
        };
        if value > LIMIT / unit {
            return Err(invalid());
        }
        value *= unit;
        let (f, scale) = fraction;
        if f > 0 {
            // Float, as in Go, to be exact to the nanosecond for fractions of hours.
            value += (f as f64 * (unit as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(invalid());
            }
        }
        total += value;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if negative {
        return Ok((total as i64).wrapping_neg());
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// The leading `[0-9]*` and the rest; none on overflow.
fn leading_int(s: &[u8]) -> Option<(u64, &[u8])> {
    let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut x: u64 = 0;
    for c in &s[..digits] {
        if x > LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(c - b'0');
        if x > LIMIT {
            return None;
        }
    }
    Some((x, &s[digits..]))
}

/// The leading `[0-9]*` of a fraction, its scale (10^digits kept) and the
/// rest; precision stops accumulating instead of overflowing.
fn leading_fraction(s: &[u8]) -> (u64, f64, &[u8]) {
    let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut x: u64 = 0;
    let mut scale = 1.0;
    let mut overflow = false;
    for c in &s[..digits] {
        if overflow {
            continue;
        }
        if x > (LIMIT - 1) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(c - b'0');
        if y > LIMIT {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[digits..])
}

/// The `quote` of Go's time package: `"` and `\` escaped, every byte of a
/// non-ASCII or control character as `\xNN`.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if !c.is_ascii() || c < ' ' {
            let mut bytes = [0; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// Go's `Duration.String` of a non-negative duration: `0s`, `1.5ms`,
/// `1m30s`, `2h0m0s`.
pub fn format(nanos: u64) -> String {
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < SECOND {
        let (unit, precision) = match nanos {
            n if n < MICROSECOND => ("ns", 0),
            n if n < MILLISECOND => ("\u{b5}s", 3),
            _ => ("ms", 6),
        };
        let (whole, fraction) = split_fraction(nanos, precision);
        return format!("{whole}{fraction}{unit}");
    }
    let (seconds, fraction) = split_fraction(nanos, 9);
    let (minutes, seconds) = (seconds / 60, seconds % 60);
    let (hours, minutes) = (minutes / 60, minutes % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}{fraction}s"),
        (0, _) => format!("{minutes}m{seconds}{fraction}s"),
        _ => format!("{hours}h{minutes}m{seconds}{fraction}s"),
    }
}

/// `v / 10^precision` and its fraction as `.ddd` without trailing zeros
/// (empty when zero), like Go's `fmtFrac`.
fn split_fraction(v: u64, precision: u32) -> (u64, String) {
    let scale = 10u64.pow(precision);
    let (whole, fraction) = (v / scale, v % scale);
    if fraction == 0 {
        return (whole, String::new());
    }
    let digits = format!("{fraction:0width$}", width = precision as usize);
    (whole, format!(".{}", digits.trim_end_matches('0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("-0", 0),
            ("30s", 30 * SECOND as i64),
            ("1m30s", 90 * SECOND as i64),
            ("1.5h", 5400 * SECOND as i64),
            ("500ms", 500 * MILLISECOND as i64),
            ("1us", 1_000),
            ("1\u{b5}s", 1_000),
            ("1\u{3bc}s", 1_000),
            ("7ns", 7),
            (".5s", 500 * MILLISECOND as i64),
            ("1.s", SECOND as i64),
            ("+2m", 120 * SECOND as i64),
            ("-1s", -(SECOND as i64)),
            ("1h1h", 2 * HOUR as i64),
            ("0.000000001s", 1),
            ("2562047h47m16.854775807s", i64::MAX),
            ("-2562047h47m16.854775808s", i64::MIN),
        ];
        for (text, nanos) in cases {
            assert_eq!(parse(text), Ok(*nanos), "{text}");
        }
    }

    #[test]
    fn errors_like_go() {
        assert_eq!(parse("").unwrap_err(), r#"time: invalid duration """#);
        assert_eq!(parse("-").unwrap_err(), r#"time: invalid duration "-""#);
        assert_eq!(parse("s").unwrap_err(), r#"time: invalid duration "s""#);
        assert_eq!(parse(".s").unwrap_err(), r#"time: invalid duration ".s""#);
        assert_eq!(
            parse("30").unwrap_err(),
            r#"time: missing unit in duration "30""#
        );
        assert_eq!(
            parse("3d").unwrap_err(),
            r#"time: unknown unit "d" in duration "3d""#
        );
        assert_eq!(
            parse("1 s").unwrap_err(),
            r#"time: unknown unit " s" in duration "1 s""#
        );
        assert_eq!(
            parse("9223372036854775808ns").unwrap_err(),
            r#"time: invalid duration "9223372036854775808ns""#
        );
        assert_eq!(
            parse("3000000h").unwrap_err(),
            r#"time: invalid duration "3000000h""#
        );
        assert_eq!(
            parse("1é").unwrap_err(),
            r#"time: unknown unit "\xc3\xa9" in duration "1\xc3\xa9""#
        );
    }

    #[test]
    fn formats_like_go() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1\u{b5}s"),
            (2_200_000, "2.2ms"),
            (500 * MILLISECOND, "500ms"),
            (SECOND, "1s"),
            (1_500 * MILLISECOND, "1.5s"),
            (90 * SECOND, "1m30s"),
            (HOUR, "1h0m0s"),
            (5400 * SECOND, "1h30m0s"),
            (HOUR + 1, "1h0m0.000000001s"),
            (i64::MAX as u64, "2562047h47m16.854775807s"),
        ];
        for (nanos, text) in cases {
            assert_eq!(format(*nanos), *text, "{nanos}");
        }
    }
}
