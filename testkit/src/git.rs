//! Fixture git repositories built with the real git CLI, from the one recipe
//! in `testkit/fixtures/repo.json` that the smoke scripts and the demo run too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use serde::Deserialize;

/// `testkit/fixtures/repo.json` (its README says what each part means).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipe {
    env: BTreeMap<String, String>,
    work: String,
    origin: String,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum Step {
    Git {
        #[serde(rename = "in")]
        dir: String,
        git: Vec<String>,
    },
    Write {
        write: String,
        text: String,
    },
}

static RECIPE: LazyLock<Recipe> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../fixtures/repo.json")).expect("testkit/fixtures/repo.json is a recipe")
});

/// Runs git in `dir` (with the recipe's environment) and returns trimmed
/// stdout; panics with stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .envs(&RECIPE.env)
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

/// Makes the fixture repository in `parent` (created if missing).
pub fn fixture(parent: &Path) -> FixtureRepo {
    std::fs::create_dir_all(parent).expect("create the fixture directory");
    let dir = parent.to_str().expect("fixture directories are UTF-8");
    let place = |text: &str| text.replace("{dir}", dir);
    for step in &RECIPE.steps {
        match step {
            Step::Git { dir: cwd, git: args } => {
                let args: Vec<String> = args.iter().map(|arg| place(arg)).collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                git(Path::new(&place(cwd)), &args);
            }
            Step::Write { write, text } => {
                let path = PathBuf::from(place(write));
                std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            }
        }
    }
    let work = PathBuf::from(place(&RECIPE.work));
    let head = git(&work, &["rev-parse", "HEAD"]);
    FixtureRepo {
        work,
        origin: PathBuf::from(place(&RECIPE.origin)),
        head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_is_one_pushed_commit_on_main() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = fixture(dir.path());
        assert_eq!(git(&repo.work, &["rev-list", "--count", "HEAD"]), "1");
        assert_eq!(git(&repo.work, &["status", "--porcelain"]), "");
        assert_eq!(
            git(&repo.work, &["rev-parse", "--abbrev-ref", "@{upstream}"]),
            "origin/main"
        );
        assert_eq!(git(&repo.origin, &["rev-parse", "main"]), repo.head);
        assert_eq!(
            git(&repo.work, &["log", "-1", "--format=%an <%ae>"]),
            "embark-fixture <fixture@embark.invalid>"
        );
    }
}
