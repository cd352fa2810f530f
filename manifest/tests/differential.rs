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

#[test]
fn tracked_but_ignored_files_count() {
    let repo = base_repo();
    repo.write("build.log", "tracked although ignored\n");
    repo.git(&["add", "-f", "build.log"]);
    repo.commit_all("track an ignored file");
    repo.write("build.log", "edited\n");
    repo.write("other.log", "untracked and ignored\n");
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(kinds(&scan), [("build.log".into(), "file")]);
}

#[test]
fn an_ignored_file_dropped_from_the_index_is_deleted() {
    let repo = base_repo();
    repo.write("kept.log", "tracked\n");
    repo.git(&["add", "-f", "kept.log"]);
    repo.commit_all("track it");
    repo.git(&["rm", "-q", "--cached", "kept.log"]);
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(kinds(&scan), [("kept.log".into(), "deleted")]);
}

#[test]
fn renames_and_case_only_renames() {
    let repo = base_repo();
    repo.git(&["mv", "src/lib.rs", "src/renamed.rs"]);
    repo.git(&["mv", "README.md", "readme.md"]);
    repo.git(&["mv", "docs/guide.md", "docs/Guide.md"]);
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(
        kinds(&scan),
        [
            ("README.md".into(), "deleted"),
            ("docs/Guide.md".into(), "file"),
            ("docs/guide.md".into(), "deleted"),
            ("readme.md".into(), "file"),
            ("src/lib.rs".into(), "deleted"),
            ("src/renamed.rs".into(), "file"),
        ]
    );
}

#[test]
fn names_with_spaces_newlines_and_non_utf8_bytes() {
    let repo = base_repo();
    repo.write("with space.txt", "a\n");
    repo.write("new\nline.txt", "b\n");
    repo.write(b"caf\xe9/na\xefve\xff.txt", "c\n");
    repo.write("tab\there.txt", "d\n");
    repo.commit_all("odd names");
    repo.write("with space.txt", "edited\n");
    repo.remove("new\nline.txt");
    repo.write(b"caf\xe9/na\xefve\xff.txt", "edited\n");
    repo.write(b"untracked \x80\x81", "e\n");
    repo.write("\"quoted\" \\ name", "f\n");
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(scan.manifest.overlay.len(), 5, "{}", scan.summary());
    let json = scan.json();
    assert!(
        json.contains(r#""hex": "636166e92f6e61ef7665ff2e747874""#),
        "a non-UTF-8 path travels as hex: {json}"
    );
    let parsed: embark_core::manifest::Manifest = serde_json::from_str(&json).expect("JSON round trip");
    assert_eq!(parsed, scan.manifest);
}

#[test]
fn crlf_and_binary_bytes_are_untouched() {
    let repo = base_repo();
    repo.write("crlf.txt", "one\r\ntwo\r\n");
    repo.write("bin.dat", [0u8, 159, 146, 150, 0, 13, 10, 255]);
    repo.commit_all("crlf and binary");
    repo.write("crlf.txt", "one\r\ntwo\r\nthree\r\n");
    repo.write("bin.dat", [0u8, 13, 10, 13, 255, 0]);
    repo.write("new-crlf.txt", "a\r\nb\r\n");
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(scan.manifest.overlay.len(), 3);
}

#[test]
fn a_large_binary_is_hashed_whole() {
    let repo = base_repo();
    let big: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    repo.write("tracked.bin", &big[..1024]);
    repo.commit_all("small binary");
    repo.write("tracked.bin", &big[..5 * 1024 * 1024]); // tracked: needs git's blob id too
    repo.write("untracked.bin", &big); // untracked: memory-mapped multi-threaded hashing
    let mut config = plain();
    config.bounds.max_file_bytes = 16 << 20;
    config.bounds.max_bytes = 32 << 20;
    let scan = assert_matches_git(&repo, &config);
    assert_eq!(scan.manifest.totals.overlay_bytes, (5 + 6) * 1024 * 1024);
}

#[test]
fn a_deleted_file_recreated_as_a_directory() {
    let repo = base_repo();
    repo.remove("docs/guide.md");
    repo.write("docs/guide.md/part1.md", "now a directory\n");
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(
        kinds(&scan),
        [
            ("docs/guide.md".into(), "deleted"),
            ("docs/guide.md/part1.md".into(), "file")
        ]
    );
}

#[test]
fn symlinks_and_type_changes() {
    let repo = base_repo();
    repo.symlink("src/lib.rs", "link-to-lib");
    repo.symlink("docs", "link-to-dir");
    repo.commit_all("symlinks");
    repo.remove("docs/guide.md");
    repo.symlink("../README.md", "docs/guide.md"); // file replaced by a symlink
    repo.remove("link-to-lib");
    repo.write("link-to-lib", "symlink replaced by a file\n"); // symlink replaced by a file
    repo.remove("link-to-dir");
    repo.symlink("src", "link-to-dir"); // retargeted
    repo.symlink(b"dangling \xff target", "dangling"); // untracked, dangling, odd target bytes
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(
        kinds(&scan),
        [
            ("dangling".into(), "symlink"),
            ("docs/guide.md".into(), "symlink"),
            ("link-to-dir".into(), "symlink"),
            ("link-to-lib".into(), "file"),
        ]
    );
}

#[test]
fn a_directory_behind_a_symlink_is_not_read_through_it() {
    let repo = base_repo();
    let elsewhere = repo._tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("lib.rs"), "outside the repository\n").expect("write");
    std::fs::write(elsewhere.join("keep.rs"), "// unchanged\n").expect("write");
    repo.remove("src");
    std::os::unix::fs::symlink(&elsewhere, repo.path("src")).expect("symlink");
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(
        kinds(&scan),
        [
            ("src".into(), "symlink"),
            ("src/keep.rs".into(), "deleted"),
            ("src/lib.rs".into(), "deleted")
        ]
    );
}

