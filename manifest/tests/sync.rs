//! Excludes, the stat cache's racy rule, fingerprints, bounds, unpushed commits and rendering,
//! on real repositories built with the git CLI.

mod common;

use std::time::{Duration, SystemTime};

use common::{Repo, assert_matches_git, isolated, later, plain};
use embark_core::manifest::{Base, Change, RuleSource};
use embark_manifest::{Exceeded, ManifestError, SyncConfig, scan, scan_at};

fn base_repo() -> Repo {
    let repo = Repo::new();
    repo.write("README.md", "# fixture\n");
    repo.write("src/lib.rs", "pub fn a() {}\n");
    repo.write(".gitignore", "*.log\n");
    repo.commit_all("initial");
    repo
}

fn paths(scan: &embark_manifest::Scan) -> Vec<String> {
    scan.manifest.overlay.iter().map(|e| e.path.to_string()).collect()
}

#[test]
fn default_config_and_embarkignore_excludes_are_reported_with_their_rule() {
    let repo = base_repo();
    repo.write("web/node_modules/react/index.js", "dependency\n");
    repo.write("web/node_modules/react/package.json", "{}\n");
    repo.write("target/debug/app", "build output\n");
    repo.write("tmp/scratch.txt", "config exclude\n");
    repo.write("notes/todo.draft", "embarkignore exclude\n");
    repo.write("dist/keep.js", "re-included by .embarkignore\n");
    repo.write(".embarkignore", "*.draft\n!dist/\n");
    repo.write("src/new.rs", "kept\n");
    // A tracked file under an excluded directory is still synced: git tracks it.
    repo.write("build/tracked.txt", "v1\n");
    repo.git(&["add", "-f", "build/tracked.txt"]);
    repo.git(&["commit", "-q", "-m", "tracked build file"]);
    repo.write("build/tracked.txt", "v2\n");
    repo.write("build/untracked.o", "dropped\n");

    let config = SyncConfig {
        extra_excludes: vec!["tmp/".into()],
        ..isolated()
    };
    let scan = scan(&repo.root, &config).expect("scan");
    assert_eq!(
        paths(&scan),
        [".embarkignore", "build/tracked.txt", "dist/keep.js", "src/new.rs"]
    );
    let mut excluded: Vec<_> = scan
        .manifest
        .excluded
        .iter()
        .map(|e| (e.path.to_string(), e.is_dir, e.rule.source, e.rule.pattern.clone()))
        .collect();
    excluded.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        excluded,
        [
            (
                "build/untracked.o".to_owned(),
                false,
                RuleSource::Default,
                "build/".to_owned()
            ),
            (
                "notes/todo.draft".into(),
                false,
                RuleSource::Embarkignore,
                "*.draft".into()
            ),
            ("target".into(), true, RuleSource::Default, "target/".into()),
            ("tmp".into(), true, RuleSource::Config, "tmp/".into()),
            (
                "web/node_modules".into(),
                true,
                RuleSource::Default,
                "node_modules/".into()
            ),
        ]
    );
    assert_eq!(excluded.len(), 5, "{excluded:?}");
    assert_eq!(scan.manifest.totals.excluded, 5);
    let summary = scan.summary();
    assert!(
        summary.contains("web/node_modules/  (default exclude `node_modules/`)"),
        "{summary}"
    );
    assert!(summary.contains("tmp/  (EMBARK_SYNC_EXCLUDES `tmp/`)"), "{summary}");
}

#[test]
fn a_same_size_rewrite_within_the_same_mtime_second_is_rehashed() {
    let repo = base_repo();
    let file = repo.path("notes.txt");
    std::fs::write(&file, "aaaa\n").expect("write");
    let second = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("clock")
                .as_secs(),
        );
    let set_mtime = || {
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(second))
            .expect("set mtime")
    };
    set_mtime();
    let first = scan(&repo.root, &plain()).expect("scan");
    // Same size, same mtime (set back to the same second), new bytes.
    std::fs::write(&file, "bbbb\n").expect("rewrite");
    set_mtime();
    let second_scan = scan(&repo.root, &plain()).expect("scan");
    assert_ne!(first.manifest.fingerprint, second_scan.manifest.fingerprint);
    assert_eq!(
        second_scan.stats.cache_hits, 0,
        "a file changed in the scan's second is never trusted"
    );
    let hash = second_scan.manifest.overlay[0].change.blob().expect("blob").0;
    assert_eq!(second_scan.blob(&hash).expect("blob"), b"bbbb\n");
}

