//! Go's formatting and parsing rules that kube-apiserver's error texts depend on: `%q` quoting,
//! `encoding/json` string escaping, `time.ParseDuration`/`Duration.String`, and the parts of
//! `net/url.Parse` that can fail on a KMS endpoint.

/// Go's `strconv.Quote` (what `%q` prints for a string).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if is_print(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint`: graphic characters and the ASCII space.
fn is_print(c: char) -> bool {
    c == ' '
        || !(c.is_control()
            || c.is_whitespace()
            || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}'))
}

/// Go's `encoding/json` encoding of a string (HTML-safe escaping included, as `json.Marshal` does).
pub fn json_string(s: &str) -> String {
    crate::gojson::string(s)
}

/// Go's `time.ParseDuration`, in nanoseconds. The error text is Go's.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let orig = s;
    let invalid = || format!("time: invalid duration {}", quote(orig));
    let mut rest = s;
    let mut neg = false;
    if let Some(r) = rest.strip_prefix('-') {
        neg = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, r) = rest.split_at(digits);
        rest = r;
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..n];
            rest = &r[n..];
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(invalid());
            }
        } else if int_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, r) = rest.split_at(unit_len);
        rest = r;
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {}", quote(orig)));
        }
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    quote(unit),
                    quote(orig)
                ));
            }
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(invalid)?;
        // Fractions: Go keeps as many digits as fit and truncates.
        let mut frac_scale = scale;
        for d in frac_part.bytes() {
            frac_scale /= 10;
            if frac_scale == 0 {
                break;
            }
            value += u128::from(d - b'0') * frac_scale;
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
        if total > i64::MAX as u128 + u128::from(neg) {
            return Err(invalid());
        }
    }
    if neg {
        Ok((total as i128).wrapping_neg() as i64)
    } else {
        Ok(total as i64)
    }
}

/// Go's `time.Duration.String()`.
pub fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let neg = nanos < 0;
    let u = nanos.unsigned_abs();
    let mut s = if u < 1_000_000_000 {
        let (prec, unit) = if u < 1_000 {
            (0, "ns")
        } else if u < 1_000_000 {
            (3, "\u{b5}s")
        } else {
            (6, "ms")
        };
        let (int, frac) = split_frac(u, prec);
        format!("{int}{frac}{unit}")
    } else {
        let (secs, frac) = split_frac(u, 9);
        let mut out = format!("{}{frac}s", secs % 60);
        let mins = secs / 60;
        if mins > 0 {
            out = format!("{}m{out}", mins % 60);
            let hours = mins / 60;
            if hours > 0 {
                out = format!("{hours}h{out}");
            }
        }
        out
    };
    if neg {
        s.insert(0, '-');
    }
    s
}

/// `v / 10^prec` and the fraction as `.ddd` without trailing zeros (empty when zero).
fn split_frac(v: u64, prec: u32) -> (u64, String) {
    if prec == 0 {
        return (v, String::new());
    }
    let p = 10u64.pow(prec);
    let frac = v % p;
    if frac == 0 {
        return (v / p, String::new());
    }
    let digits = format!("{:0width$}", frac, width = prec as usize);
    (v / p, format!(".{}", digits.trim_end_matches('0')))
}

/// The scheme `net/url.Parse` would find (lower-cased), or Go's error text
/// (`parse "…": net/url: invalid control character in URL`, …).
pub fn url_scheme(raw: &str) -> Result<String, String> {
    let (u, frag) = match raw.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (raw, None),
    };
    let fail = |target: &str, msg: String| format!("parse {}: {msg}", quote(target));
    let scheme = parse_without_fragment(u).map_err(|m| fail(u, m))?;
    if let Some(frag) = frag {
        check_escapes(frag).map_err(|m| fail(raw, m))?;
    }
    Ok(scheme)
}

fn parse_without_fragment(u: &str) -> Result<String, String> {
    if u.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("net/url: invalid control character in URL".into());
    }
    if u == "*" {
        return Ok(String::new());
    }
    let (scheme, rest) = get_scheme(u)?;
    let scheme = scheme.to_ascii_lowercase();
    let rest = if rest.ends_with('?') && rest.matches('?').count() == 1 {
        &rest[..rest.len() - 1]
    } else {
        rest.split_once('?').map_or(rest, |(p, _)| p)
    };
    if !rest.starts_with('/') {
        if !scheme.is_empty() {
            return Ok(scheme); // an opaque URL such as `unix:relative.sock`
        }
        if rest.split('/').next().unwrap_or("").contains(':') {
            return Err("first path segment in URL cannot contain colon".into());
        }
    }
    let mut path = rest;
    if (!scheme.is_empty() || !rest.starts_with("///")) && rest.starts_with("//") {
        let authority_and_path = &rest[2..];
        let (authority, p) = match authority_and_path.find('/') {
            Some(i) => authority_and_path.split_at(i),
            None => (authority_and_path, ""),
        };
        check_authority(authority)?;
        path = p;
    }
    check_escapes(path)?;
    Ok(scheme)
}

