//! The operator's commands on the broker's database, beside serving:
//! `embark-broker tokens add|list|revoke` and `embark-broker runners
//! list|revoke`. They work through the [`Store`] on the same `--db` as the
//! broker (SQLite or PostgreSQL), also while brokers serve it: a token
//! added or revoked counts from the next request.

use std::io::Write;

use clap::Subcommand;
use jiff::Timestamp;

use crate::access::is_token_name;
use crate::auth::{TokenKind, mint};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Named client tokens: each sees and follows only the tasks it created
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Enrolled runners and their tokens
    #[command(subcommand)]
    Runners(RunnersCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokensCommand {
    /// Create a client token named NAME and print it (once: only its hash is stored)
    Add {
        /// 1 to 64 letters, digits and `._@-`, e.g. the person or machine it is for
        name: String,
    },
    /// List the client tokens: name, created, last used, revoked (never the tokens)
    List,
    /// Revoke the live client token named NAME: its requests answer 401 from now on
    Revoke { name: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum RunnersCommand {
    /// List the enrolled runners: id, name, enrolled, revoked
    List,
    /// Revoke the live runners named NAME (or the one with id NAME): their requests answer 401
    Revoke { name: String },
}

/// Why a command failed; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("token name {0:?} is not acceptable: use 1 to 64 letters, digits and `._@-`")]
    BadName(String),
    #[error("no live client token is named {0:?}: `embark-broker tokens list` shows them")]
    NoSuchToken(String),
    #[error("no live runner is named {0:?} or has that id: `embark-broker runners list` shows them")]
    NoSuchRunner(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not write the answer")]
    Write(#[from] std::io::Error),
}

/// Runs `command` on `store`: what it prints goes to `out` (a new token, the
/// listings), what it did to `note` (one line for people).
pub async fn run<S: Store>(
    store: &S,
    command: &Command,
    out: &mut impl Write,
    note: &mut impl Write,
) -> Result<(), AdminError> {
    match command {
        Command::Tokens(TokensCommand::Add { name }) => {
            if !is_token_name(name) {
                return Err(AdminError::BadName(name.clone()));
            }
            let (token, hash) = mint(TokenKind::Client);
            store.add_client_token(name, &hash).await?;
            writeln!(out, "{token}")?;
            writeln!(
                note,
                "client token {name:?} created; it is shown only now, so hand it over as a secret (the sidecar reads it from EMBARK_CLIENT_TOKEN)"
            )?;
        }
        Command::Tokens(TokensCommand::List) => {
            let tokens = store.client_tokens().await?;
            let rows = tokens.iter().map(|token| {
                [
                    token.name.clone(),
                    when(Some(token.created_at)),
                    when(token.last_used_at),
                    when(token.revoked_at),
                ]
            });
            table(out, ["NAME", "CREATED", "LAST USED", "REVOKED"], rows)?;
        }
        Command::Tokens(TokensCommand::Revoke { name }) => {
            if !store.revoke_client_token(name).await? {
                return Err(AdminError::NoSuchToken(name.clone()));
            }
            writeln!(
                note,
                "client token {name:?} revoked; the tasks it created stay as they are"
            )?;
        }
        Command::Runners(RunnersCommand::List) => {
            let runners = store.runners().await?;
            let rows = runners.iter().map(|runner| {
                [
                    runner.id.clone(),
                    runner.name.clone(),
                    when(Some(runner.enrolled_at)),
                    when(runner.revoked_at),
                ]
            });
            table(out, ["ID", "NAME", "ENROLLED", "REVOKED"], rows)?;
        }
        Command::Runners(RunnersCommand::Revoke { name }) => {
            let revoked = store.revoke_runners(name).await?;
            if revoked == 0 {
                return Err(AdminError::NoSuchRunner(name.clone()));
            }
            writeln!(
                note,
                "{revoked} runner(s) {name:?} revoked; their running tasks are left to the lease reaper. A machine \
                 that still holds the enrollment secret can enroll again: rotate EMBARK_RUNNER_ENROLLMENT_SECRET to keep it out"
            )?;
        }
    }
    Ok(())
}

/// A time to the second, or `-`.
fn when(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "-".to_owned(), |at| format!("{at:.0}"))
}

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(
    out: &mut impl Write,
    header: [&str; N],
    rows: impl Iterator<Item = [String; N]>,
) -> std::io::Result<()> {
    let rows: Vec<[String; N]> = rows.collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut line = |cells: [&str; N]| -> std::io::Result<()> {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if index + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:width$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(header)?;
    for row in &rows {
        line(row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    async fn run_ok(store: &SqliteStore, command: Command) -> (String, String) {
        let (mut out, mut note) = (Vec::new(), Vec::new());
        run(store, &command, &mut out, &mut note).await.expect("command");
        (
            String::from_utf8(out).expect("utf-8"),
            String::from_utf8(note).expect("utf-8"),
        )
    }

    #[tokio::test]
    async fn add_prints_the_token_once_and_list_never_shows_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("b.db")).await.expect("open");
        let add = |name: &str| Command::Tokens(TokensCommand::Add { name: name.into() });
        let (token, note) = run_ok(&store, add("alice")).await;
        let token = token.trim();
        assert!(token.starts_with("embark_ct_") && token.len() == 74, "{token}");
        assert!(!note.contains(token), "{note}");
        let (listing, _) = run_ok(&store, Command::Tokens(TokensCommand::List)).await;
        assert!(listing.starts_with("NAME   CREATED"), "{listing}");
        assert!(listing.contains("alice"), "{listing}");
        assert!(!listing.contains(&token[10..20]), "{listing}");

        let (mut out, mut note) = (Vec::new(), Vec::new());
        let again = run(&store, &add("alice"), &mut out, &mut note).await;
        assert!(
            matches!(again, Err(AdminError::Store(StoreError::TokenNameTaken(_)))),
            "{again:?}"
        );
        let bad = run(&store, &add("a b"), &mut out, &mut note).await;
        assert!(matches!(bad, Err(AdminError::BadName(_))), "{bad:?}");
        assert!(out.is_empty(), "nothing printed for refused adds");

        run_ok(&store, Command::Tokens(TokensCommand::Revoke { name: "alice".into() })).await;
        let gone = run(
            &store,
            &Command::Tokens(TokensCommand::Revoke { name: "alice".into() }),
            &mut out,
            &mut note,
        )
        .await;
        assert!(matches!(gone, Err(AdminError::NoSuchToken(_))), "{gone:?}");
        // The name is free again, for a new token.
        run_ok(&store, add("alice")).await;
        let (listing, _) = run_ok(&store, Command::Tokens(TokensCommand::List)).await;
        assert_eq!(listing.matches("alice").count(), 2, "{listing}");
    }
}
