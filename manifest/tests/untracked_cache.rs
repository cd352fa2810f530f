//! The untracked cache against git: a remembered walk answers only while nothing it read has
//! changed, and every kind of change that could alter git's untracked set makes the next scan
//! walk again and agree with git.

mod common;

use std::time::SystemTime;

use common::{Repo, assert_matches_git, assert_matches_git_at, later, plain};
use embark_manifest::{Scan, SyncConfig, scan_at};

fn base_repo() -> Repo {
    let repo = Repo::new();
    repo.write("README.md", "# fixture\n");
    repo.write("src/lib.rs", "pub fn a() {}\n");
    repo.write("src/deep/mod.rs", "// deep\n");
    repo.write("docs/guide.md", "guide\n");
    repo.write("docs/.gitignore", "*.tmp\n");
    repo.write(".gitignore", "*.log\n");
    repo.commit_all("initial");
    repo.write("src/deep/untracked.txt", "untracked\n");
    repo.write("fresh/inside.txt", "in an untracked directory\n");
    repo
}

/// The differential check: against git when embark excludes nothing, otherwise (the excludes drop
/// paths git reports) against a scan with no caches, which the other tests hold to git.
fn checked(repo: &Repo, config: &SyncConfig, scan_start: SystemTime) -> Scan {
    let excludes = config.default_excludes || !config.extra_excludes.is_empty() || repo.path(".embarkignore").exists();
    if !excludes {
        return assert_matches_git_at(repo, config, scan_start);
    }
    let fresh = SyncConfig {
        stat_cache: false,
        ..config.clone()
    };
    let expected = scan_at(&repo.root, &fresh, later()).expect("scan without caches");
    let scan = scan_at(&repo.root, config, scan_start).expect("scan");
    assert_eq!(scan.manifest, expected.manifest);
    scan
}

/// Settles the tree, scans (the walk is remembered), and checks the next scan is answered by the cache.
fn remember(repo: &Repo, config: &SyncConfig) {
    repo.settle();
    let first = checked(repo, config, later());
    let second = scan_at(&repo.root, config, later()).expect("scan");
    assert!(second.stats.untracked_cache_hit, "nothing changed: {:?}", second.stats);
    assert_eq!(second.manifest, first.manifest);
}

/// After `change`, the next scan walks again and agrees with git.
fn changes_the_walk(repo: &Repo, config: &SyncConfig, what: &str, change: impl FnOnce(&Repo)) {
    remember(repo, config);
    change(repo);
    let scan = checked(repo, config, SystemTime::now());
    assert!(!scan.stats.untracked_cache_hit, "{what}: the remembered walk was used");
}

#[test]
fn every_change_git_sees_in_the_untracked_set_makes_the_scan_walk_again() {
    let repo = base_repo();
    let config = plain();
    changes_the_walk(&repo, &config, "a file created deep in a tracked directory", |r| {
        r.write("src/deep/new.txt", "new\n");
    });
    changes_the_walk(&repo, &config, "a file created in an untracked directory", |r| {
        r.write("fresh/second.txt", "second\n");
    });
    changes_the_walk(&repo, &config, "an untracked file removed", |r| {
        r.remove("src/deep/new.txt")
    });
    changes_the_walk(&repo, &config, "a new untracked directory", |r| {
        r.write("brand/new/dir/file.txt", "x\n");
    });
    changes_the_walk(&repo, &config, "a directory renamed", |r| {
        std::fs::rename(r.path("brand"), r.path("renamed")).expect("rename");
    });
    changes_the_walk(&repo, &config, "a nested .gitignore edited in place", |r| {
        r.write("docs/.gitignore", "*.md\n");
    });
    changes_the_walk(&repo, &config, "a .gitignore created", |r| {
        r.write("fresh/.gitignore", "*.txt\n")
    });
    changes_the_walk(&repo, &config, "info/exclude edited", |r| {
        std::fs::write(r.root.join(".git/info/exclude"), "renamed/\n").expect("write");
    });
    changes_the_walk(&repo, &config, "an untracked file staged", |r| {
        r.git(&["add", "src/deep/untracked.txt"]);
    });
    changes_the_walk(&repo, &config, "a tracked file dropped from the index", |r| {
        r.git(&["rm", "-q", "--cached", "README.md"]);
    });
    changes_the_walk(&repo, &config, "an untracked directory turned into a repository", |r| {
        common::git(&r.path("fresh"), &["init", "-q", "-b", "main"]);
    });
    changes_the_walk(&repo, &config, "a nested repository's .git removed", |r| {
        r.remove("fresh/.git")
    });
    changes_the_walk(&repo, &config, "a file replaced by a directory", |r| {
        r.remove("src/deep/untracked.txt");
        r.write("src/deep/untracked.txt/now-a-dir", "x\n");
    });
}

#[test]
fn embarks_own_excludes_are_part_of_what_the_walk_is_remembered_under() {
    let repo = base_repo();
    let config = SyncConfig::default();
    repo.write("node_modules/pkg/index.js", "excluded by default\n");
    changes_the_walk(&repo, &config, ".embarkignore written", |r| {
        r.write(".embarkignore", "fresh/\n")
    });
    // Another exclude list is another walk, even with the tree untouched.
    remember(&repo, &config);
    let other = SyncConfig {
        extra_excludes: vec!["src/deep/".into()],
        ..config.clone()
    };
    let scan = checked(&repo, &other, SystemTime::now());
    assert!(!scan.stats.untracked_cache_hit, "{:?}", scan.stats);
    assert!(
        scan.manifest
            .excluded
            .iter()
            .any(|e| e.path.to_string() == "src/deep/untracked.txt")
    );
}

#[test]
fn content_edits_stat_refreshes_and_commits_keep_the_remembered_walk() {
    let repo = base_repo();
    let config = plain();
    remember(&repo, &config);
    // None of these changes a directory listing, an ignore file or what the index tracks.
    repo.write("src/deep/untracked.txt", "edited in place\n");
    repo.write("src/lib.rs", "pub fn a() { 1 }\n");
    repo.git(&["add", "src/lib.rs"]);
    repo.git(&["status", "--porcelain"]);
    repo.git(&["commit", "-q", "-m", "second"]);
    let scan = assert_matches_git(&repo, &config);
    assert!(scan.stats.untracked_cache_hit, "{:?}", scan.stats);
}

#[test]
fn a_walk_is_not_remembered_while_what_it_read_is_within_the_racy_margin() {
    let repo = base_repo();
    let config = plain();
    // A directory whose times are not before the scan's start by the margin (here: in the future).
    let soon = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    filetime::set_file_mtime(repo.path("src/deep"), filetime::FileTime::from_system_time(soon)).expect("set mtime");
    let first = assert_matches_git(&repo, &config);
    assert!(!first.stats.untracked_cache_hit);
    let second = assert_matches_git(&repo, &config);
    assert!(!second.stats.untracked_cache_hit, "a racy walk was trusted");
    // A disabled cache never answers.
    repo.settle();
    let off = SyncConfig {
        stat_cache: false,
        ..config
    };
    scan_at(&repo.root, &off, later()).expect("scan");
    assert!(
        !scan_at(&repo.root, &off, later())
            .expect("scan")
            .stats
            .untracked_cache_hit
    );
}
