//! The scan against git itself, on fixture repositories built with the git CLI: `HEAD` plus the
//! overlay must equal `git ls-files --cached --others --exclude-standard` read from the working
//! tree, and every overlay path must be one `git status --porcelain=v2` reports.

mod common;

use common::{Repo, assert_matches_git, plain};
use embark_core::manifest::{Change, FileMode};

fn kinds(scan: &embark_manifest::Scan) -> Vec<(String, &'static str)> {
    scan.manifest
        .overlay
        .iter()
        .map(|e| {
            let kind = match &e.change {
                Change::File {
                    mode: FileMode::Regular,
                    ..
                } => "file",
                Change::File {
                    mode: FileMode::Executable,
                    ..
                } => "exec",
                Change::Symlink { .. } => "symlink",
                Change::Submodule { .. } => "submodule",
                Change::Deleted => "deleted",
            };
            (e.path.to_string(), kind)
        })
        .collect()
}

fn base_repo() -> Repo {
    let repo = Repo::new();
    repo.write("README.md", "# fixture\n");
    repo.write("src/lib.rs", "pub fn a() {}\n");
    repo.write("src/keep.rs", "// unchanged\n");
    repo.write("docs/guide.md", "guide\n");
    repo.write(".gitignore", "*.log\n/ignored-dir/\n");
    repo.commit_all("initial");
    repo
}

#[test]
fn a_clean_tree_has_an_empty_overlay() {
    let repo = base_repo();
    let scan = assert_matches_git(&repo, &plain());
    assert!(scan.manifest.overlay.is_empty(), "{}", scan.summary());
    assert_eq!(scan.manifest.branch.as_deref(), Some("main"));
    assert_eq!(
        scan.manifest.commit.as_ref().map(|c| c.to_string()),
        Some(repo.git(&["rev-parse", "HEAD"]))
    );
}

#[test]
fn modified_staged_deleted_and_untracked_paths() {
    let repo = base_repo();
    repo.write("src/lib.rs", "pub fn a() { changed }\n"); // unstaged edit
    repo.write("docs/guide.md", "staged\n");
    repo.git(&["add", "docs/guide.md"]); // staged edit
    repo.write("docs/guide.md", "staged then edited again\n");
    repo.remove("README.md"); // unstaged deletion
    repo.git(&["rm", "-q", "src/keep.rs"]); // staged deletion
    repo.write("new.txt", "untracked\n");
    repo.write("newdir/deep/file.txt", "untracked in a new directory\n");
    repo.write("debug.log", "ignored\n");
    repo.write("ignored-dir/x", "ignored\n");
    repo.write("added.txt", "staged new file\n");
    repo.git(&["add", "added.txt"]);
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(
        kinds(&scan),
        [
            ("README.md".into(), "deleted"),
            ("added.txt".into(), "file"),
            ("docs/guide.md".into(), "file"),
            ("new.txt".into(), "file"),
            ("newdir/deep/file.txt".into(), "file"),
            ("src/keep.rs".into(), "deleted"),
            ("src/lib.rs".into(), "file"),
        ]
    );
}
