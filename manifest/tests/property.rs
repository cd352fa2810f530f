//! Random trees, random ignore rules, random staged and unstaged edits: the scan must agree
//! with git's own view every time (see `common::assert_matches_git`), also when the tree was
//! settled and scanned halfway, so the second scan may take the stat cache's hashes and the
//! untracked cache's walk wherever the edits since allow.

mod common;

use common::{Repo, assert_matches_git, assert_matches_git_at, later, plain};
use proptest::prelude::*;

const DIRS: &[&str] = &["", "a/", "b/", "a/c/"];
const NAMES: &[&str] = &["x", "y.log", "z.txt", "keep.log", "w"];
const RULES: &[&str] = &["*.log", "!keep.log", "b/", "a/c/", "z.txt", "/w", "a/**/x"];

#[derive(Clone, Debug)]
enum Op {
    Write(usize, u8),
    Delete(usize),
    Chmod(usize),
    Symlink(usize, usize),
    Stage(usize),
    StageAll,
    RmCached(usize),
    Commit,
    /// Rewrites a directory's `.gitignore` with one rule.
    Ignore(usize, usize),
}

fn path(i: usize) -> String {
    format!("{}{}", DIRS[i / NAMES.len() % DIRS.len()], NAMES[i % NAMES.len()])
}

fn op() -> impl Strategy<Value = Op> {
    let n = DIRS.len() * NAMES.len();
    prop_oneof![
        4 => (0..n, any::<u8>()).prop_map(|(p, c)| Op::Write(p, c)),
        2 => (0..n).prop_map(Op::Delete),
        1 => (0..n).prop_map(Op::Chmod),
        1 => (0..n, 0..n).prop_map(|(p, t)| Op::Symlink(p, t)),
        2 => (0..n).prop_map(Op::Stage),
        1 => Just(Op::StageAll),
        1 => (0..n).prop_map(Op::RmCached),
        1 => Just(Op::Commit),
        1 => (0..DIRS.len(), 0..RULES.len()).prop_map(|(d, r)| Op::Ignore(d, r)),
    ]
}

fn content(seed: u8) -> Vec<u8> {
    // Some contents repeat on purpose, so rewrites back to the committed bytes happen.
    let mut bytes = format!("content {}\n", seed % 7).into_bytes();
    if seed.is_multiple_of(5) {
        bytes.extend_from_slice(b"\r\n\0binary\xff");
    }
    bytes
}

fn apply(repo: &Repo, op: &Op) {
    let free = |p: &str| {
        // Never write through a path whose parent is not a directory.
        let parent = repo.path(p).parent().expect("parent").to_owned();
        parent
            .ancestors()
            .take_while(|a| a.starts_with(&repo.root))
            .all(|a| !a.symlink_metadata().is_ok_and(|m| !m.is_dir()))
    };
    match op {
        Op::Write(p, c) => {
            let p = path(*p);
            if free(&p) {
                if repo.path(&p).symlink_metadata().is_ok() {
                    repo.remove(&p);
                }
                repo.write(&p, content(*c));
            }
        }
        Op::Delete(p) => {
            if repo.path(path(*p)).symlink_metadata().is_ok() {
                repo.remove(path(*p));
            }
        }
        Op::Chmod(p) => {
            let file = repo.path(path(*p));
            if file.symlink_metadata().is_ok_and(|m| m.is_file()) {
                use std::os::unix::fs::PermissionsExt;
                let mode = file.metadata().expect("meta").permissions().mode();
                repo.chmod(path(*p), if mode & 0o100 != 0 { 0o644 } else { 0o755 });
            }
        }
        Op::Symlink(p, t) => {
            let p = path(*p);
            if free(&p) {
                if repo.path(&p).symlink_metadata().is_ok() {
                    repo.remove(&p);
                }
                repo.symlink(path(*t), &p);
            }
        }
        Op::Stage(p) => {
            let _ = common::git_output_status(&repo.root, &["add", "-A", "--", &path(*p)]);
        }
        Op::StageAll => {
            repo.git(&["add", "-A"]);
        }
        Op::RmCached(p) => {
            let _ = common::git_output_status(&repo.root, &["rm", "-q", "--cached", "--", &path(*p)]);
        }
        Op::Commit => {
            repo.git(&["commit", "-q", "--allow-empty", "-m", "step"]);
        }
        Op::Ignore(d, r) => {
            let p = format!("{}.gitignore", DIRS[*d]);
            if free(&p) && !repo.path(&p).symlink_metadata().is_ok_and(|m| !m.is_file()) {
                repo.write(&p, format!("{}\n", RULES[*r]));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_scan_agrees_with_git(
        initial in proptest::collection::vec((0..DIRS.len() * NAMES.len(), any::<u8>()), 1..10),
        rules in proptest::collection::vec(0..RULES.len(), 0..4),
        commit_rules in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..14),
    ) {
        let repo = Repo::new();
        for (p, c) in &initial {
            apply(&repo, &Op::Write(*p, *c));
        }
        let gitignore: String = rules.iter().map(|r| format!("{}\n", RULES[*r])).collect();
        if commit_rules {
            repo.write(".gitignore", &gitignore);
        }
        // Force-add everything first, so some tracked files are ignored.
        repo.git(&["add", "-A", "-f"]);
        repo.git(&["commit", "-q", "--allow-empty", "-m", "initial"]);
        if !commit_rules {
            repo.write(".gitignore", &gitignore);
        }
        let (before, after) = ops.split_at(ops.len() / 2);
        for op in before {
            apply(&repo, op);
        }
        repo.settle();
        assert_matches_git_at(&repo, &plain(), later());
        for op in after {
            apply(&repo, op);
        }
        assert_matches_git(&repo, &plain());
    }
}
