//! From words to a typed [`Command`].

use embark_core::intent::{IntentLayer, IsolationMode};

use super::suggest::closest;
use super::tokenize::{Token, tokenize};
use super::{
    ApplyArgs, Command, DefaultsArgs, DiffArgs, FollowArgs, SubmitArgs, SyncTarget, TaskSelector, USAGE, Verb,
};

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

/// Reads one `/embark` line. Free text is a prompt when it is quoted, comes
/// after `submit`, or starts with a word that is not a reserved [`Verb`] and
/// is not command-shaped (a single bare word, or a word followed only by
/// selectors and flags such as `latest`, `3` or an id). A reserved word that
/// is not built yet, a misspelt one (did you mean …) and a command-shaped
/// line are usage errors: nothing is submitted.
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
    match Verb::parse(&first.text) {
        Some(Verb::Help) => match rest.first() {
            None => Ok(Command::Help),
            Some(_) => Err(UsageError(
                "`help` takes no arguments; to submit a prompt that starts with \"help\", quote it: /embark \"help …\""
                    .into(),
            )),
        },
        Some(Verb::Status) => parse_selector(Verb::Status, rest).map(Command::Status),
        Some(Verb::Cancel) => parse_selector(Verb::Cancel, rest).map(Command::Cancel),
        Some(Verb::Submit) => parse_submit(rest, true),
        Some(Verb::Runners) => no_args(Verb::Runners, rest, Command::Runners),
        Some(Verb::Tasks) => no_args(Verb::Tasks, rest, Command::Tasks),
        Some(Verb::Reconcile) => no_args(Verb::Reconcile, rest, Command::Reconcile),
        Some(Verb::Cleanup) => no_args(Verb::Cleanup, rest, Command::Cleanup),
        Some(Verb::Attach) => parse_selector(Verb::Attach, rest).map(Command::Attach),
        Some(Verb::Detach) => no_args(Verb::Detach, rest, Command::Detach),
        Some(Verb::List) => match rest {
            [] => Ok(Command::List { all: false }),
            [one] if one.text == "--all" && !one.quoted => Ok(Command::List { all: true }),
            _ => Err(UsageError(
                "`list` takes only --all (every session's tasks): /embark list [--all]".into(),
            )),
        },
        Some(Verb::Defaults) => parse_defaults(rest).map(Command::Defaults),
        Some(Verb::Diff) => parse_diff(rest).map(Command::Diff),
        Some(Verb::Apply) => parse_apply(rest).map(Command::Apply),
        Some(Verb::Follow) => parse_follow(rest).map(Command::Follow),
        Some(Verb::Sync) => match rest {
            [one] if one.text == "all" && !one.quoted => Ok(Command::Sync(SyncTarget::All)),
            _ => parse_selector(Verb::Sync, rest).map(|s| Command::Sync(SyncTarget::One(s))),
        },
        Some(verb) => Err(not_available(verb, line)),
        None => parse_submit(&tokens, false),
    }
}

/// A command without arguments, or the error that says how to submit such words.
fn no_args(verb: Verb, rest: &[Token], command: Command) -> Result<Command, UsageError> {
    match rest.first() {
        None => Ok(command),
        Some(_) => Err(UsageError(format!(
            "`{name}` takes no arguments; to submit a prompt that starts with \"{name}\", quote it: /embark \"{name} …\"",
            name = verb.as_str()
        ))),
    }
}

/// A reserved word whose command this build does not have yet.
fn not_available(verb: Verb, line: &str) -> UsageError {
    UsageError(format!(
        "/embark {} ({}) is not available in this version of embark yet, so nothing was submitted; \
         /embark help lists the commands it has, and {}",
        verb.as_str(),
        verb.summary(),
        quote_hint(line)
    ))
}

/// "to submit these words as a prompt, quote them: /embark "…"".
fn quote_hint(line: &str) -> String {
    let words = line.split_whitespace().collect::<Vec<_>>().join(" ");
    if words.chars().count() > 60 || words.contains(['"', '\\']) {
        return "to submit these words as a prompt, quote them or use /embark submit <prompt>".to_owned();
    }
    format!("to submit these words as a prompt, quote them: /embark \"{words}\"")
}

