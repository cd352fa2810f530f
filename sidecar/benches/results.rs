//! `npm run bench:results` (`cargo bench -p embark-sidecar --bench results`):
//! a task that changed 1,000 files in a 100,000-file repository, as D26
//! handles it — the runner's capture (its base snapshot, the result commit
//! and the bundle: size and time) and the laptop's fetch + verify + 3-way
//! apply — against the baseline of `git diff --binary | git apply --3way`
//! of the same change onto an identical clone, in the same run. Prints
//! figures and the ratio (target ≤ 1.5×); not a test.
//!
//! `EMBARK_BENCH_FILES` and `EMBARK_BENCH_CHANGED` shrink it (a smoke run).
//! The runner's git runs under its task guard: the script builds
//! `embark-runner` in release first.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embark_core::task::TaskId;
use embark_runner::guard::Guard;
use embark_runner::result::{ResultRepo, capture, snapshot_base};
use embark_sidecar::result::{self, ApplyOptions, Git};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@embark.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@embark.invalid")
        .stderr(Stdio::inherit())
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn path_of(n: usize) -> String {
    format!("d{:03}/e{:02}/f{n}.txt", n % 1000, (n / 1000) % 100)
}

fn main() {
    let files = env("EMBARK_BENCH_FILES", 100_000);
    let changed = env("EMBARK_BENCH_CHANGED", 1_000).min(files);
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = dir.path().join("origin");
    std::fs::create_dir_all(&origin).expect("mkdir");
    git(&origin, &["init", "-q", "-b", "main"]);
    for n in 0..files {
        let path = origin.join(path_of(n));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, format!("file {n}\nline two\nline three\n")).expect("write");
    }
    git(&origin, &["add", "-A"]);
    git(&origin, &["commit", "-q", "-m", "seed"]);
    let clone = |name: &str| {
        let to = dir.path().join(name);
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                origin.to_str().expect("utf-8"),
                to.to_str().expect("utf-8"),
            ],
        );
        to
    };
    let task_dir = dir.path().join("task");
    std::fs::create_dir_all(&task_dir).expect("mkdir");
    let workspace = task_dir.join("workspace");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            origin.to_str().expect("utf-8"),
            workspace.to_str().expect("utf-8"),
        ],
    );
    let laptop = clone("laptop");
    let baseline = clone("baseline");
    let commit = git(&workspace, &["rev-parse", "HEAD"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let guard = Guard::at(embark_testkit::bin_path("embark-runner"));
    let repo = ResultRepo::new(&task_dir, &workspace, &guard, "bench");
    let started = Instant::now();
    let base = runtime.block_on(snapshot_base(&repo, &commit, None)).expect("base");
    let base_time = started.elapsed();
    for n in (0..files).step_by((files / changed).max(1)).take(changed) {
        std::fs::write(
            workspace.join(path_of(n)),
            format!("file {n}\nline two, changed\nline three\n"),
        )
        .expect("write");
    }
    let started = Instant::now();
    let captured = runtime.block_on(capture(&repo, &base)).expect("capture");
    let capture_time = started.elapsed();
    let bundle = std::fs::read(captured.bundle.as_ref().expect("a bundle")).expect("read");
    let mut changes = captured.changes.clone();
    changes.bundle = Some(embark_core::manifest::ContentHash::of(&bundle));

    // The laptop: fetch + verify + apply.
    let started = Instant::now();
    let applied = runtime.block_on(async {
        let git_dir = Git::discover(&laptop).await.expect("discover");
        let fetched = result::fetch(
            &git_dir,
            TaskId::new(),
            &changes,
            changes.bundle.expect("hash"),
            &bundle,
        )
        .await
        .expect("fetch");
        result::apply(&git_dir, &fetched, &ApplyOptions::default())
            .await
            .expect("apply")
    });
    let apply_time = started.elapsed();
    assert!(
        applied.written && applied.changes.len() == changed,
        "{} changes",
        applied.changes.len()
    );

    // The baseline: the same change as a binary patch, applied with --3way.
    let result_commit = changes.commit.clone().expect("commit");
    let started = Instant::now();
    let patch = Command::new("git")
        .current_dir(&workspace)
        .args(["--git-dir", task_dir.join("result.git").to_str().expect("utf-8")])
        .args(["diff", "--binary", &commit, &result_commit])
        .output()
        .expect("diff");
    let diff_time = started.elapsed();
    let mut apply = Command::new("git")
        .current_dir(&baseline)
        .args(["apply", "--3way", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("apply");
    {
        use std::io::Write;
        apply
            .stdin
            .take()
            .expect("stdin")
            .write_all(&patch.stdout)
            .expect("write patch");
    }
    assert!(apply.wait().expect("wait").success(), "git apply --3way");
    let baseline_time = started.elapsed();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("results bench: {files} files, {changed} changed");
    println!(
        "  runner: base snapshot {:.0} ms, capture (add, commit, bundle) {:.0} ms, bundle {} bytes (patch {} bytes)",
        ms(base_time),
        ms(capture_time),
        bundle.len(),
        patch.stdout.len()
    );
    println!("  laptop: fetch + verify + apply {:.0} ms", ms(apply_time));
    println!(
        "  baseline: git diff --binary {:.0} ms, total with git apply --3way {:.0} ms",
        ms(diff_time),
        ms(baseline_time)
    );
    println!(
        "  ratio: laptop apply / baseline = {:.2}x; capture + apply / baseline = {:.2}x (target <= 1.5x for the laptop side)",
        ms(apply_time) / ms(baseline_time),
        (ms(capture_time) + ms(apply_time)) / ms(baseline_time)
    );
}
