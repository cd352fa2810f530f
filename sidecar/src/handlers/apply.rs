//! `/embark apply [latest|<id>|<number>] [--dry-run] [--branch NAME]
//! [--allow-conflicts]`: the task's result merged into this working tree
//! ([`crate::result::apply`]), or a branch made at it.

use embark_core::protocol::{Block, SessionContext, Tone, View};

use super::Handlers;
use super::diff::{Nothing, Selected, result_error, selected};
use crate::command::ApplyArgs;
use crate::error::RpcError;
use crate::result::{self, ApplyOptions, ApplyReport};

/// Files listed by name at most.
const MAX_LISTED: usize = 40;

pub async fn run(handlers: &Handlers, args: &ApplyArgs, session: &SessionContext) -> Result<View, RpcError> {
    let Selected { shown, git, fetched } = match selected(handlers, &args.selector, args.from_root, session).await? {
        Ok(selected) => selected,
        Err(Nothing::Said(view)) => return Ok(view),
    };
    let options = ApplyOptions {
        dry_run: args.dry_run,
        allow_conflicts: args.allow_conflicts,
        branch: args.branch.clone(),
    };
    let report = result::apply(&git, &fetched, &options)
        .await
        .map_err(|e| result_error(&shown, e))?;
    Ok(view(&shown, &options, &report))
}

fn view(shown: &str, options: &ApplyOptions, report: &ApplyReport) -> View {
    let mut blocks = Vec::new();
    if let Some(branch) = &report.branch {
        blocks.push(Block::Text {
            text: format!(
                "Created branch {branch} at task {shown}'s result; the working tree, the index and HEAD are as they were (git switch {branch} to use it)."
            ),
            tone: Tone::Info,
        });
        return View {
            blocks,
            ..View::default()
        };
    }
    let files = list(report);
    let (text, tone) = if report.changes.is_empty() && report.conflicts.is_empty() {
        (
            format!("Task {shown}'s result is already in this working tree: nothing to write."),
            Tone::Info,
        )
    } else if report.written && report.conflicts.is_empty() {
        (
            format!(
                "Applied task {shown}'s result to the working tree ({} file(s)); the index and HEAD did not move:\n{files}",
                report.changes.len()
            ),
            Tone::Info,
        )
    } else if report.written {
        (
            format!(
                "Applied task {shown}'s result with conflict markers in {} file(s) (--allow-conflicts); resolve them:\n{files}",
                report.conflicts.len()
            ),
            Tone::Warning,
        )
    } else if !report.conflicts.is_empty() {
        let what = if options.dry_run { "would conflict" } else { "conflicts" };
        (
            format!(
                "Task {shown}'s result {what} with this working tree in {} file(s), so nothing was written; commit or stash your edits there, or apply with --allow-conflicts to get conflict markers:\n{files}",
                report.conflicts.len()
            ),
            Tone::Warning,
        )
    } else {
        (
            format!(
                "Dry run: applying task {shown}'s result would write {} file(s) (nothing was written):\n{files}",
                report.changes.len()
            ),
            Tone::Info,
        )
    };
    blocks.push(Block::Text { text, tone });
    for conflict in &report.conflicts {
        blocks.push(Block::Text {
            text: format!("conflict in {}:\n{}", conflict.path, conflict.hunks),
            tone: Tone::Warning,
        });
    }
    View {
        blocks,
        ..View::default()
    }
}

fn list(report: &ApplyReport) -> String {
    let mut lines: Vec<String> = report
        .changes
        .iter()
        .take(MAX_LISTED)
        .map(|c| {
            let mark = if report.conflicts.iter().any(|x| x.path == c.path) {
                " (conflict)"
            } else {
                ""
            };
            format!("  {} {}{mark}", c.status, c.path)
        })
        .collect();
    if report.changes.len() > MAX_LISTED {
        lines.push(format!("  … and {} more", report.changes.len() - MAX_LISTED));
    }
    lines.join("\n")
}
