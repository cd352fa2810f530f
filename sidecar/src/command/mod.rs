//! The `/embark` argument line: tokenizer, grammar and the typed command.
//! Pure: no I/O, so every rule is unit-tested here.
//!
//! Every command word of the whole surface is reserved in [`Verb`], built or
//! not, so a line naming one never becomes a prompt by accident; see
//! [`parse`] for when free text is a prompt.

mod parse;
mod suggest;
mod tokenize;

use embark_core::intent::IntentLayer;

pub use parse::{MIN_ID_PREFIX, UsageError, parse};
pub use tokenize::{Token, TokenizeError, tokenize};

/// Every reserved command word, in the order `help` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Submit,
    Status,
    Tasks,
    Attach,
    List,
    Sync,
    Cancel,
    Detach,
    Diff,
    Apply,
    Follow,
    Logs,
    Reconcile,
    Cleanup,
    Runners,
    Defaults,
    Help,
}

impl Verb {
    pub const ALL: [Verb; 17] = [
        Verb::Submit,
        Verb::Status,
        Verb::Tasks,
        Verb::Attach,
        Verb::List,
        Verb::Sync,
        Verb::Cancel,
        Verb::Detach,
        Verb::Diff,
        Verb::Apply,
        Verb::Follow,
        Verb::Logs,
        Verb::Reconcile,
        Verb::Cleanup,
        Verb::Runners,
        Verb::Defaults,
        Verb::Help,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Submit => "submit",
            Verb::Status => "status",
            Verb::Tasks => "tasks",
            Verb::Attach => "attach",
            Verb::List => "list",
            Verb::Sync => "sync",
            Verb::Cancel => "cancel",
            Verb::Detach => "detach",
            Verb::Diff => "diff",
            Verb::Apply => "apply",
            Verb::Follow => "follow",
            Verb::Logs => "logs",
            Verb::Reconcile => "reconcile",
            Verb::Cleanup => "cleanup",
            Verb::Runners => "runners",
            Verb::Defaults => "defaults",
            Verb::Help => "help",
        }
    }

    /// What the command does, in a few words (for messages and help).
    pub fn summary(self) -> &'static str {
        match self {
            Verb::Submit => "hand a task to a remote runner",
            Verb::Status => "show a task's state, recent events and result",
            Verb::Tasks => "pick one of this session's tasks",
            Verb::Attach => "follow a task live",
            Verb::List => "list this session's tasks",
            Verb::Sync => "fetch a task's new events",
            Verb::Cancel => "cancel a queued or running task",
            Verb::Detach => "stop following the attached task",
            Verb::Diff => "show the code a task changed",
            Verb::Apply => "apply a task's code changes to this working tree",
            Verb::Follow => "continue a task's conversation with a new prompt",
            Verb::Logs => "show a task's full event log",
            Verb::Reconcile => "refresh this session's task records from the broker",
            Verb::Cleanup => "forget tasks the broker no longer knows",
            Verb::Runners => "show what the runners can run",
            Verb::Defaults => "show or set this session's defaults for its tasks",
            Verb::Help => "show the commands",
        }
    }

    pub fn parse(word: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|verb| verb.as_str() == word)
    }
}

/// One `/embark` invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Status(TaskSelector),
    Cancel(TaskSelector),
    Submit(SubmitArgs),
    Runners,
    Defaults(DefaultsArgs),
    Diff(DiffArgs),
    Apply(ApplyArgs),
    Follow(FollowArgs),
    /// `list [--all]`: this session's tasks, or every session's in the store.
    List {
        all: bool,
    },
    Tasks,
    Sync(SyncTarget),
    Reconcile,
    Cleanup,
    /// `attach [latest|<id>|<number>]`: follow a task live below the editor.
    Attach(TaskSelector),
    /// `detach`: stop following the attached task.
    Detach,
}

/// `/embark diff [latest|<id>|<number>] [--stat] [PATH…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffArgs {
    pub selector: TaskSelector,
    pub stat: bool,
    pub paths: Vec<String>,
    /// `--from-root`: a follow-up's whole chain, from its root task's base (D28).
    pub from_root: bool,
}

/// `/embark apply [latest|<id>|<number>] [--dry-run] [--branch NAME] [--allow-conflicts] [--from-root]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyArgs {
    pub selector: TaskSelector,
    pub dry_run: bool,
    pub allow_conflicts: bool,
    pub branch: Option<String>,
    /// `--from-root`: a follow-up's whole chain, merged against its root task's base (D28).
    pub from_root: bool,
}

/// `/embark follow [latest|<id>|<number>] "<prompt>"` (D28).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowArgs {
    pub selector: TaskSelector,
    pub prompt: String,
}

/// What `/embark defaults` does with this Pi session's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultsArgs {
    /// Show every part of the intent a submit would use, with its source.
    Show,
    /// Set the parts named (the others stay as they were).
    Set(IntentLayer),
    /// Forget them all.
    Clear,
}