/// `--help` or `-h` before any `--`, unquoted.
fn wants_help(tokens: &[Token]) -> bool {
    tokens
        .iter()
        .take_while(|t| t.quoted || t.text != "--")
        .any(|t| !t.quoted && (t.text == "--help" || t.text == "-h"))
}

/// `[latest|<id>|<id prefix>|<number>]` after `verb`: the latest task when absent.
fn parse_selector(verb: Verb, args: &[Token]) -> Result<TaskSelector, UsageError> {
    let name = verb.as_str();
    let selector = match args {
        [] => TaskSelector::Latest,
        [one] if one.text.starts_with("--") && !one.quoted => {
            return Err(UsageError::with_usage(format!("`{name}` has no flag {}", one.text)));
        }
        [one] if one.text == "latest" => TaskSelector::Latest,
        [one] if is_number(&one.text) => match one.text.parse::<u32>() {
            Ok(number) if number >= 1 => TaskSelector::Number(number),
            _ => {
                return Err(UsageError(format!(
                    "tasks are numbered from 1 (the newest): /embark {name} [latest|<id>|<number>]"
                )));
            }
        },
        [one] => TaskSelector::Prefix(task_prefix(&one.text)?),
        [_, extra, ..] => {
            return Err(UsageError(format!(
                "`{name}` takes one task at most, got an extra {:?}: /embark {name} [latest|<id>|<number>]",
                extra.text
            )));
        }
    };
    Ok(selector)
}

/// The selector (when the first word is one), flags and other words of
/// `diff` or `apply`: `flags` names the flags without a value, `valued` those
/// with one; `--` ends the flags.
/// What `diff` and `apply` were given: the task, the other words, the flags with their values.
struct ResultArgs {
    selector: TaskSelector,
    words: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

fn parse_result_args(verb: Verb, args: &[Token], flags: &[&str], valued: &[&str]) -> Result<ResultArgs, UsageError> {
    let name = verb.as_str();
    let mut selector = None;
    let mut words = Vec::new();
    let mut given: Vec<(String, Option<String>)> = Vec::new();
    let mut flags_ended = false;
    let mut iter = args.iter().enumerate();
    while let Some((index, token)) = iter.next() {
        if !flags_ended && !token.quoted && token.text == "--" {
            flags_ended = true;
            continue;
        }
        if !flags_ended && !token.quoted && token.text.starts_with("--") {
            let (flag, inline) = match token.text[2..].split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (token.text[2..].to_owned(), None),
            };
            if given.iter().any(|(f, _)| *f == flag) {
                return Err(UsageError(format!("--{flag} is given twice; keep one")));
            }
            if flags.contains(&flag.as_str()) {
                if inline.is_some() {
                    return Err(UsageError(format!("--{flag} takes no value")));
                }
                given.push((flag, None));
            } else if valued.contains(&flag.as_str()) {
                let value = match inline {
                    Some(value) => value,
                    None => match iter.next() {
                        Some((_, next)) if next.quoted || !next.text.starts_with("--") => next.text.clone(),
                        _ => return Err(UsageError(format!("--{flag} needs a value: --{flag} <name>"))),
                    },
                };
                given.push((flag, Some(value)));
            } else {
                return Err(UsageError::with_usage(format!("`{name}` has no flag --{flag}")));
            }
            continue;
        }
        if index == 0 && !token.quoted && selector.is_none() && is_task_word(&token.text) {
            selector = Some(parse_selector(verb, std::slice::from_ref(token))?);
            continue;
        }
        words.push(token.text.clone());
    }
    Ok(ResultArgs {
        selector: selector.unwrap_or(TaskSelector::Latest),
        words,
        flags: given,
    })
}