#[test]
fn settled_files_are_not_hashed_again_and_a_change_is_seen() {
    let repo = base_repo();
    for i in 0..20 {
        repo.write(format!("u/{i}.txt"), format!("untracked {i}\n"));
    }
    repo.write("src/lib.rs", "modified\n");
    let first = scan_at(&repo.root, &plain(), later()).expect("scan");
    assert_eq!((first.stats.hashed_files, first.stats.cache_hits), (21, 0));
    let warm = scan_at(&repo.root, &plain(), later()).expect("scan");
    assert_eq!((warm.stats.hashed_files, warm.stats.cache_hits), (0, 21));
    assert_eq!(warm.manifest, first.manifest);

    repo.write("u/3.txt", "changed, same length!\n");
    let changed = scan_at(&repo.root, &plain(), later()).expect("scan");
    assert_eq!((changed.stats.hashed_files, changed.stats.cache_hits), (1, 20));
    assert_ne!(changed.manifest.fingerprint, first.manifest.fingerprint);

    let cache = repo.root.join(".git/embark/stat-cache");
    std::fs::write(&cache, b"garbage").expect("corrupt the cache");
    let recovered = scan_at(&repo.root, &plain(), later()).expect("a broken cache is ignored");
    assert_eq!(recovered.manifest, changed.manifest);
}

#[test]
fn the_fingerprint_is_the_same_for_the_same_tree_anywhere() {
    let a = base_repo();
    let b = base_repo();
    for repo in [&a, &b] {
        repo.write("src/lib.rs", "same edit\n");
        repo.write("new/file.txt", "same new file\n");
        repo.remove("README.md");
    }
    // Different commit ids would differ; these fixtures commit with fixed dates and authors.
    assert_eq!(a.git(&["rev-parse", "HEAD"]), b.git(&["rev-parse", "HEAD"]));
    let fa = scan(&a.root, &plain()).expect("scan").manifest.fingerprint;
    let fb = scan(&b.root, &plain()).expect("scan").manifest.fingerprint;
    assert_eq!(fa, fb);
    // Rescanning gives the same, and the JSON's fingerprint checks out on the other side.
    let again = scan(&a.root, &plain()).expect("scan");
    assert_eq!(again.manifest.fingerprint, fa);
    let received: embark_core::manifest::Manifest = serde_json::from_str(&again.json()).expect("json");
    received.check().expect("the fingerprint verifies");
}

#[test]
fn any_change_of_content_mode_path_deletion_or_config_changes_the_fingerprint() {
    let repo = base_repo();
    repo.write("src/lib.rs", "edit\n");
    let fp = |config: &SyncConfig| scan(&repo.root, config).expect("scan").manifest.fingerprint;
    let mut seen = vec![fp(&plain())];
    let mut differs = |what: &str, f: embark_core::manifest::Fingerprint| {
        assert!(!seen.contains(&f), "{what} must change the fingerprint");
        seen.push(f);
    };
    repo.write("src/lib.rs", "edit 2\n");
    differs("content", fp(&plain()));
    repo.chmod("src/lib.rs", 0o755);
    differs("mode", fp(&plain()));
    std::fs::rename(repo.path("src/lib.rs"), repo.path("src/lib2.rs")).expect("rename");
    differs("path", fp(&plain()));
    repo.remove("README.md");
    differs("deletion", fp(&plain()));
    differs(
        "sync config",
        fp(&SyncConfig {
            extra_excludes: vec!["nothing-matches/".into()],
            ..plain()
        }),
    );
    differs("default excludes", fp(&isolated()));
    repo.write(".embarkignore", "# no rules\n");
    differs(".embarkignore", fp(&isolated()));
}

#[test]
fn too_many_files_names_the_directory_and_the_exclude() {
    let repo = base_repo();
    for i in 0..12 {
        repo.write(format!("generated/{i}.js"), "x\n");
    }
    repo.write("src/one.rs", "y\n");
    let mut config = plain();
    config.bounds.max_files = 10;
    let error = scan(&repo.root, &config).expect_err("over the file bound");
    let ManifestError::Bounds(bounds) = &error else {
        panic!("{error}")
    };
    assert_eq!(bounds.exceeded, Exceeded::Files { count: 13, max: 10 });
    assert_eq!(
        bounds.offenders[0].path.as_ref().map(|p| p.to_string()).as_deref(),
        Some("generated")
    );
    let message = error.to_string();
    assert!(message.contains("generated/ (12 paths"), "{message}");
    assert!(message.contains("add `generated/` to .embarkignore"), "{message}");
    assert!(message.contains("EMBARK_SYNC_MAX_FILES"), "{message}");
}

