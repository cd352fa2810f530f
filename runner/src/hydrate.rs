//! Hydration: the task's workspace made to be the laptop's working tree.
//!
//! 1. The manifest is checked first (version, safe and sorted paths, a
//!    fingerprint that matches), before anything is fetched or written.
//! 2. Unpushed commits: the bundle blob is fetched from the broker
//!    (verified against its hash) into the task directory, outside the
//!    workspace.
//! 3. The workspace is a verified copy of the runner's template of the
//!    commit ([`crate::template`]), made the first time from the runner's
//!    mirror of the repository ([`crate::checkout::checkout_from`]) with the
//!    bundle's commits fetched into it.
//! 4. The overlay's blobs come from a fingerprint-keyed cache
//!    (`<cache>/overlays/<fingerprint>/`): the same fingerprint again is
//!    served from there, another one is downloaded (each blob verified) into
//!    a private directory and renamed into place whole.
//! 5. The overlay is applied and read back ([`crate::overlay`]): the
//!    workspace's own fingerprint must be the manifest's.
//!
//! The cache lives in `<spaces>/.cache/` (`mirrors/`, `overlays/`,
//! `templates/`), which is never a task directory, so the sweep of leftovers
//! passes it by; it is bounded ([`crate::cache::evict`]) whenever it grew.

use std::path::{Path, PathBuf};

use embark_client::{BrokerClient, ClientError};
use embark_core::manifest::{Base, Fingerprint, ManifestCheckError};
use embark_core::wire::Task;

use crate::cache::{self, Mode};
use crate::checkout::CloneLimits;
use crate::guard::Guard;
use crate::overlay::{self, Applied, OverlayError, blob_file};
use crate::template::{self, TemplateError};

pub use crate::cache::{CACHE_DIR, Cache};

/// What hydration did, for the task's events and record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synced {
    pub fingerprint: Fingerprint,
    pub applied: Applied,
    /// The overlay's blobs came from the cache, none from the broker.
    pub cached: bool,
    /// Unpushed commits fetched from the bundle.
    pub bundle_commits: u64,
}