/// What `sync` fetches new events for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncTarget {
    /// Every tracked task of the session.
    All,
    One(TaskSelector),
}

/// Which task of the session `status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskSelector {
    /// The newest one.
    Latest,
    /// The one whose id (lowercase hex, no dashes) starts with this.
    Prefix(String),
    /// The n-th of the session's tasks, newest first (1 is the newest).
    Number(u32),
}

/// A task to hand to the broker; unset intent parts fall back to the
/// session's defaults, then the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubmitArgs {
    pub prompt: String,
    /// The explicit layer: `--profile`, `--provider`, `--model`, `--isolation`, `--label`.
    pub intent: IntentLayer,
    /// `--dry-run`: show what would be synced, send nothing.
    pub dry_run: bool,
}

/// Shown by `help` and with usage errors: the common loop first, then the
/// commands that target one task, then maintenance.
pub const USAGE: &str = r#"Usage:
The common loop:
  /embark "<prompt>" [--provider <name>] [--model <id>] [--profile <name>]
                     [--isolation <mode>] [--label <name>]... [--dry-run]
      Run a task on a remote runner on this working tree: HEAD's commit
      (unpushed commits included) and the uncommitted work git does not ignore.
      Several unquoted words also form the prompt; /embark submit <prompt>
      does the same for a prompt that starts with a command word.
  /embark status [latest|<id>|<id-prefix>|<n>]
      One task: state, runner attempt, age, fingerprint, tokens and cost,
      recent events and its result. Default: the latest task of this session.
  /embark tasks
      Pick one of this session's tasks (a numbered board outside the TUI);
      Enter attaches it.
  /embark attach [latest|<id>|<n>]
      Follow a task live in a widget below the editor (state, elapsed, last
      tool, last assistant line); its result lands here once when it ends.
  /embark list [--all]
      This session's tasks, numbered (1 is the newest); --all: every session's.

Targeting one task (<n> is its number in /embark list):
  /embark sync [all|latest|<id>|<n>]
      The events newer than what sync showed last; all: every tracked task.
  /embark cancel [latest|<id>|<n>]
      A queued task never starts; a running one's runner stops Pi (the
      footer says so when the runner confirms).
  /embark detach
      Stop following the attached task live (it keeps running).
  /embark diff [latest|<id>|<n>] [--stat] [--from-root] [PATH…]
      Show the code a finished task changed (git's diff of its base and
      result, fetched and verified into refs/embark/<task id>/…).
  /embark apply [latest|<id>|<n>] [--dry-run] [--branch NAME] [--allow-conflicts] [--from-root]
      Merge a task's result into this working tree (3-way, against the
      task's base): nothing is written when a file would conflict, local
      edits are never lost, the index and HEAD never move. --dry-run shows
      what would change; --branch NAME only creates that branch at the
      result; --allow-conflicts writes conflict markers.
  /embark follow [latest|<id>|<n>] "<prompt>"
      Continue a finished task: a new task that starts from its result and
      resumes its Pi conversation, with its intent, on any runner that can
      serve it. diff and apply of a follow-up show what it added; with
      --from-root, the whole chain from the first task's base.

Maintenance:
  /embark reconcile
      Adopt the tasks of sessions Pi cannot reopen here, import this session's
      broker-known tasks, refresh their states, mark unknown ones orphaned.
  /embark cleanup
      Mark orphaned tasks abandoned (their records stay as history).
  /embark runners
      What the enrolled runners can run: profiles, providers, models,
      isolation modes and labels.
  /embark defaults [--provider <name>] [--model <id>] [--profile <name>]
                   [--isolation <mode>] [--label <name>]... | [--clear]
      Without flags, show what this session's tasks run with and where each
      part comes from; with flags, make them this Pi session's defaults
      (a flag of a submit still wins; the config fills what is unset);
      --clear forgets them.
  /embark help
      Show this text.

Reserved for commands to come (a prompt that starts with one must be
quoted or follow `submit`): logs.

Flags go anywhere; --flag=value works; -- ends the flags.
  --provider <name>   Pi provider on the runner (else the session default, EMBARK_PROVIDER or `provider` in config.toml)
  --model <id>        model id (else the session default, EMBARK_MODEL or `model` in config.toml)
  --profile <name>    the runner's auth profile (else the session default, EMBARK_PROFILE, `profile` in config.toml, or "default")
  --isolation <mode>  process, bwrap or docker: only a runner that isolates tasks so takes it (else the session default,
                      EMBARK_ISOLATION or `isolation` in config.toml, or any)
  --label <name>      a label the runner must carry; repeat for several (else the session default, EMBARK_LABELS or
                      `labels` in config.toml, or none)
  --dry-run           show what would be synced (commit, bundle, each file, excludes, fingerprint); send nothing

Quoting: "double" (\" and \\ inside), 'single' (literal), \ escapes one character."#;
