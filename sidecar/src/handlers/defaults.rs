//! `/embark defaults`: show, set or clear this Pi session's defaults for
//! its tasks (the store is [`crate::defaults`]).

use embark_core::intent::{IntentLayer, Source, settle};
use embark_core::protocol::{Block, SessionContext, Tone, View};

use super::Handlers;
use crate::command::DefaultsArgs;
use crate::error::RpcError;

pub fn run(handlers: &Handlers, args: DefaultsArgs, session: &SessionContext) -> Result<View, RpcError> {
    let store = &handlers.defaults;
    let id = &session.session_id;
    let stored = |e: crate::defaults::DefaultsError| RpcError::config(e.to_string());
    let (note, layer) = match args {
        DefaultsArgs::Show => (None, store.get(id).map_err(stored)?),
        DefaultsArgs::Set(changes) => {
            changes.validate().map_err(|e| RpcError::usage(e.to_string()))?;
            let layer = store.set(id, &changes).map_err(stored)?;
            let note = "Saved as this Pi session's defaults: its tasks run with them unless a submit's flag says \
                        otherwise (/embark defaults --clear forgets them).";
            (Some(note), layer)
        }
        DefaultsArgs::Clear => {
            store.clear(id).map_err(stored)?;
            (
                Some("This Pi session's defaults are cleared: its tasks run with the sidecar config."),
                IntentLayer::default(),
            )
        }
    };
    let mut blocks: Vec<Block> = note
        .map(|text| Block::Text {
            text: text.to_owned(),
            tone: Tone::Info,
        })
        .into_iter()
        .collect();
    blocks.push(table(&layer, &handlers.config().intent));
    Ok(View {
        blocks,
        ..View::default()
    })
}

/// Each part a submit without flags would use, and where it comes from.
fn table(session: &IntentLayer, config: &IntentLayer) -> Block {
    let rows = settle(&IntentLayer::default(), session, config, &IntentLayer::runner_default())
        .into_iter()
        .map(|settled| {
            let (value, from) = match settled.value {
                Some((source, value)) => (value, source_name(source)),
                None => (unset(settled.part).to_owned(), "-"),
            };
            vec![settled.part.to_owned(), value, from.to_owned()]
        })
        .collect();
    Block::Table {
        title: Some("What this session's tasks run with (a submit's flags still win)".into()),
        columns: ["part", "value", "from"].map(String::from).to_vec(),
        rows,
    }
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Config => "sidecar config (EMBARK_* or config.toml)",
        other => other.name(),
    }
}

/// What an unnamed part means for a task.
fn unset(part: &str) -> &'static str {
    match part {
        "isolation" => "(any the runner has)",
        "labels" => "(none)",
        _ => "(not chosen: a submit must name one)",
    }
}