#[test]
fn entries_whose_stat_settles_them_never_reach_gix_and_the_rest_do() {
    // Files older than the index they were added to: their stat alone says they are unchanged.
    let repo = Repo::new();
    for i in 0..100 {
        repo.write(format!("d{}/f{i}.txt", i % 10), format!("file {i}\n"));
    }
    repo.write(".gitignore", "*.log\n");
    repo.settle();
    repo.commit_all("a hundred");
    let clean = assert_matches_git(&repo, &plain());
    assert!(clean.manifest.overlay.is_empty(), "{}", clean.summary());
    assert_eq!(
        clean.stats.index_entries_checked, 1,
        "only .gitignore goes to gix: {:?}",
        clean.stats
    );
    // Reached through a symlink to the working tree itself: the same, as for git.
    let link = repo._tmp.path().join("link-to-work");
    std::os::unix::fs::symlink(&repo.root, &link).expect("symlink");
    let through_link = embark_manifest::scan(&link, &plain()).expect("scan through the link");
    assert_eq!(through_link.manifest.overlay, clean.manifest.overlay);
    assert_eq!(through_link.stats.index_entries_checked, 1, "{:?}", through_link.stats);

    repo.write("d1/f1.txt", "changed\n");
    repo.chmod("d2/f2.txt", 0o755);
    repo.remove("d3/f3.txt");
    // The same files, same inodes and stat, now reached through a symlinked directory: git sees
    // them deleted (and the link and the moved directory untracked), so the pass must not settle them.
    std::fs::rename(repo.path("d0"), repo.path("moved")).expect("rename");
    repo.symlink("moved", "d0");
    let scan = assert_matches_git(&repo, &plain());
    let deleted = kinds(&scan)
        .iter()
        .filter(|(p, k)| p.starts_with("d0/") && *k == "deleted")
        .count();
    assert_eq!(deleted, 10, "{}", scan.summary());
    assert_eq!(
        scan.stats.index_entries_checked,
        1 + 3 + 10,
        ".gitignore, the three changed files and the ten behind the link: {:?}",
        scan.stats
    );
}

#[test]
fn mode_changes_staged_and_unstaged() {
    let repo = base_repo();
    repo.write("run.sh", "#!/bin/sh\necho hi\n");
    repo.chmod("run.sh", 0o755);
    repo.commit_all("a script");
    repo.chmod("run.sh", 0o644); // unstaged: lost its bit
    repo.chmod("src/lib.rs", 0o755);
    repo.git(&["add", "src/lib.rs"]); // staged: gained one
    repo.write("new.sh", "#!/bin/sh\n");
    repo.chmod("new.sh", 0o700);
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(
        kinds(&scan),
        [
            ("new.sh".into(), "exec"),
            ("run.sh".into(), "file"),
            ("src/lib.rs".into(), "exec")
        ]
    );
}