#[test]
fn too_many_bytes_names_the_largest_files_and_what_drops_them() {
    let repo = base_repo();
    repo.write("assets/big.bin", vec![7u8; 600 * 1024]);
    repo.write("huge.dat", vec![8u8; 700 * 1024]);
    repo.write("src/lib.rs", vec![b'a'; 500 * 1024]); // tracked
    let mut config = plain();
    config.bounds.max_bytes = 1024 * 1024;
    let error = scan(&repo.root, &config).expect_err("over the byte bound");
    let message = error.to_string();
    let ManifestError::Bounds(bounds) = &error else {
        panic!("{error}")
    };
    assert!(
        matches!(bounds.exceeded, Exceeded::Bytes { total, .. } if total == 1800 * 1024),
        "{message}"
    );
    let named: Vec<_> = bounds
        .offenders
        .iter()
        .map(|o| o.path.as_ref().map(|p| p.to_string()))
        .collect();
    assert_eq!(
        named,
        [
            Some("huge.dat".into()),
            Some("assets/big.bin".into()),
            Some("src/lib.rs".into())
        ]
    );
    assert!(message.contains("add `/huge.dat` to .embarkignore"), "{message}");
    assert!(message.contains("add `assets/` to .embarkignore"), "{message}");
    assert!(
        message.contains("it is tracked: commit and push it, or restore it"),
        "{message}"
    );
}

#[test]
fn a_file_over_the_per_file_cap_fails_before_it_is_read() {
    let repo = base_repo();
    repo.write("dump.sql", vec![b'-'; 3 * 1024 * 1024]);
    let error = scan(&repo.root, &plain()).expect_err("over the per-file cap");
    let ManifestError::Bounds(bounds) = &error else {
        panic!("{error}")
    };
    assert!(matches!(bounds.exceeded, Exceeded::FileBytes { count: 1, .. }));
    assert!(error.to_string().contains("dump.sql (3.0 MiB)"), "{error}");
}

#[test]
fn unpushed_commits_travel_as_a_bundle_and_count_in_the_bounds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let origin = tmp.path().join("origin.git");
    common::git(
        tmp.path(),
        &["init", "-q", "--bare", "-b", "main", origin.to_str().expect("utf-8")],
    );
    let repo = base_repo();
    let config = SyncConfig {
        remote: Some("origin".into()),
        ..plain()
    };

    // No remote at all: nothing a runner could fetch.
    let scan0 = scan(&repo.root, &config).expect("scan");
    assert_eq!(
        scan0.manifest.base,
        Base::NeverPushed {
            remote: Some("origin".into())
        }
    );

    repo.git(&["remote", "add", "origin", origin.to_str().expect("utf-8")]);
    repo.git(&["push", "-q", "origin", "main"]);
    let pushed = scan(&repo.root, &config).expect("scan");
    assert_eq!(
        pushed.manifest.base,
        Base::Pushed {
            remote_ref: "origin/main".into()
        }
    );
    assert!(pushed.summary().contains("on the remote (origin/main)"));

    repo.write("local.txt", "a local-only commit\n");
    repo.commit_all("local one");
    repo.write("local.txt", "and another\n");
    let head = repo.commit_all("local two");
    let unpushed = scan(&repo.root, &config).expect("scan");
    let Base::Unpushed { bundle } = &unpushed.manifest.base else {
        panic!("{:?}", unpushed.manifest.base)
    };
    assert_eq!(bundle.commits, 2);
    assert_eq!(bundle.prerequisites.len(), 1);
    assert_eq!(unpushed.manifest.totals.bundle_bytes, bundle.size);
    assert!(unpushed.manifest.blobs().contains(&(bundle.hash, bundle.size)));

    // The bundle is a real one: a clone of the remote can fetch HEAD from it.
    let bytes = unpushed.blob(&bundle.hash).expect("bundle bytes");
    let bundle_file = tmp.path().join("head.bundle");
    std::fs::write(&bundle_file, &bytes).expect("write bundle");
    let clone = tmp.path().join("clone");
    common::git(
        tmp.path(),
        &[
            "clone",
            "-q",
            origin.to_str().expect("utf-8"),
            clone.to_str().expect("utf-8"),
        ],
    );
    common::git(&clone, &["fetch", "-q", bundle_file.to_str().expect("utf-8"), "HEAD"]);
    assert_eq!(common::git(&clone, &["rev-parse", "FETCH_HEAD"]), head);

    // The bundle counts against the byte bound.
    let tight = SyncConfig {
        bounds: embark_manifest::Bounds {
            max_bytes: bundle.size - 1,
            ..Default::default()
        },
        ..config.clone()
    };
    let error = scan(&repo.root, &tight).expect_err("the bundle alone is over");
    assert!(error.to_string().contains("the bundle of unpushed commits"), "{error}");
    assert!(error.to_string().contains("push those commits first"), "{error}");

    // A branch with no history on the remote at all.
    repo.git(&["checkout", "-q", "--orphan", "fresh"]);
    repo.commit_all("unrelated root");
    let fresh = scan(&repo.root, &config).expect("scan");
    assert_eq!(
        fresh.manifest.base,
        Base::NeverPushed {
            remote: Some("origin".into())
        }
    );
    assert!(fresh.summary().contains("push the branch first"));
}

