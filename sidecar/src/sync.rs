//! What a submit sends of the working tree: the manifest (through
//! `embark-manifest`), and the blobs the broker lacks.
//!
//! The scan fails before anything is sent when a bound is exceeded (naming
//! the largest offenders and the exclude that would drop them) or when no
//! runner could fetch the commit (a repository never pushed).

use std::path::Path;

use embark_client::BrokerClient;
use embark_core::manifest::{Base, ContentHash};
use embark_manifest::{ManifestError, Scan};

use crate::config::SyncSettings;
use crate::error::RpcError;
use crate::handlers::broker_error;

/// Scans the repository at `root` as a runner will see it through `remote`.
pub async fn scan(root: &Path, remote: Option<&str>, settings: &SyncSettings) -> Result<Scan, RpcError> {
    let root = root.to_owned();
    let config = settings.scan_config(remote);
    tokio::task::spawn_blocking(move || embark_manifest::scan(&root, &config))
        .await
        .map_err(|e| {
            RpcError::new(
                embark_core::protocol::ErrorCode::Internal,
                format!("the scan failed: {e}"),
            )
        })?
        .map_err(scan_error)
}

fn scan_error(error: ManifestError) -> RpcError {
    RpcError::repository(embark_core::text::error_chain(&error))
}

/// Refuses a manifest no runner could use, before anything is sent.
pub fn check_sendable(scan: &Scan, remote: &str) -> Result<(), RpcError> {
    match &scan.manifest.base {
        Base::Pushed { .. } | Base::Unpushed { .. } => Ok(()),
        Base::Unborn => Err(RpcError::repository(
            "the repository has no commit yet: commit your work first (tasks run at a commit). Nothing was sent.",
        )),
        Base::NeverPushed { .. } => Err(RpcError::repository(format!(
            "no commit of this branch is on the remote {remote}, so no runner can fetch it: push the branch once \
             (`git push -u {remote} HEAD`), then submit again. Nothing was sent."
        ))),
    }
}

/// What an upload did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uploaded {
    pub blobs: u64,
    pub bytes: u64,
}

/// Uploads the manifest's blobs the broker lacks, each read back and
/// verified against its hash first (a file edited since the scan fails).
pub async fn upload(client: &BrokerClient, secret: &str, scan: &Scan) -> Result<Uploaded, RpcError> {
    let wanted: Vec<ContentHash> = scan.manifest.blobs().into_iter().map(|(hash, _)| hash).collect();
    if wanted.is_empty() {
        return Ok(Uploaded::default());
    }
    let missing = client.missing_blobs(secret, &wanted).await.map_err(broker_error)?;
    let mut uploaded = Uploaded::default();
    for hash in missing {
        let bytes = scan.blob(&hash).map_err(scan_error)?;
        uploaded.bytes += bytes.len() as u64;
        client.put_blob(secret, &hash, bytes).await.map_err(broker_error)?;
        uploaded.blobs += 1;
    }
    Ok(uploaded)
}