/// `latest`, a task number or a hex id (prefix): a word that picks a task.
fn is_task_word(text: &str) -> bool {
    text == "latest"
        || is_number(text)
        || (text.len() >= MIN_ID_PREFIX && text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
}

fn parse_diff(args: &[Token]) -> Result<DiffArgs, UsageError> {
    let parsed = parse_result_args(Verb::Diff, args, &["stat", "from-root"], &[])?;
    let has = |name: &str| parsed.flags.iter().any(|(f, _)| f == name);
    Ok(DiffArgs {
        selector: parsed.selector,
        stat: has("stat"),
        from_root: has("from-root"),
        paths: parsed.words,
    })
}

fn parse_apply(args: &[Token]) -> Result<ApplyArgs, UsageError> {
    let ResultArgs { selector, words, flags } = parse_result_args(
        Verb::Apply,
        args,
        &["dry-run", "allow-conflicts", "from-root"],
        &["branch"],
    )?;
    if let Some(word) = words.first() {
        return Err(UsageError(format!(
            "`apply` takes one task at most, got an extra {word:?}: /embark apply [latest|<id>|<number>] [--dry-run] [--branch NAME] [--allow-conflicts]"
        )));
    }
    let has = |name: &str| flags.iter().any(|(f, _)| f == name);
    let branch = flags.iter().find(|(f, _)| f == "branch").and_then(|(_, v)| v.clone());
    if branch.is_some() && (has("dry-run") || has("allow-conflicts")) {
        return Err(UsageError(
            "--branch only creates a branch at the result and writes no file: give it without --dry-run or --allow-conflicts".into(),
        ));
    }
    Ok(ApplyArgs {
        selector,
        dry_run: has("dry-run"),
        allow_conflicts: has("allow-conflicts"),
        from_root: has("from-root"),
        branch,
    })
}

/// `follow [latest|<id>|<number>] <prompt…>`: the task to continue (the
/// latest when the first word does not pick one), then the prompt.
fn parse_follow(args: &[Token]) -> Result<FollowArgs, UsageError> {
    let ResultArgs { selector, words, .. } = parse_result_args(Verb::Follow, args, &[], &[])?;
    let prompt = words.join(" ");
    if prompt.trim().is_empty() {
        return Err(UsageError(
            "`follow` needs the prompt that continues the task: /embark follow [latest|<id>|<number>] \"<prompt>\""
                .into(),
        ));
    }
    Ok(FollowArgs { selector, prompt })
}

/// A task's number in the session (newest first): fewer digits than any id
/// prefix, so `12` is a number and `1234` a prefix.
fn is_number(text: &str) -> bool {
    (1..MIN_ID_PREFIX).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
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

/// A line's flags (the intent's, and the switches a command takes) and the
/// words around them.
#[derive(Default)]
struct Flags<'a> {
    words: Vec<&'a Token>,
    intent: IntentLayer,
    dry_run: bool,
    clear: bool,
}

/// Reads the intent's flags (`--profile`, `--provider`, `--model`,
/// `--isolation`, `--label`, repeatable) and the valueless `switches` this
/// command takes (`dry-run`, `clear`); every other word is kept in order.
fn read_flags<'a>(tokens: &'a [Token], switches: &[&str]) -> Result<Flags<'a>, UsageError> {
    let mut flags = Flags::default();
    let mut flags_ended = false;
    let mut iter = tokens.iter();
    while let Some(token) = iter.next() {
        if flags_ended || token.quoted || !token.text.starts_with("--") {
            flags.words.push(token);
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
        if switches.contains(&name) {
            if inline.is_some() {
                return Err(UsageError(format!("--{name} takes no value")));
            }
            let switch = if name == "clear" {
                &mut flags.clear
            } else {
                &mut flags.dry_run
            };
            if *switch {
                return Err(UsageError(format!("--{name} is given twice; keep one")));
            }
            *switch = true;
            continue;
        }
        if !matches!(name, "profile" | "provider" | "model" | "isolation" | "label") {
            return Err(UsageError::with_usage(format!("unknown flag --{name}")));
        }
        let value = match inline {
            Some(value) => value,
            None => match iter.next() {
                Some(next) if next.quoted || !next.text.starts_with("--") => next.text.clone(),
                _ => {
                    return Err(UsageError(format!("--{name} needs a value: --{name} <name>")));
                }
            },
        };
        let intent = &mut flags.intent;
        if name == "label" {
            intent.labels.get_or_insert_with(Vec::new).push(value);
            continue;
        }
        if name == "isolation" {
            let mode = IsolationMode::parse(&value).ok_or_else(|| {
                UsageError(format!(
                    "--isolation {value:?} is not an isolation mode: give process, bwrap or docker"
                ))
            })?;
            if intent.isolation.replace(mode).is_some() {
                return Err(UsageError("--isolation is given twice; keep one".into()));
            }
            continue;
        }
        let slot = match name {
            "profile" => &mut intent.auth_profile,
            "provider" => &mut intent.provider,
            _ => &mut intent.model,
        };
        if slot.is_some() {
            return Err(UsageError(format!("--{name} is given twice; keep one")));
        }
        *slot = Some(value);
    }
    Ok(flags)
}

