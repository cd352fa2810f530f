//! The manifest for people (`embark-sidecar manifest`) and for programs (`--json`).

use std::fmt::Write;

use embark_core::manifest::{Base, Change, FileMode, Manifest};

/// `1.5 KiB`, `2.0 MiB`; bytes below 1 KiB as they are.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The JSON form: the manifest itself, as sent.
pub fn json(manifest: &Manifest) -> String {
    serde_json::to_string_pretty(manifest).expect("a manifest always serializes")
}

/// The human summary: commit, bundle, each overlay entry, excluded paths, totals, fingerprint.
pub fn summary(manifest: &Manifest) -> String {
    let mut out = String::new();
    let commit = manifest.commit.as_ref().map_or("(none: no commit yet)", |c| c.short());
    let branch = manifest
        .branch
        .as_deref()
        .map_or_else(|| "detached HEAD".to_owned(), |b| format!("on {b}"));
    let _ = writeln!(out, "commit    {commit} ({branch})");
    let base = match &manifest.base {
        Base::Unborn => "no commit yet; the overlay is the whole tree".to_owned(),
        Base::Pushed { remote_ref } => format!("on the remote ({remote_ref}); no bundle"),
        Base::Unpushed { bundle } => format!(
            "{} commit(s) not on the remote, sent as a bundle of {} ({})",
            bundle.commits,
            human_bytes(bundle.size),
            bundle.hash.short()
        ),
        Base::NeverPushed { remote: Some(remote) } => {
            format!("no ancestor of HEAD is on {remote}: push the branch first, a runner cannot fetch it")
        }
        Base::NeverPushed { remote: None } => {
            "no ancestor of HEAD is on any remote: push the branch first, a runner cannot fetch it".to_owned()
        }
    };
    let _ = writeln!(out, "base      {base}");

    let _ = writeln!(out, "overlay   {} path(s)", manifest.overlay.len());
    for entry in &manifest.overlay {
        let (kind, mode, size, hash) = match &entry.change {
            Change::File { mode, size, hash } => {
                let kind = if *mode == FileMode::Executable { "exec" } else { "file" };
                (kind, entry.change.git_mode(), human_bytes(*size), hash.short())
            }
            Change::Symlink { size, hash } => ("link", entry.change.git_mode(), human_bytes(*size), hash.short()),
            Change::Submodule { commit } => ("sub", entry.change.git_mode(), String::new(), commit.short().to_owned()),
            Change::Deleted => ("deleted", 0, String::new(), String::new()),
        };
        let mode = if mode == 0 { String::new() } else { format!("{mode:o}") };
        let _ = writeln!(out, "  {kind:<7} {mode:<6} {size:>10}  {hash:<12}  {}", entry.path);
    }
    if !manifest.nested.is_empty() {
        let _ = writeln!(
            out,
            "nested    {} repositor(y/ies), recorded, not synced inside",
            manifest.nested.len()
        );
        for n in &manifest.nested {
            let commit = n.commit.as_ref().map_or("(no commit)", |c| c.short());
            let what = if n.tracked { "submodule" } else { "untracked repository" };
            let _ = writeln!(out, "  {what:<20} {commit:<12}  {}", n.path);
        }
    }
    if !manifest.excluded.is_empty() {
        let _ = writeln!(out, "excluded  {} path(s)", manifest.excluded.len());
        for e in &manifest.excluded {
            let slash = if e.is_dir { "/" } else { "" };
            let _ = writeln!(out, "  {}{slash}  ({})", e.path, e.rule);
        }
    }
    let t = &manifest.totals;
    let _ = writeln!(
        out,
        "totals    {} file(s), {} deletion(s), {} submodule change(s); {} overlay + {} bundle",
        t.files,
        t.deleted,
        t.submodules,
        human_bytes(t.overlay_bytes),
        human_bytes(t.bundle_bytes)
    );
    let _ = writeln!(out, "fingerprint {}", manifest.fingerprint);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1023), "1023 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(2 * 1024 * 1024), "2.0 MiB");
    }
}
