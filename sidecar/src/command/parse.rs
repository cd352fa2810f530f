//! From words to a typed [`Command`].

use super::tokenize::{Token, tokenize};
use super::{Command, SubmitArgs, TaskSelector, USAGE};

/// What is wrong with an `/embark` line; the message says how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    fn with_usage(message: impl std::fmt::Display) -> Self {
        Self(format!("{message}\n\n{USAGE}"))
    }
}

/// Shortest task id prefix `status` accepts.
pub const MIN_ID_PREFIX: usize = 4;

pub fn parse(line: &str) -> Result<Command, UsageError> {
    let tokens = tokenize(line).map_err(|e| UsageError(e.to_string()))?;
    let Some(first) = tokens.first() else {
        return Ok(Command::Help);
    };
    if wants_help(&tokens) {
        return Ok(Command::Help);
    }
    let rest = &tokens[1..];
    if first.quoted {
        return parse_submit(&tokens, false);
    }
    match first.text.as_str() {
        "help" => match rest.first() {
            None => Ok(Command::Help),
            Some(_) => Err(UsageError(
                "`help` takes no arguments; to submit a prompt that starts with \"help\", quote it: /embark \"help …\""
                    .into(),
            )),
        },
        "status" => parse_status(rest),
        "submit" => parse_submit(rest, true),
        _ => parse_submit(&tokens, false),
    }
}

/// `--help` or `-h` before any `--`, unquoted.
fn wants_help(tokens: &[Token]) -> bool {
    tokens
        .iter()
        .take_while(|t| t.quoted || t.text != "--")
        .any(|t| !t.quoted && (t.text == "--help" || t.text == "-h"))
}

fn parse_status(args: &[Token]) -> Result<Command, UsageError> {
    let selector = match args {
        [] => TaskSelector::Latest,
        [one] if one.text.starts_with("--") && !one.quoted => {
            return Err(UsageError::with_usage(format!("`status` has no flag {}", one.text)));
        }
        [one] if one.text == "latest" => TaskSelector::Latest,
        [one] => TaskSelector::Prefix(task_prefix(&one.text)?),
        [_, extra, ..] => {
            return Err(UsageError(format!(
                "`status` takes one task id at most, got an extra {:?}: /embark status [latest|<id>]",
                extra.text
            )));
        }
    };
    Ok(Command::Status(selector))
}

/// A task id or prefix, normalised to lowercase hex without dashes.
fn task_prefix(text: &str) -> Result<String, UsageError> {
    let hex: String = text
        .chars()
        .filter(|&c| c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() < MIN_ID_PREFIX || hex.len() > 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UsageError(format!(
            "{text:?} is not a task id: give `latest` or at least {MIN_ID_PREFIX} hex digits of an id (the short id `/embark status` shows)"
        )));
    }
    Ok(hex)
}