#[test]
fn the_summary_shows_every_part_and_json_round_trips() {
    let repo = base_repo();
    repo.write("src/lib.rs", "edit\n");
    repo.write("run.sh", "#!/bin/sh\n");
    repo.chmod("run.sh", 0o755);
    repo.symlink("src/lib.rs", "link");
    repo.remove("README.md");
    repo.write("node_modules/x/index.js", "dep\n");
    let scan = scan(&repo.root, &isolated()).expect("scan");
    let summary = scan.summary();
    let commit = repo.git(&["rev-parse", "HEAD"]);
    for needle in [
        format!("commit    {} (on main)", &commit[..12]),
        "base      no ancestor of HEAD is on any remote".into(),
        "overlay   4 path(s)".into(),
        "  deleted                                  README.md".into(),
        "  link    120000".into(),
        "  exec    100755".into(),
        "  file    100644".into(),
        "node_modules/  (default exclude `node_modules/`)".into(),
        "totals    3 file(s), 1 deletion(s)".into(),
        format!("fingerprint {}", scan.manifest.fingerprint),
    ] {
        assert!(summary.contains(&needle), "missing {needle:?} in\n{summary}");
    }
    let hash = match &scan
        .manifest
        .overlay
        .iter()
        .find(|e| e.path.to_string() == "src/lib.rs")
        .expect("entry")
        .change
    {
        Change::File { hash, .. } => *hash,
        other => panic!("{other:?}"),
    };
    assert!(summary.contains(&hash.short()));
    let json: serde_json::Value = serde_json::from_str(&scan.json()).expect("json");
    assert_eq!(
        json["overlay"][0],
        serde_json::json!({ "path": "README.md", "kind": "deleted" })
    );
    assert_eq!(
        json["fingerprint"],
        serde_json::json!(scan.manifest.fingerprint.to_string())
    );
}

#[test]
fn a_blob_edited_after_the_scan_is_refused() {
    let repo = base_repo();
    repo.write("src/lib.rs", "scanned\n");
    let scan = scan(&repo.root, &plain()).expect("scan");
    let hash = scan.manifest.overlay[0].change.blob().expect("blob").0;
    repo.write("src/lib.rs", "edited after\n");
    let error = scan.blob(&hash).expect_err("changed since the scan");
    assert!(matches!(error, ManifestError::ChangedSinceScan { .. }), "{error}");
    assert!(matches!(
        scan.blob(&embark_core::manifest::ContentHash([1; 32])),
        Err(ManifestError::UnknownBlob(_))
    ));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let error = scan(dir.path(), &plain()).expect_err("not a repository");
    assert!(error.to_string().contains("is not inside a git repository"), "{error}");
    let bare = dir.path().join("bare.git");
    common::git(dir.path(), &["init", "-q", "--bare", bare.to_str().expect("utf-8")]);
    let error = scan(&bare, &plain()).expect_err("bare");
    assert!(matches!(error, ManifestError::Bare { .. }), "{error}");

    let repo = base_repo();
    repo.write(".embarkignore", "ok/\n[z-a]\n");
    let error = scan(&repo.root, &isolated()).expect_err("bad pattern");
    assert!(error.to_string().contains(".embarkignore line 2"), "{error}");
    let error = scan(
        &Repo::new().root,
        &SyncConfig {
            extra_excludes: vec!["[z-a]".into()],
            ..plain()
        },
    )
    .expect_err("bad");
    assert!(error.to_string().contains("EMBARK_SYNC_EXCLUDES"), "{error}");
}

