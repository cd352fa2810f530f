//! Splits an `/embark` argument line into words, shell style:
//! whitespace separates words; `"double"` quotes allow `\"` and `\\` inside;
//! `'single'` quotes take everything literally; outside quotes a backslash
//! makes the next character literal. Quoted and unquoted parts that touch
//! form one word (`a"b c"` is `ab c`).

/// One word of the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    /// Some part of it was quoted or escaped: it is never read as a flag or subcommand.
    pub quoted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenizeError {
    #[error("unterminated {quote} quote starting at character {at}: close it with {quote}")]
    Unterminated { quote: char, at: usize },
}

pub fn tokenize(line: &str) -> Result<Vec<Token>, TokenizeError> {
    let mut tokens = Vec::new();
    let mut current: Option<Token> = None;
    let mut chars = line.chars().enumerate().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(token) = current.take() {
                    tokens.push(token);
                }
            }
            '\'' => {
                let token = current.get_or_insert_with(empty_quoted);
                token.quoted = true;
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, c)) => token.text.push(c),
                        None => return Err(TokenizeError::Unterminated { quote: '\'', at }),
                    }
                }
            }
            '"' => {
                let token = current.get_or_insert_with(empty_quoted);
                token.quoted = true;
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.peek() {
                            Some(&(_, next @ ('"' | '\\'))) => {
                                token.text.push(next);
                                chars.next();
                            }
                            // Other backslashes stay as typed (paths, regexes, `\n` in prose).
                            _ => token.text.push('\\'),
                        },
                        Some((_, c)) => token.text.push(c),
                        None => return Err(TokenizeError::Unterminated { quote: '"', at }),
                    }
                }
            }
            '\\' => {
                let token = current.get_or_insert_with(empty_quoted);
                match chars.next() {
                    Some((_, next)) => {
                        token.text.push(next);
                        token.quoted = true;
                    }
                    // A trailing backslash has nothing to escape: keep it.
                    None => token.text.push('\\'),
                }
            }
            c => current.get_or_insert_with(empty_plain).text.push(c),
        }
    }
    if let Some(token) = current {
        tokens.push(token);
    }
    Ok(tokens)
}

fn empty_quoted() -> Token {
    Token {
        text: String::new(),
        quoted: true,
    }
}

fn empty_plain() -> Token {
    Token {
        text: String::new(),
        quoted: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        tokenize(line).expect("tokenizes").into_iter().map(|t| t.text).collect()
    }

    #[test]
    fn whitespace_separates_words() {
        assert_eq!(words("  fix   the\ttest\n"), ["fix", "the", "test"]);
        assert!(words("   ").is_empty());
    }

    #[test]
    fn quotes_group_and_join() {
        assert_eq!(words(r#""fix it"  --model x"#), ["fix it", "--model", "x"]);
        assert_eq!(words("'a \"b\" c'"), ["a \"b\" c"]);
        assert_eq!(words(r#"a"b c"d"#), ["ab cd"]);
        assert_eq!(words(r#""" ''"#), ["", ""]);
    }

    #[test]
    fn backslashes_escape() {
        assert_eq!(words(r#""say \"hi\" \\ \n""#), [r#"say "hi" \ \n"#]);
        assert_eq!(words(r"a\ b \'c"), ["a b", "'c"]);
        assert_eq!(words(r"'no \escape'"), [r"no \escape"]);
        assert_eq!(words(r"end\"), [r"end\"]);
    }

    #[test]
    fn quoting_marks_the_token() {
        let tokens = tokenize(r#"--model "--model" \--x"#).expect("tokenizes");
        assert_eq!(tokens.iter().map(|t| t.quoted).collect::<Vec<_>>(), [false, true, true]);
    }

    #[test]
    fn unterminated_quotes_are_errors() {
        assert_eq!(
            tokenize(r#"fix "it"#),
            Err(TokenizeError::Unterminated { quote: '"', at: 4 })
        );
        assert_eq!(tokenize("'it"), Err(TokenizeError::Unterminated { quote: '\'', at: 0 }));
        assert!(tokenize(r#""a\""#).is_err());
    }
}