impl Synced {
    /// The detail of the `synced` lifecycle event.
    pub fn detail(&self) -> String {
        let mut detail = format!(
            "fingerprint {}: {} file(s) written ({} bytes), {} deleted, verified",
            self.fingerprint, self.applied.written, self.applied.bytes, self.applied.deleted
        );
        if self.bundle_commits > 0 {
            detail.push_str(&format!("; {} unpushed commit(s) from the bundle", self.bundle_commits));
        }
        if self.cached {
            detail.push_str("; overlay from the runner's cache");
        }
        detail
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HydrateError {
    #[error("the task's manifest cannot be used: {0}")]
    Manifest(#[from] ManifestCheckError),
    #[error(transparent)]
    Checkout(#[from] TemplateError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("could not download blob {what} from the broker")]
    Blob {
        what: String,
        #[source]
        source: ClientError,
    },
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HydrateError {
    let path = path.to_owned();
    move |source| HydrateError::Io { what, path, source }
}

/// Who the runner is to the broker, for blob downloads.
#[derive(Clone, Copy, Debug)]
pub struct BlobSource<'a> {
    pub client: &'a BrokerClient,
    pub runner_token: &'a str,
}

/// Where one task's hydration works.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The task directory (the bundle file goes there, never into the workspace).
    pub task_dir: &'a Path,
    pub workspace: &'a Path,
    pub cache: &'a Cache,
    pub limits: &'a CloneLimits,
    pub guard: &'a Guard,
}

/// Makes `target.workspace` the task's tree; `None` for a task of a commit alone.
pub async fn hydrate(task: &Task, target: Target<'_>, blobs: BlobSource<'_>) -> Result<Option<Synced>, HydrateError> {
    let task_id = task.id.to_string();
    let Some(manifest) = &task.manifest else {
        let made = workspace(task, &target, None).await?;
        evict_if_grown(target.cache, made.built);
        return Ok(None);
    };
    manifest.check()?;

    let bundle_file = target.task_dir.join("sync.bundle");
    let (bundle, bundle_commits) = match &manifest.base {
        Base::Unpushed { bundle } => {
            let bytes = blobs
                .client
                .get_blob(blobs.runner_token, &bundle.hash)
                .await
                .map_err(|source| HydrateError::Blob {
                    what: format!("{} (the bundle of unpushed commits)", bundle.hash.short()),
                    source,
                })?;
            std::fs::write(&bundle_file, bytes).map_err(io("write", &bundle_file))?;
            let prerequisites: Vec<String> = bundle.prerequisites.iter().map(|c| c.as_str().to_owned()).collect();
            (Some(prerequisites), bundle.commits)
        }
        _ => (None, 0),
    };
    let checked_out = workspace(
        task,
        &target,
        bundle
            .as_deref()
            .map(|prerequisites| (bundle_file.as_path(), prerequisites)),
    )
    .await;
    let _ = std::fs::remove_file(&bundle_file);
    let made = checked_out?;

    // Held shared until the overlay is applied: eviction passes an entry in use by.
    let lock = cache::lock_path(&target.cache.overlays.join(manifest.fingerprint.to_string()));
    let _in_use = tokio::task::spawn_blocking(move || cache::lock(&lock, Mode::Shared))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(io("lock", &target.cache.overlays))?;
    let (dir, cached) = overlay_blobs(manifest, target.cache, &task_id, blobs).await?;
    evict_if_grown(target.cache, made.built || !cached);
    let workspace = target.workspace.to_owned();
    let applied_manifest = manifest.clone();
    let applied = tokio::task::spawn_blocking(move || overlay::apply(&workspace, &applied_manifest, &dir))
        .await
        .map_err(|join| HydrateError::Io {
            what: "apply the overlay to",
            path: target.workspace.to_owned(),
            source: std::io::Error::other(join),
        })??;
    Ok(Some(Synced {
        fingerprint: applied.fingerprint,
        applied,
        cached,
        bundle_commits,
    }))
}

/// The task's workspace at its commit, copied from the runner's template of it.
async fn workspace(
    task: &Task,
    target: &Target<'_>,
    bundle: Option<(&Path, &[String])>,
) -> Result<template::Made, HydrateError> {
    Ok(template::workspace(
        &task.repo_url,
        &task.commit,
        target.workspace,
        target.limits,
        target.guard,
        &task.id.to_string(),
        target.cache,
        bundle,
    )
    .await?)
}

/// Brings the cache back under its bound in the background when it grew;
/// entries in use (this task's among them while it still holds them) stay.
fn evict_if_grown(cache: &Cache, grown: bool) {
    if !grown {
        return;
    }
    let cache = cache.clone();
    tokio::task::spawn_blocking(move || match cache::evict(&cache, cache.max_bytes) {
        Ok(evicted) if !evicted.entries.is_empty() => tracing::info!(
            entries = evicted.entries.len(),
            bytes = evicted.bytes,
            remaining = evicted.remaining,
            "evicted least-recently-used cache entries"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("could not evict from the runner's cache: {e}"),
    });
}

/// The directory holding every overlay blob of `manifest`, and whether it was already cached.
async fn overlay_blobs(
    manifest: &embark_core::manifest::Manifest,
    cache: &Cache,
    task_id: &str,
    blobs: BlobSource<'_>,
) -> Result<(PathBuf, bool), HydrateError> {
    let dir = cache.overlays.join(manifest.fingerprint.to_string());
    if dir.is_dir() {
        return Ok((dir, true));
    }
    std::fs::create_dir_all(&cache.overlays).map_err(io("create", &cache.overlays))?;
    let partial = cache
        .overlays
        .join(format!("{}.partial-{task_id}", manifest.fingerprint));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir(&partial).map_err(io("create", &partial))?;
    let mut wanted: Vec<_> = manifest.overlay.iter().filter_map(|e| e.change.blob()).collect();
    wanted.sort();
    wanted.dedup();
    for (hash, _) in wanted {
        let bytes = blobs
            .client
            .get_blob(blobs.runner_token, &hash)
            .await
            .map_err(|source| HydrateError::Blob {
                what: hash.short(),
                source,
            })?;
        let file = blob_file(&partial, &hash);
        std::fs::write(&file, bytes).map_err(io("write", &file))?;
    }
    // Whole or not at all: a task of the same fingerprint never sees half a cache entry.
    if std::fs::rename(&partial, &dir).is_err() && dir.is_dir() {
        // Another task of the same fingerprint got there first; its entry is as good.
        let _ = std::fs::remove_dir_all(&partial);
    } else if !dir.is_dir() {
        return Err(HydrateError::Io {
            what: "move into place",
            path: dir,
            source: std::io::Error::other("the overlay cache entry could not be renamed into place"),
        });
    }
    Ok((dir, false))
}