#[test]
fn a_staged_change_reverted_in_the_working_tree_leaves_no_trace() {
    let repo = base_repo();
    let clean = embark_manifest::scan(&repo.root, &plain()).expect("scan");
    repo.write("src/lib.rs", "staged\n");
    repo.git(&["add", "src/lib.rs"]);
    repo.write("src/lib.rs", "pub fn a() {}\n");
    let scan = assert_matches_git(&repo, &plain());
    assert!(scan.manifest.overlay.is_empty(), "{}", scan.summary());
    assert_eq!(scan.manifest.fingerprint, clean.manifest.fingerprint);
}

#[test]
fn intent_to_add_and_merge_conflicts() {
    let repo = base_repo();
    repo.git(&["checkout", "-q", "-b", "other"]);
    repo.write("src/lib.rs", "theirs\n");
    repo.commit_all("theirs");
    repo.git(&["checkout", "-q", "main"]);
    repo.write("src/lib.rs", "ours\n");
    repo.commit_all("ours");
    let merge = common::git_output_status(&repo.root, &["merge", "-q", "other"]);
    assert!(!merge, "the merge conflicts");
    repo.write("planned.txt", "intent to add\n");
    repo.git(&["add", "-N", "planned.txt"]);
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(
        kinds(&scan),
        [("planned.txt".into(), "file"), ("src/lib.rs".into(), "file")]
    );
    let conflicted = scan.blob(&match &scan.manifest.overlay[1].change {
        Change::File { hash, .. } => *hash,
        other => panic!("{other:?}"),
    });
    assert!(
        String::from_utf8_lossy(&conflicted.expect("blob")).contains("<<<<<<<"),
        "conflict markers as on disk"
    );
}

#[test]
fn an_empty_repository_without_head() {
    let repo = Repo::new();
    let scan = assert_matches_git(&repo, &plain());
    assert!(scan.manifest.overlay.is_empty());
    assert_eq!(scan.manifest.commit, None);
    assert_eq!(scan.manifest.base, embark_core::manifest::Base::Unborn);
    repo.write("a.txt", "first\n");
    repo.write("b/c.txt", "staged\n");
    repo.git(&["add", "b/c.txt"]);
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(kinds(&scan), [("a.txt".into(), "file"), ("b/c.txt".into(), "file")]);
    assert_eq!(scan.manifest.branch.as_deref(), Some("main"));
}

#[test]
fn a_detached_head() {
    let repo = base_repo();
    repo.write("second.txt", "2\n");
    let second = repo.commit_all("second");
    repo.git(&["checkout", "-q", "--detach", "HEAD~1"]);
    repo.write("src/lib.rs", "edited on a detached head\n");
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(scan.manifest.branch, None);
    assert_ne!(scan.manifest.commit.as_ref().map(|c| c.to_string()), Some(second));
    assert_eq!(kinds(&scan), [("src/lib.rs".into(), "file")]);
}

#[test]
fn submodules_and_nested_repositories_are_recorded_not_descended() {
    let repo = base_repo();
    let sub_origin = repo._tmp.path().join("sub-origin");
    std::fs::create_dir(&sub_origin).expect("mkdir");
    common::git(&sub_origin, &["init", "-q", "-b", "main"]);
    std::fs::write(sub_origin.join("s.txt"), "v1\n").expect("write");
    common::git(&sub_origin, &["add", "."]);
    common::git(&sub_origin, &["commit", "-q", "-m", "v1"]);
    std::fs::write(sub_origin.join("s.txt"), "v2\n").expect("write");
    common::git(&sub_origin, &["commit", "-q", "-am", "v2"]);
    let v2 = common::git(&sub_origin, &["rev-parse", "HEAD"]);
    let url = sub_origin.to_str().expect("utf-8 path");
    repo.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        url,
        "vendor/sub",
    ]);
    repo.git(&["-C", "vendor/sub", "checkout", "-q", "HEAD~1"]);
    repo.commit_all("add a submodule at v1");
    let scan = assert_matches_git(&repo, &plain());
    assert!(scan.manifest.overlay.is_empty(), "{}", scan.summary());
    assert_eq!(scan.manifest.nested.len(), 1);
    assert!(scan.manifest.nested[0].tracked);

    // Checked out at another commit: a gitlink change. Dirt inside it is not synced.
    repo.git(&["-C", "vendor/sub", "checkout", "-q", &v2]);
    repo.write("vendor/sub/untracked-inside.txt", "not synced\n");
    // An untracked repository inside the tree: recorded with its commit, not descended.
    let nested = repo.path("tools/nested");
    std::fs::create_dir_all(&nested).expect("mkdir");
    common::git(&nested, &["init", "-q", "-b", "main"]);
    std::fs::write(nested.join("n.txt"), "inside\n").expect("write");
    common::git(&nested, &["add", "."]);
    common::git(&nested, &["commit", "-q", "-m", "n"]);
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(kinds(&scan), [("vendor/sub".into(), "submodule")]);
    match &scan.manifest.overlay[0].change {
        Change::Submodule { commit } => assert_eq!(commit.to_string(), v2),
        other => panic!("{other:?}"),
    }
    let nested_record = scan
        .manifest
        .nested
        .iter()
        .find(|n| !n.tracked)
        .expect("the nested repository");
    assert_eq!(nested_record.path.to_string(), "tools/nested");
    assert_eq!(
        nested_record.commit.as_ref().map(|c| c.to_string()),
        Some(common::git(&nested, &["rev-parse", "HEAD"]))
    );
}