fn get_scheme(u: &str) -> Result<(&str, &str), String> {
    for (i, c) in u.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                if i == 0 {
                    return Ok(("", u));
                }
            }
            b':' => {
                if i == 0 {
                    return Err("missing protocol scheme".into());
                }
                return Ok((&u[..i], &u[i + 1..]));
            }
            _ => return Ok(("", u)),
        }
    }
    Ok(("", u))
}

fn check_authority(authority: &str) -> Result<(), String> {
    let host = match authority.rfind('@') {
        Some(i) => {
            let userinfo = &authority[..i];
            let ok = userinfo
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:~!$&'()*+,;=%@".contains(c));
            if !ok {
                return Err("net/url: invalid userinfo".into());
            }
            check_escapes(userinfo)?;
            &authority[i + 1..]
        }
        None => authority,
    };
    let port = if host.starts_with('[') {
        match host.rfind(']') {
            Some(i) => &host[i + 1..],
            None => return Err("missing ']' in host".into()),
        }
    } else {
        match host.rfind(':') {
            Some(i) => &host[i..],
            None => "",
        }
    };
    if !port.is_empty() {
        let digits = port.strip_prefix(':');
        if digits.is_none_or(|d| !d.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("invalid port {} after host", quote(port)));
        }
    }
    check_escapes(host)
}

fn check_escapes(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                let end = (i + 3).min(b.len());
                return Err(format!("invalid URL escape {}", quote(&s[i..end])));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_like_go() {
        assert_eq!(quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quote("x\ny\u{1}"), r#""x\ny\x01""#);
        assert_eq!(quote("héllo"), "\"héllo\"");
    }

    #[test]
    fn json_like_go() {
        assert_eq!(json_string("a<b>&\"\n"), r#""a\u003cb\u003e\u0026\"\n""#);
    }

    #[test]
    fn durations_parse_and_print_like_go() {
        assert_eq!(parse_duration("3s"), Ok(3_000_000_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_duration("-1s"), Ok(-1_000_000_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("500ms"), Ok(500_000_000));
        assert_eq!(
            parse_duration("10"),
            Err("time: missing unit in duration \"10\"".into())
        );
        assert_eq!(
            parse_duration("1d"),
            Err("time: unknown unit \"d\" in duration \"1d\"".into())
        );
        assert_eq!(
            parse_duration("abc"),
            Err("time: invalid duration \"abc\"".into())
        );
        assert_eq!(
            parse_duration(""),
            Err("time: invalid duration \"\"".into())
        );
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(3_000_000_000), "3s");
        assert_eq!(format_duration(90_000_000_000), "1m30s");
        assert_eq!(format_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(format_duration(1_500_000), "1.5ms");
        assert_eq!(format_duration(-1_000_000_000), "-1s");
        assert_eq!(format_duration(1_200_000_000), "1.2s");
    }

    #[test]
    fn url_schemes_and_errors_like_go() {
        assert_eq!(url_scheme("unix:///tmp/kms.sock"), Ok("unix".into()));
        assert_eq!(url_scheme("UNIX:///@abstract"), Ok("unix".into()));
        assert_eq!(url_scheme("https://kms.example:443/x"), Ok("https".into()));
        assert_eq!(url_scheme("/tmp/kms.sock"), Ok(String::new()));
        assert_eq!(
            url_scheme("unix:///tmp/\u{1}kms.sock"),
            Err(
                "parse \"unix:///tmp/\\x01kms.sock\": net/url: invalid control character in URL"
                    .into()
            )
        );
        assert_eq!(
            url_scheme("://x"),
            Err("parse \"://x\": missing protocol scheme".into())
        );
        assert_eq!(
            url_scheme("unix:///tmp/%zz"),
            Err("parse \"unix:///tmp/%zz\": invalid URL escape \"%zz\"".into())
        );
        assert_eq!(
            url_scheme("tcp://host:port"),
            Err("parse \"tcp://host:port\": invalid port \":port\" after host".into())
        );
    }
}
