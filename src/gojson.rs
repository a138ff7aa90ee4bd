//! JSON output formatted exactly like Go's `encoding/json`: `json.MarshalIndent(v, "", "  ")` is how RKE writes
//! cluster.rkestate (so a file atrest rewrites differs from RKE's only where a value changed), and Go's quoting
//! of strings is how kube-apiserver prints values in its validation errors.

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, PrettyFormatter};
use std::io::{self, Write};

/// Serializes `value` the way Go's `json.MarshalIndent(value, "", "  ")` does: two-space indent,
/// `"key": value`, no trailing newline, and Go's HTML-safe escaping of `<`, `>`, `&`, U+2028 and U+2029.
pub fn to_vec_go_indent<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(4096);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter::new());
    value.serialize(&mut ser)?;
    Ok(out)
}

/// `s` as Go's `json.Marshal` quotes it (HTML-safe escaping included).
pub fn string(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter::new());
    // Serializing a &str into a Vec cannot fail, and the output is UTF-8 because the input is.
    let _ = s.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

/// serde_json's pretty formatter plus the extra escapes Go's encoder applies by default.
struct GoFormatter<'a> {
    pretty: PrettyFormatter<'a>,
}

impl GoFormatter<'_> {
    fn new() -> Self {
        Self {
            pretty: PrettyFormatter::with_indent(b"  "),
        }
    }
}

/// Characters Go's encoder escapes although JSON does not require it (`encoding/json`, `HTMLEscape` on by default).
fn go_escape(c: char) -> Option<&'static [u8]> {
    match c {
        '<' => Some(b"\\u003c"),
        '>' => Some(b"\\u003e"),
        '&' => Some(b"\\u0026"),
        '\u{2028}' => Some(b"\\u2028"),
        '\u{2029}' => Some(b"\\u2029"),
        _ => None,
    }
}

impl Formatter for GoFormatter<'_> {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if let Some(escaped) = go_escape(c) {
                w.write_all(&fragment.as_bytes()[start..i])?;
                w.write_all(escaped)?;
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        self.pretty.write_char_escape(w, escape)
    }

    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.begin_array(w)
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.end_array(w)
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.pretty.begin_array_value(w, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.end_array_value(w)
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.begin_object(w)
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.end_object(w)
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.pretty.begin_object_key(w, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.begin_object_value(w)
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.end_object_value(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_go_marshal_indent_layout() {
        // Expected text is what Go 1.22's json.MarshalIndent(v, "", "  ") prints for the same value.
        let v = json!({"a": {}, "b": [], "c": [1, "x"], "d": {"e": null, "f": true}});
        let out = String::from_utf8(to_vec_go_indent(&v).unwrap()).unwrap();
        assert_eq!(
            out,
            "{\n  \"a\": {},\n  \"b\": [],\n  \"c\": [\n    1,\n    \"x\"\n  ],\n  \"d\": {\n    \"e\": null,\n    \"f\": true\n  }\n}"
        );
    }

    #[test]
    fn escapes_like_go() {
        let v = json!({"k<&>": "a<b>&c\u{2028}\u{2029}\n\"\\é\u{1}"});
        let out = String::from_utf8(to_vec_go_indent(&v).unwrap()).unwrap();
        assert_eq!(
            out,
            "{\n  \"k\\u003c\\u0026\\u003e\": \"a\\u003cb\\u003e\\u0026c\\u2028\\u2029\\n\\\"\\\\é\\u0001\"\n}"
        );
    }

    #[test]
    fn quotes_a_string_like_go() {
        // Go ≥ 1.22 writes \b and \f short; other control characters as \u00XX (lower-case hex).
        assert_eq!(
            string("x<y>&\"\\\u{1}\u{8}\u{c}\t\u{1f}é\u{2028}"),
            r#""x\u003cy\u003e\u0026\"\\\u0001\b\f\t\u001fé\u2028""#
        );
        assert_eq!(string(""), r#""""#);
    }
}
