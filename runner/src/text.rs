//! Bounding text at UTF-8 character boundaries.

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
    }
}