fn parse_submit(tokens: &[Token], explicit: bool) -> Result<Command, UsageError> {
    let flags = read_flags(tokens, &["dry-run"])?;
    if !explicit {
        command_shaped(&flags.words)?;
    }
    let prompt = flags
        .words
        .iter()
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    if prompt.trim().is_empty() {
        return Err(UsageError(
            "no prompt: say what the task should do, e.g. /embark \"fix the flaky test\" --provider P --model M".into(),
        ));
    }
    Ok(Command::Submit(SubmitArgs {
        prompt,
        intent: flags.intent,
        dry_run: flags.dry_run,
    }))
}

/// `defaults` alone shows, with intent flags sets, with `--clear` forgets.
fn parse_defaults(args: &[Token]) -> Result<DefaultsArgs, UsageError> {
    let flags = read_flags(args, &["clear"])?;
    if let Some(word) = flags.words.first() {
        return Err(UsageError(format!(
            "`defaults` takes only flags (--provider, --model, --profile, --isolation, --label, --clear), got {:?}; \
             to submit a prompt that starts with \"defaults\", quote it: /embark \"defaults …\"",
            word.text
        )));
    }
    match (flags.clear, flags.intent.is_empty()) {
        (true, false) => Err(UsageError(
            "--clear forgets every default of this session, so it takes no other flag: run /embark defaults --clear, \
             then set what you want"
                .into(),
        )),
        (true, true) => Ok(DefaultsArgs::Clear),
        (false, true) => Ok(DefaultsArgs::Show),
        (false, false) => Ok(DefaultsArgs::Set(flags.intent)),
    }
}

/// Refuses free text that reads as a command rather than a prompt: a
/// reserved word behind flags, a single bare word, a bare word followed
/// only by selectors, or a misspelt command word followed by selectors or
/// quoted text.
fn command_shaped(words: &[&Token]) -> Result<(), UsageError> {
    let Some((first, args)) = words.split_first() else {
        return Ok(());
    };
    if first.quoted {
        return Ok(());
    }
    if let Some(verb) = Verb::parse(&first.text) {
        return Err(UsageError(format!(
            "{:?} is a command word: put flags after it (/embark {} …), or to submit these words as a prompt, \
             quote them or use /embark submit <prompt>",
            verb.as_str(),
            verb.as_str()
        )));
    }
    let typo = closest(&first.text);
    let selectors_only = args.iter().all(|t| !t.quoted && is_selector(&t.text));
    let typo_shaped = typo.is_some() && args.iter().all(|t| t.quoted || is_selector(&t.text));
    if !(selectors_only || typo_shaped) {
        return Ok(());
    }
    let line = words.iter().map(|t| t.text.as_str()).collect::<Vec<_>>().join(" ");
    Err(match typo {
        Some(verb) => UsageError(format!(
            "unknown command {:?}: did you mean /embark {}? ({}); {}",
            first.text,
            verb.as_str(),
            verb.summary(),
            quote_hint(&line)
        )),
        None => UsageError::with_usage(format!("unknown command {:?}; {}", first.text, quote_hint(&line))),
    })
}