fn parse_submit(tokens: &[Token], explicit: bool) -> Result<Command, UsageError> {
    let mut args = SubmitArgs::default();
    let mut words: Vec<&Token> = Vec::new();
    let mut flags_ended = false;
    let mut iter = tokens.iter();
    while let Some(token) = iter.next() {
        if flags_ended || token.quoted || !token.text.starts_with("--") {
            words.push(token);
            continue;
        }
        if token.text == "--" {
            flags_ended = true;
            continue;
        }
        let (name, inline) = match token.text[2..].split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (&token.text[2..], None),
        };
        let slot = match name {
            "profile" => &mut args.profile,
            "provider" => &mut args.provider,
            "model" => &mut args.model,
            _ => return Err(UsageError::with_usage(format!("unknown flag --{name}"))),
        };
        let value = match inline {
            Some(value) => value,
            None => match iter.next() {
                Some(next) if next.quoted || !next.text.starts_with("--") => next.text.clone(),
                _ => {
                    return Err(UsageError(format!("--{name} needs a value: --{name} <name>")));
                }
            },
        };
        if slot.is_some() {
            return Err(UsageError(format!("--{name} is given twice; keep one")));
        }
        *slot = Some(value);
    }
    // A lone unquoted word is more likely a mistyped subcommand than a prompt.
    if let [word] = words.as_slice()
        && !word.quoted
        && !explicit
    {
        return Err(UsageError::with_usage(format!(
            "unknown command {:?}; to submit it as a prompt, quote it (/embark \"{}\") or use /embark submit {}",
            word.text, word.text, word.text
        )));
    }
    args.prompt = words.iter().map(|t| t.text.as_str()).collect::<Vec<_>>().join(" ");
    if args.prompt.trim().is_empty() {
        return Err(UsageError(
            "no prompt: say what the task should do, e.g. /embark \"fix the flaky test\" --provider P --model M".into(),
        ));
    }
    Ok(Command::Submit(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(prompt: &str, profile: Option<&str>, provider: Option<&str>, model: Option<&str>) -> Command {
        Command::Submit(SubmitArgs {
            prompt: prompt.into(),
            profile: profile.map(Into::into),
            provider: provider.map(Into::into),
            model: model.map(Into::into),
        })
    }

    fn usage_error(line: &str) -> String {
        match parse(line) {
            Err(UsageError(message)) => message,
            Ok(command) => panic!("{line:?} parsed as {command:?}"),
        }
    }

    #[test]
    fn empty_and_help_lines_show_help() {
        for line in ["", "   ", "help", "--help", "status -h", "\"x y\" --help"] {
            assert_eq!(parse(line), Ok(Command::Help), "{line:?}");
        }
        assert!(usage_error("help me").contains("quote it"));
    }

    #[test]
    fn status_selects_latest_or_a_prefix() {
        assert_eq!(parse("status"), Ok(Command::Status(TaskSelector::Latest)));
        assert_eq!(parse(" status latest "), Ok(Command::Status(TaskSelector::Latest)));
        assert_eq!(
            parse("status 0193ABCD"),
            Ok(Command::Status(TaskSelector::Prefix("0193abcd".into())))
        );
        assert_eq!(
            parse("status 01934f5e-7a1b-7c2d-8e3f-123456789abc"),
            Ok(Command::Status(TaskSelector::Prefix(
                "01934f5e7a1b7c2d8e3f123456789abc".into()
            )))
        );
        assert!(usage_error("status abc").contains("at least 4 hex digits"));
        assert!(usage_error("status zzzzzz").contains("not a task id"));
        assert!(usage_error("status a b").contains("extra"));
        assert!(usage_error("status --all").contains("Usage:"));
    }

    #[test]
    fn quoted_prompt_with_flags_anywhere() {
        let expected = submit("fix it", Some("team"), Some("anthropic"), Some("claude-sonnet-4-5"));
        assert_eq!(
            parse(r#""fix it" --profile team --provider anthropic --model claude-sonnet-4-5"#),
            Ok(expected.clone())
        );
        assert_eq!(
            parse(r#"--model=claude-sonnet-4-5 "fix it" --provider=anthropic --profile team"#),
            Ok(expected)
        );
    }

    #[test]
    fn unquoted_words_form_the_prompt() {
        assert_eq!(
            parse("fix the flaky test --model m in store"),
            Ok(submit("fix the flaky test in store", None, None, Some("m")))
        );
        assert_eq!(parse("submit fix"), Ok(submit("fix", None, None, None)));
        assert_eq!(
            parse("submit status of things"),
            Ok(submit("status of things", None, None, None))
        );
        assert_eq!(parse(r#""status""#), Ok(submit("status", None, None, None)));
        assert!(usage_error("stauts").contains("unknown command \"stauts\""));
    }

    #[test]
    fn double_dash_ends_flags_and_quoting_protects_words() {
        assert_eq!(
            parse("--model m -- explain --model and -h"),
            Ok(submit("explain --model and -h", None, None, Some("m")))
        );
        assert_eq!(
            parse(r#""--model is broken" --model m"#),
            Ok(submit("--model is broken", None, None, Some("m")))
        );
        assert_eq!(parse("fix -1 offsets"), Ok(submit("fix -1 offsets", None, None, None)));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        let message = usage_error(r#""fix" --modle m"#);
        assert!(message.starts_with("unknown flag --modle"), "{message}");
        assert!(message.contains("Usage:"), "{message}");
        assert!(usage_error(r#""fix" --model"#).contains("--model needs a value"));
        assert!(usage_error(r#""fix" --model --provider p"#).contains("--model needs a value"));
        assert!(usage_error(r#""fix" --model a --model b"#).contains("twice"));
        assert!(usage_error("--model m").starts_with("no prompt"));
        assert!(usage_error("submit").starts_with("no prompt"));
        assert!(usage_error(r#""  ""#).starts_with("no prompt"));
        assert!(usage_error(r#""fix it"#).contains("unterminated \" quote"));
    }

    #[test]
    fn empty_flag_values_reach_validation() {
        assert_eq!(parse(r#""fix" --model """#), Ok(submit("fix", None, None, Some(""))));
    }
}