#[test]
fn skip_worktree_and_sparse_entries_come_from_the_index() {
    let repo = base_repo();
    repo.write("sparse/a.txt", "a\n");
    repo.write("dense/b.txt", "b\n");
    repo.commit_all("dirs");
    // skip-worktree with the file edited on disk: git ignores the working tree, so do we.
    repo.git(&["update-index", "--skip-worktree", "src/lib.rs"]);
    repo.write("src/lib.rs", "local edit git does not see\n");
    let scan = assert_matches_git(&repo, &plain());
    assert!(scan.manifest.overlay.is_empty(), "{}", scan.summary());

    // A staged blob under skip-worktree travels from the index.
    let blob = {
        let out = std::process::Command::new("git")
            .current_dir(&repo.root)
            .args(["hash-object", "-w", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(b"staged under skip-worktree\n")?;
                c.wait_with_output()
            })
            .expect("hash-object");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    repo.git(&["update-index", "--cacheinfo", &format!("100644,{blob},docs/guide.md")]);
    repo.git(&["update-index", "--skip-worktree", "docs/guide.md"]);
    repo.remove("docs/guide.md");
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(kinds(&scan), [("docs/guide.md".into(), "file")]);

    // A sparse checkout: paths outside the cone are absent on disk, not deleted.
    let repo = base_repo();
    repo.write("sparse/a.txt", "a\n");
    repo.write("dense/b.txt", "b\n");
    repo.commit_all("dirs");
    repo.git(&["sparse-checkout", "set", "--no-cone", "/dense/"]);
    assert!(!repo.path("sparse/a.txt").exists());
    repo.write("dense/b.txt", "edited\n");
    let scan = assert_matches_git(&repo, &plain());
    assert_eq!(kinds(&scan), [("dense/b.txt".into(), "file")]);
}

#[test]
fn a_linked_worktree_is_scanned_with_its_own_index_and_cache() {
    let repo = base_repo();
    let linked = repo._tmp.path().join("linked");
    repo.git(&["worktree", "add", "-q", "-b", "side", linked.to_str().expect("utf-8")]);
    std::fs::write(linked.join("src/lib.rs"), "edited in the linked worktree\n").expect("write");
    std::fs::write(linked.join("only-here.txt"), "untracked\n").expect("write");
    // A scan start well after the writes, so the racy rule lets the cache keep them.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
    let scan = embark_manifest::scan_at(&linked, &plain(), later).expect("scan");
    assert_eq!(
        kinds(&scan),
        [("only-here.txt".into(), "file"), ("src/lib.rs".into(), "file")]
    );
    assert_eq!(scan.manifest.branch.as_deref(), Some("side"));
    let git_dir = std::path::PathBuf::from(common::git(&linked, &["rev-parse", "--absolute-git-dir"]));
    assert!(
        git_dir.join("embark/stat-cache").exists(),
        "the cache lives in the worktree's own git dir"
    );
    let main_git_dir = repo.root.join(".git");
    assert!(
        !main_git_dir.join("embark/stat-cache").exists(),
        "not in the main worktree's"
    );
    let again = embark_manifest::scan_at(&linked, &plain(), later).expect("scan");
    assert_eq!((again.stats.cache_hits, again.stats.hashed_files), (2, 0));
    // The main worktree is untouched by the linked one's edits.
    assert!(assert_matches_git(&repo, &plain()).manifest.overlay.is_empty());
}
