//! Fixture git repositories built with the real git CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs git in `dir` and returns trimmed stdout; panics with stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        // The developer's own git config (signing, hooks, templates) must not change fixtures.
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "embark-test")
        .env("GIT_AUTHOR_EMAIL", "test@embark.invalid")
        .env("GIT_COMMITTER_NAME", "embark-test")
        .env("GIT_COMMITTER_EMAIL", "test@embark.invalid")
        .output()
        .unwrap_or_else(|e| panic!("run git {args:?}: {e}"));
    assert!(
        output.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A working repository with one commit, pushed to a bare `origin` next to it.
pub struct FixtureRepo {
    pub work: PathBuf,
    pub origin: PathBuf,
    pub head: String,
}

pub fn fixture(parent: &Path) -> FixtureRepo {
    let origin = parent.join("origin.git");
    let work = parent.join("work");
    std::fs::create_dir_all(&work).expect("create work dir");
    git(
        parent,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            origin.to_str().expect("utf-8 path"),
        ],
    );
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README.md"), "# fixture\n").expect("write README");
    git(&work, &["add", "README.md"]);
    git(&work, &["commit", "-q", "-m", "initial"]);
    git(
        &work,
        &["remote", "add", "origin", origin.to_str().expect("utf-8 path")],
    );
    git(&work, &["push", "-q", "origin", "main"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    FixtureRepo { work, origin, head }
}