#[test]
fn a_touched_tree_is_checked_by_content_once_then_by_remembered_stat() {
    let repo = base_repo();
    for i in 0..30 {
        repo.write(format!("t/{i}.txt"), format!("tracked {i}\n"));
    }
    repo.commit_all("thirty files");
    repo.write("src/lib.rs", "a real edit\n");
    let git_dir = repo.root.join(".git");
    let index_before = std::fs::read(git_dir.join("index")).expect("index");
    // Every tracked file's mtime moves, content stays (a checkout or a build tool does this).
    let moved = SystemTime::now() - Duration::from_secs(30);
    for i in 0..30 {
        let f = std::fs::File::options()
            .write(true)
            .open(repo.path(format!("t/{i}.txt")))
            .expect("open");
        f.set_modified(moved).expect("touch");
    }
    let first = scan_at(&repo.root, &plain(), later()).expect("scan");
    assert_eq!(paths(&first), ["src/lib.rs"]);
    assert!(first.stats.tracked_files_read >= 30, "{:?}", first.stats);
    let second = scan_at(&repo.root, &plain(), later()).expect("scan");
    assert_eq!(second.manifest, first.manifest);
    assert_eq!(second.stats.refreshes_applied, 30, "{:?}", second.stats);
    // Read again: the edited file, and the few committed in the index's own second (racy for git too).
    assert!(
        second.stats.tracked_files_read <= 4,
        "the touched files are not read again: {:?}",
        second.stats
    );
    assert_eq!(
        std::fs::read(git_dir.join("index")).expect("index"),
        index_before,
        "the index is never written"
    );

    // An edit after the refresh is seen, even one that keeps the size.
    repo.write("t/7.txt", "tracked X\n");
    let third = scan_at(&repo.root, &plain(), later()).expect("scan");
    assert_eq!(paths(&third), ["src/lib.rs", "t/7.txt"]);
    assert_matches_git(&repo, &plain());
    // Once git refreshes its own index, the remembered refreshes are dropped.
    repo.git(&["status", "--porcelain"]);
    let after_git = scan_at(&repo.root, &plain(), later()).expect("scan");
    assert_eq!(after_git.stats.refreshes_applied, 0, "{:?}", after_git.stats);
    assert_eq!(paths(&after_git), ["src/lib.rs", "t/7.txt"]);
}

#[test]
fn a_racy_index_entry_stays_racy_under_remembered_refreshes() {
    // A file committed and then rewritten (same size) within the index's own second is racy for
    // git; laying refreshes over the index must not make it look clean.
    let repo = base_repo();
    for i in 0..5 {
        repo.write(format!("t/{i}.txt"), format!("tracked {i}\n"));
    }
    repo.commit_all("five");
    let old = SystemTime::now() - Duration::from_secs(30);
    for i in 0..4 {
        let f = std::fs::File::options()
            .write(true)
            .open(repo.path(format!("t/{i}.txt")))
            .expect("open");
        f.set_modified(old).expect("touch");
    }
    scan_at(&repo.root, &plain(), later()).expect("records refreshes for t/0..3");
    // Same size, and its mtime put back to what the index recorded.
    let index_mtime = std::fs::metadata(repo.path("t/4.txt"))
        .expect("meta")
        .modified()
        .expect("mtime");
    repo.write("t/4.txt", "TRACKED 4\n");
    std::fs::File::options()
        .write(true)
        .open(repo.path("t/4.txt"))
        .and_then(|f| f.set_modified(index_mtime))
        .expect("restore mtime");
    let scan = scan_at(&repo.root, &plain(), later()).expect("scan");
    assert_eq!(scan.stats.refreshes_applied, 4, "{:?}", scan.stats);
    assert_eq!(paths(&scan), ["t/4.txt"]);
}