/// A word that selects a task or says "all" rather than reading as prose:
/// `latest`, `all`, a number, something dash-led, or a task id (prefix).
fn is_selector(word: &str) -> bool {
    let hex = word.bytes().filter(u8::is_ascii_hexdigit).count();
    let id_like = hex >= MIN_ID_PREFIX
        && word.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        && (hex >= 8 || word.bytes().any(|b| b.is_ascii_digit()));
    matches!(word, "latest" | "all")
        || word.starts_with('-')
        || (!word.is_empty() && word.bytes().all(|b| b.is_ascii_digit()))
        || id_like
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(profile: Option<&str>, provider: Option<&str>, model: Option<&str>) -> IntentLayer {
        IntentLayer {
            auth_profile: profile.map(Into::into),
            provider: provider.map(Into::into),
            model: model.map(Into::into),
            ..IntentLayer::default()
        }
    }

    fn submit(prompt: &str, profile: Option<&str>, provider: Option<&str>, model: Option<&str>) -> Command {
        Command::Submit(SubmitArgs {
            prompt: prompt.into(),
            intent: layer(profile, provider, model),
            dry_run: false,
        })
    }

    #[test]
    fn isolation_and_repeated_labels_are_intent_flags() {
        let Ok(Command::Submit(args)) = parse(r#""fix it" --isolation bwrap --label gpu --label=eu-west"#) else {
            panic!("a submit")
        };
        assert_eq!(args.intent.isolation, Some(IsolationMode::Bwrap));
        assert_eq!(args.intent.labels, Some(vec!["gpu".to_owned(), "eu-west".to_owned()]));
        let Ok(Command::Submit(plain)) = parse(r#""fix it""#) else {
            panic!("a submit")
        };
        assert_eq!((plain.intent.isolation, plain.intent.labels), (None, None));
        let message = usage_error(r#""fix" --isolation vm"#);
        assert!(message.contains("give process, bwrap or docker"), "{message}");
        assert!(usage_error(r#""fix" --isolation bwrap --isolation docker"#).contains("twice"));
        assert!(usage_error(r#""fix" --label"#).contains("--label needs a value"));
    }

    #[test]
    fn defaults_show_set_or_clear() {
        assert_eq!(parse("defaults"), Ok(Command::Defaults(DefaultsArgs::Show)));
        assert_eq!(parse("defaults --clear"), Ok(Command::Defaults(DefaultsArgs::Clear)));
        let expected = IntentLayer {
            isolation: Some(IsolationMode::Process),
            labels: Some(vec!["gpu".into()]),
            ..layer(Some("team"), Some("p"), Some("m"))
        };
        assert_eq!(
            parse("defaults --profile team --provider=p --model m --isolation process --label gpu"),
            Ok(Command::Defaults(DefaultsArgs::Set(expected)))
        );
        assert!(usage_error("defaults --clear --model m").contains("takes no other flag"));
        assert!(usage_error("defaults --clear --clear").contains("twice"));
        assert!(usage_error("defaults --dry-run").contains("unknown flag --dry-run"));
        let message = usage_error("defaults to the team profile");
        assert!(message.contains("takes only flags"), "{message}");
        assert!(message.contains("quote it"), "{message}");
        assert!(usage_error(r#""fix" --clear"#).contains("unknown flag --clear"));
        // Quoted or after submit, the word is a prompt.
        assert_eq!(
            parse("\"defaults are wrong\""),
            Ok(submit("defaults are wrong", None, None, None))
        );
        assert!(usage_error("defualts").contains("did you mean /embark defaults?"));
    }

    #[test]
    fn dry_run_is_a_flag_without_a_value() {
        let Ok(Command::Submit(args)) = parse(r#""fix it" --dry-run --model m"#) else {
            panic!("a submit")
        };
        assert!(args.dry_run);
        assert_eq!(
            (args.prompt.as_str(), args.intent.model.as_deref()),
            ("fix it", Some("m"))
        );
        assert!(usage_error("fix it --dry-run=yes").contains("takes no value"));
        assert!(usage_error("fix it --dry-run --dry-run").contains("twice"));
        let Ok(Command::Submit(quoted)) = parse(r#""--dry-run" fix"#) else {
            panic!("a submit")
        };
        assert!(!quoted.dry_run, "a quoted word is prompt text");
    }

    fn usage_error(line: &str) -> String {
        match parse(line) {
            Err(UsageError(message)) => message,
            Ok(command) => panic!("{line:?} parsed as {command:?}"),
        }
    }

    #[test]
    fn follow_takes_a_task_and_a_prompt() {
        assert_eq!(
            parse("follow latest \"now fix the tests\""),
            Ok(Command::Follow(FollowArgs {
                selector: TaskSelector::Latest,
                prompt: "now fix the tests".into()
            }))
        );
        assert_eq!(
            parse("follow 2 also the docs"),
            Ok(Command::Follow(FollowArgs {
                selector: TaskSelector::Number(2),
                prompt: "also the docs".into()
            }))
        );
        assert_eq!(
            parse("follow \"more\""),
            Ok(Command::Follow(FollowArgs {
                selector: TaskSelector::Latest,
                prompt: "more".into()
            }))
        );
        assert!(usage_error("follow 3").contains("needs the prompt"));
        assert!(usage_error("follow").contains("needs the prompt"));
    }

    #[test]
    fn diff_and_apply_take_a_selector_flags_and_paths() {
        assert_eq!(
            parse("diff"),
            Ok(Command::Diff(DiffArgs {
                selector: TaskSelector::Latest,
                stat: false,
                paths: vec![],
                from_root: false
            }))
        );
        assert_eq!(
            parse("diff 2 --stat src/lib.rs docs"),
            Ok(Command::Diff(DiffArgs {
                selector: TaskSelector::Number(2),
                stat: true,
                paths: vec!["src/lib.rs".into(), "docs".into()],
                from_root: false
            }))
        );
        assert_eq!(
            parse("diff -- 0abc"),
            Ok(Command::Diff(DiffArgs {
                selector: TaskSelector::Latest,
                stat: false,
                paths: vec!["0abc".into()],
                from_root: false
            })),
            "after -- a hex word is a path"
        );
        assert_eq!(
            parse("apply 0193abcd --dry-run --allow-conflicts"),
            Ok(Command::Apply(ApplyArgs {
                selector: TaskSelector::Prefix("0193abcd".into()),
                dry_run: true,
                allow_conflicts: true,
                branch: None,
                from_root: false
            }))
        );
        assert_eq!(
            parse("apply --branch=fix/it"),
            Ok(Command::Apply(ApplyArgs {
                selector: TaskSelector::Latest,
                dry_run: false,
                allow_conflicts: false,
                branch: Some("fix/it".into()),
                from_root: false
            }))
        );
        assert!(usage_error("apply --branch").contains("needs a value"));
        let Ok(Command::Diff(chain)) = parse("diff 2 --from-root --stat") else {
            panic!("a diff")
        };
        assert!(chain.from_root && chain.stat);
        let Ok(Command::Apply(chain)) = parse("apply --from-root --dry-run") else {
            panic!("an apply")
        };
        assert!(chain.from_root && chain.dry_run);
        assert!(usage_error("apply --branch b --dry-run").contains("writes no file"));
        assert!(usage_error("apply latest extra").contains("extra"));
        assert!(usage_error("diff --stat --stat").contains("twice"));
        assert!(usage_error("diff --color").contains("no flag --color"));
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
        assert_eq!(parse("status 2"), Ok(Command::Status(TaskSelector::Number(2))));
    }

    #[test]
    fn board_and_maintenance_commands() {
        assert_eq!(parse("list"), Ok(Command::List { all: false }));
        assert_eq!(parse("list --all"), Ok(Command::List { all: true }));
        assert!(usage_error("list 3").contains("only --all"));
        assert_eq!(parse("tasks"), Ok(Command::Tasks));
        assert_eq!(parse("reconcile"), Ok(Command::Reconcile));
        assert_eq!(parse("cleanup"), Ok(Command::Cleanup));
        assert!(usage_error("cleanup now").contains("takes no arguments"));
        assert_eq!(parse("sync"), Ok(Command::Sync(SyncTarget::One(TaskSelector::Latest))));
        assert_eq!(parse("sync all"), Ok(Command::Sync(SyncTarget::All)));
        assert_eq!(
            parse("sync 3"),
            Ok(Command::Sync(SyncTarget::One(TaskSelector::Number(3))))
        );
        assert_eq!(
            parse("sync abcd1234"),
            Ok(Command::Sync(SyncTarget::One(TaskSelector::Prefix("abcd1234".into()))))
        );
        assert_eq!(parse("attach"), Ok(Command::Attach(TaskSelector::Latest)));
        assert_eq!(parse("attach 2"), Ok(Command::Attach(TaskSelector::Number(2))));
        assert_eq!(
            parse("attach abcd12"),
            Ok(Command::Attach(TaskSelector::Prefix("abcd12".into())))
        );
        assert_eq!(parse("detach"), Ok(Command::Detach));
        assert!(usage_error("detach latest").contains("takes no arguments"));
        assert!(usage_error("attach 1 2").contains("one task at most"));
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
    fn cancel_takes_a_task_like_status() {
        assert_eq!(parse("cancel"), Ok(Command::Cancel(TaskSelector::Latest)));
        assert_eq!(parse("cancel latest"), Ok(Command::Cancel(TaskSelector::Latest)));
        assert_eq!(parse("cancel 2"), Ok(Command::Cancel(TaskSelector::Number(2))));
        assert_eq!(
            parse("cancel 0190-ABCD"),
            Ok(Command::Cancel(TaskSelector::Prefix("0190abcd".into())))
        );
        assert_eq!(parse("status 12"), Ok(Command::Status(TaskSelector::Number(12))));
        assert_eq!(
            parse("status 1234"),
            Ok(Command::Status(TaskSelector::Prefix("1234".into()))),
            "four digits are an id prefix"
        );
        assert!(usage_error("cancel 0").contains("numbered from 1"));
        assert!(usage_error("cancel 1 2").contains("takes one task at most"));
        assert!(usage_error("cancel --all").contains("`cancel` has no flag --all"));
        assert!(usage_error("cancel the flaky build please").contains("takes one task at most"));
    }

    #[test]
    fn runners_takes_no_arguments() {
        assert_eq!(parse("runners"), Ok(Command::Runners));
        let error = parse("runners now").expect_err("arguments");
        assert!(error.0.contains("quote it"), "{}", error.0);
    }

    #[test]
    fn reserved_words_never_become_prompts() {
        for line in ["logs", "logs the flaky build please"] {
            let message = usage_error(line);
            assert!(
                message.contains("is not available in this version"),
                "{line}: {message}"
            );
            assert!(message.contains("nothing was submitted"), "{line}: {message}");
        }
        let message = usage_error("logs latest");
        assert!(message.contains("quote them: /embark \"logs latest\""), "{message}");
        let message = usage_error(&format!("logs {}", "word ".repeat(30)));
        assert!(message.contains("use /embark submit <prompt>"), "{message}");
        // Behind flags or after `--`, a reserved word is still a command word.
        for line in ["--model m cancel latest", "-- attach 3"] {
            assert!(usage_error(line).contains("is a command word"), "{line}");
        }
        // Quoted, or after submit, the same words are a prompt.
        assert_eq!(
            parse("\"cancel latest\""),
            Ok(submit("cancel latest", None, None, None))
        );
        assert_eq!(
            parse("submit cancel latest"),
            Ok(submit("cancel latest", None, None, None))
        );
        assert_eq!(parse("'attach' 3"), Ok(submit("attach 3", None, None, None)));
    }

    #[test]
    fn misspelt_commands_get_a_suggestion() {
        for (line, verb) in [
            ("lsit", "list"),
            ("stauts latest", "status"),
            ("cancle 3", "cancel"),
            ("atach 0190abcd", "attach"),
            ("folow latest \"also fix the tests\"", "follow"),
            ("runner", "runners"),
        ] {
            let message = usage_error(line);
            assert!(
                message.contains(&format!("did you mean /embark {verb}?")),
                "{line}: {message}"
            );
            assert!(!message.contains("Usage:"), "{line}: {message}");
        }
        // A near miss followed by prose is a prompt: people write "log every request".
        assert_eq!(
            parse("log every request in the middleware"),
            Ok(submit("log every request in the middleware", None, None, None))
        );
        assert_eq!(parse("lsit the files"), Ok(submit("lsit the files", None, None, None)));
    }

    #[test]
    fn command_shaped_free_text_is_refused() {
        for line in [
            "refactor",
            "update 3",
            "frobnicate latest",
            "rerun 0190abcd",
            "rerun --model m",
            "x all",
        ] {
            let message = usage_error(line);
            assert!(message.starts_with("unknown command"), "{line}: {message}");
            assert!(message.contains("Usage:"), "{line}: {message}");
        }
        // Prose, even with numbers and ids in it, is a prompt.
        for line in [
            "fix the 3 failing tests",
            "fix test 3 and 4 in store",
            "explain commit 0190abcd to me",
            "fix -1 offsets",
            "add a cafe page",
        ] {
            assert!(matches!(parse(line), Ok(Command::Submit(_))), "{line}");
        }
    }

    #[test]
    fn selectors_are_recognised() {
        for word in [
            "latest",
            "all",
            "3",
            "12",
            "-x",
            "--all",
            "0190abcd",
            "abcdef01",
            "0190-abcd",
            "a1b2",
        ] {
            assert!(is_selector(word), "{word}");
        }
        for word in ["fix", "cafe", "dead", "face", "tests", "", "abc", "beefcafe!"] {
            assert!(!is_selector(word), "{word}");
        }
    }

    #[test]
    fn empty_flag_values_reach_validation() {
        assert_eq!(parse(r#""fix" --model """#), Ok(submit("fix", None, None, Some(""))));
    }
}
