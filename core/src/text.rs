//! Text for people built from input of any size: bounded at UTF-8 character
//! boundaries, so a message never quotes a huge (or secret) value whole.

use std::error::Error;
use std::ops::Range;

/// How many bytes of an offending value an error message quotes.
pub const QUOTE_BYTES: usize = 80;

/// The first at most `max` bytes of `text`, and whether anything was cut.
pub fn head(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

/// The last at most `max` bytes of `text`, prefixed with `…` when cut.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// The first at most `max` bytes of `text`, followed by `…` when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    match head(text, max) {
        (whole, false) => whole.to_owned(),
        (cut, true) => format!("{cut}…"),
    }
}

/// A value as an error message quotes it: its first [`QUOTE_BYTES`] bytes.
pub fn quote(value: &str) -> String {
    excerpt(value, QUOTE_BYTES)
}

/// An error and its causes as one line, `a: b: c`, skipping a cause whose
/// text its parent already holds. For logs; binaries print with anyhow's
/// `{:#}`, which walks the same chain.
pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Where a parser failed in `source` and what it said, for a config file
/// that may hold secrets: `line L, column C: message`.
///
/// The offending source text is never quoted, and when the parser's message
/// repeats the value at `span` (serde's "invalid type: integer `…`" does,
/// e.g. for an unquoted numeric secret), that value is cut out of it.
pub fn parse_error_detail(source: &str, span: Option<Range<usize>>, message: &str) -> String {
    let message = message.trim();
    // `str::get` refuses a span that is reversed, out of range or off a character boundary.
    let Some((start, offending)) = span.and_then(|span| Some((span.start, source.get(span)?))) else {
        return message.to_owned();
    };
    let mut message = message.to_owned();
    let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
    let is_value = source[line_start..start].contains('=');
    if is_value {
        let bare = offending.trim().trim_matches(['"', '\'']);
        // A short value cannot be a secret; cutting it could mangle the words around it.
        if bare.len() >= 4 {
            message = message.replace(bare, "…");
        }
    }
    let line = source[..start].matches('\n').count() + 1;
    let column = source[line_start..start].chars().count() + 1;
    format!("line {line}, column {column}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_char_boundaries() {
        assert_eq!(head("héllo", 2), ("h", true));
        assert_eq!(head("abc", 3), ("abc", false));
        assert_eq!(tail("abcdé", 2), "…é");
        assert_eq!(tail("abcdé", 1), "…");
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(excerpt("ééé", 3), "é…");
        assert_eq!(excerpt("abc", 5), "abc");
        assert_eq!(quote(&"x".repeat(1000)).len(), QUOTE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn chains_skip_repeated_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("outer: inner")]
        struct Repeats(#[source] std::io::Error);
        let inner = || std::io::Error::other("inner");
        assert_eq!(error_chain(&Outer(inner())), "outer: inner");
        assert_eq!(error_chain(&Repeats(inner())), "outer: inner");
    }

    #[test]
    fn parse_errors_point_at_the_place_and_never_repeat_the_value() {
        let source = "a = 1\nsecret = 1234567890123456\n";
        let start = source.find("1234").expect("value");
        let detail = parse_error_detail(
            source,
            Some(start..start + 16),
            "invalid type: integer `1234567890123456`, expected a string",
        );
        assert_eq!(
            detail,
            "line 2, column 10: invalid type: integer `…`, expected a string"
        );
        // A key's name stays: it is what the user has to fix.
        let detail = parse_error_detail("sekret = \"x\"\n", Some(0..6), "unknown field `sekret`");
        assert_eq!(detail, "line 1, column 1: unknown field `sekret`");
        assert_eq!(parse_error_detail("x", None, " no span \n"), "no span");
        assert_eq!(parse_error_detail("x", Some(5..9), "bad span"), "bad span");
    }
}
