//! A task's result end to end with real git on both sides: the runner's
//! capture ([`embark_runner::result`]) of a workspace the "model" edited,
//! created, deleted, chmodded, renamed and wrote a binary and a symlink in,
//! then the laptop's fetch, diff and 3-way apply ([`embark_sidecar::result`]).
//! Every file is hash-compared; a tampered bundle and a conflicting tree
//! leave the laptop's tree exactly as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use embark_core::manifest::ContentHash;
use embark_core::task::TaskId;
use embark_core::wire::Changes;
use embark_runner::guard::Guard;
use embark_runner::result::{ResultRepo, capture, snapshot_base};
use embark_sidecar::result::{self, ApplyOptions, Fetched, Git, ResultError};
use embark_testkit::git::{FixtureRepo, fixture, git};

/// Every file under `dir` but `.git`: kind, mode and content hash.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .into_owned();
            if rel == ".git" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("readlink");
                out.insert(rel, format!("link {}", target.display()));
            } else if meta.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                let mode = meta.permissions().mode() & 0o111;
                out.insert(rel, format!("file {:o} {}", mode, ContentHash::of(&bytes)));
            }
        }
    }
    out
}

struct World {
    _dir: tempfile::TempDir,
    laptop: FixtureRepo,
    workspace: PathBuf,
    task_dir: PathBuf,
}

fn write(path: &Path, text: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// A laptop repository with a few files pushed and one uncommitted edit
/// (the overlay), and the runner's workspace cloned from its origin with
/// the same overlay applied.
fn make_world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let laptop = fixture(&dir.path().join("laptop"));
    let lines: String = (1..=20).map(|n| format!("line {n}\n")).collect();
    write(&laptop.work.join("notes.txt"), lines.as_bytes());
    write(&laptop.work.join("old-name.txt"), b"to be renamed\n");
    write(&laptop.work.join("doomed.txt"), b"to be deleted\n");
    write(&laptop.work.join("run.sh"), b"#!/bin/sh\necho hi\n");
    git(&laptop.work, &["add", "-A"]);
    git(&laptop.work, &["commit", "-q", "-m", "files"]);
    git(&laptop.work, &["push", "-q", "origin", "HEAD:main"]);
    write(&laptop.work.join("overlay.txt"), b"uncommitted on the laptop\n");
    let task_dir = dir.path().join("task");
    std::fs::create_dir_all(&task_dir).expect("mkdir");
    let workspace = task_dir.join("workspace");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            laptop.origin.to_str().expect("utf-8"),
            workspace.to_str().expect("utf-8"),
        ],
    );
    write(&workspace.join("overlay.txt"), b"uncommitted on the laptop\n");
    World {
        _dir: dir,
        laptop,
        workspace,
        task_dir,
    }
}

fn head(dir: &Path) -> String {
    git(dir, &["rev-parse", "HEAD"])
}

/// What the "model" does in the workspace.
fn model_edits(workspace: &Path) {
    let lines: String = (1..=20)
        .map(|n| {
            if n == 3 {
                "line 3, edited remotely\n".to_owned()
            } else {
                format!("line {n}\n")
            }
        })
        .collect();
    write(&workspace.join("notes.txt"), lines.as_bytes());
    write(&workspace.join("src/new.rs"), b"fn main() {}\n");
    std::fs::remove_file(workspace.join("doomed.txt")).expect("rm");
    std::fs::set_permissions(workspace.join("run.sh"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(workspace.join("old-name.txt"), workspace.join("new-name.txt")).expect("mv");
    write(&workspace.join("blob.bin"), &[0, 159, 146, 150, 255, 0, 1, 2]);
    std::os::unix::fs::symlink("src/new.rs", workspace.join("link")).expect("symlink");
    // Excluded by embark's defaults: never part of the result.
    write(&workspace.join("node_modules/x/index.js"), b"x\n");
}

fn guard() -> Guard {
    Guard::at(embark_testkit::bin_path("embark-runner"))
}

/// The runner's side: base before the model, result after. Returns the
/// changes (bundle hash set) and the bundle's bytes.
async fn runner_result(world: &World, edits: impl FnOnce(&Path)) -> (Changes, Vec<u8>) {
    let commit = head(&world.workspace);
    let repo = ResultRepo::new(&world.task_dir, &world.workspace, &guard(), "test-task");
    let rules = embark_core::manifest::SyncRules {
        default_excludes: vec!["node_modules/".into()],
        ..Default::default()
    };
    let base = snapshot_base(&repo, &commit, Some(&rules)).await.expect("base");
    assert_ne!(base.base, commit, "the overlay is a synthetic commit on the task's");
    edits(&world.workspace);
    let captured = capture(&repo, &base).await.expect("capture");
    let bundle = std::fs::read(captured.bundle.expect("a result")).expect("read bundle");
    let mut changes = captured.changes;
    changes.bundle = Some(ContentHash::of(&bundle));
    (changes, bundle)
}

async fn fetch_into(world: &World, task: TaskId, changes: &Changes, bundle: &[u8]) -> (Git, Fetched) {
    let git = Git::discover(&world.laptop.work).await.expect("discover");
    let hash = changes.bundle.expect("hash");
    let fetched = result::fetch(&git, task, changes, hash, bundle).await.expect("fetch");
    (git, fetched)
}

#[tokio::test]
async fn a_result_diffs_as_git_does_and_applies_byte_for_byte() {
    let world = make_world();
    let (changes, bundle) = runner_result(&world, model_edits).await;
    assert_eq!(changes.files_changed, 7, "{changes:?}");
    assert!(changes.insertions >= 2 && changes.deletions >= 1, "{changes:?}");
    let task = TaskId::new();
    let (git_dir, fetched) = fetch_into(&world, task, &changes, &bundle).await;
    let (base_ref, result_ref) = result::refs(task);
    assert_eq!(git(&world.laptop.work, &["rev-parse", &result_ref]), fetched.result);
    assert_eq!(git(&world.laptop.work, &["rev-parse", &base_ref]), fetched.base);
    assert_eq!(
        git(&world.laptop.work, &["branch", "--list"]).lines().count(),
        1,
        "no branch the user did not ask for"
    );

    let (stat, diff) = result::diff(&git_dir, &fetched, &[], false).await.expect("diff");
    let (diff, cut) = diff.expect("a diff");
    assert!(!cut);
    let own = git(
        &world.laptop.work,
        &["diff", "--no-color", &fetched.base, &fetched.result],
    );
    assert_eq!(diff.trim_end(), own, "the diff is git's own");
    assert!(stat.contains("7 files changed"), "{stat}");
    let (only, _) = result::diff(&git_dir, &fetched, &["notes.txt".into()], true)
        .await
        .expect("diff");
    assert!(only.contains("notes.txt") && only.contains("1 file changed"), "{only}");

    let index_before = std::fs::read(world.laptop.work.join(".git/index")).expect("index");
    let head_before = head(&world.laptop.work);
    let dry = result::apply(
        &git_dir,
        &fetched,
        &ApplyOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .expect("dry run");
    let before = tree(&world.laptop.work);
    assert!(
        !dry.written && dry.conflicts.is_empty() && dry.changes.len() == 8,
        "{dry:?}"
    );
    assert_eq!(tree(&world.laptop.work), before, "a dry run writes nothing");

    let applied = result::apply(&git_dir, &fetched, &ApplyOptions::default())
        .await
        .expect("apply");
    assert!(applied.written, "{applied:?}");
    let mut expected = tree(&world.workspace);
    expected.retain(|path, _| !path.starts_with("node_modules"));
    assert_eq!(
        tree(&world.laptop.work),
        expected,
        "the laptop's tree is the runner's, byte for byte"
    );
    assert_eq!(head(&world.laptop.work), head_before, "HEAD never moves");
    assert_eq!(
        std::fs::read(world.laptop.work.join(".git/index")).expect("index"),
        index_before,
        "the index is never written"
    );
}

#[tokio::test]
async fn a_tampered_bundle_is_refused_and_nothing_is_written() {
    let world = make_world();
    let (changes, mut bundle) = runner_result(&world, model_edits).await;
    let last = bundle.len() - 30;
    bundle[last] ^= 0xff;
    let git_dir = Git::discover(&world.laptop.work).await.expect("discover");
    let before = tree(&world.laptop.work);
    let task = TaskId::new();
    let refused = result::fetch(&git_dir, task, &changes, changes.bundle.expect("hash"), &bundle)
        .await
        .expect_err("tampered");
    assert!(matches!(refused, ResultError::Tampered { .. }), "{refused}");
    assert!(refused.to_string().contains("nothing was written"), "{refused}");
    assert_eq!(tree(&world.laptop.work), before);
    assert_eq!(
        git(&world.laptop.work, &["for-each-ref", "refs/embark/"]),
        "",
        "no ref was made"
    );
}

#[tokio::test]
async fn a_moved_on_tree_merges_unrelated_work_and_refuses_same_line_edits() {
    let world = make_world();
    let (changes, bundle) = runner_result(&world, model_edits).await;
    let work = &world.laptop.work;
    // The laptop moved on: a new commit and an uncommitted edit in files the result does not touch.
    write(&work.join("later.txt"), b"committed after the submit\n");
    git(work, &["add", "later.txt"]);
    git(work, &["commit", "-q", "-m", "later"]);
    write(&work.join("run.sh"), b"#!/bin/sh\necho hi\necho local\n");
    let task = TaskId::new();
    let (git_dir, fetched) = fetch_into(&world, task, &changes, &bundle).await;
    let applied = result::apply(&git_dir, &fetched, &ApplyOptions::default())
        .await
        .expect("apply");
    assert!(applied.written && applied.conflicts.is_empty(), "{applied:?}");
    let now = tree(work);
    let runner = tree(&world.workspace);
    assert_eq!(now["notes.txt"], runner["notes.txt"]);
    assert_eq!(now["blob.bin"], runner["blob.bin"]);
    assert!(now.contains_key("later.txt") && !now.contains_key("doomed.txt"));
    assert_eq!(
        std::fs::read(work.join("run.sh")).expect("read"),
        b"#!/bin/sh\necho hi\necho local\n",
        "the local edit stays; the result's chmod merges into it"
    );
    assert_eq!(
        std::fs::metadata(work.join("run.sh"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o111,
        0o111
    );

    // A second laptop whose same line was edited: nothing is written, the conflict is listed.
    let other = make_world();
    let (changes, bundle) = runner_result(&other, model_edits).await;
    let lines: String = (1..=20)
        .map(|n| {
            if n == 3 {
                "line 3, edited locally\n".to_owned()
            } else {
                format!("line {n}\n")
            }
        })
        .collect();
    write(&other.laptop.work.join("notes.txt"), lines.as_bytes());
    let (git_dir, fetched) = fetch_into(&other, TaskId::new(), &changes, &bundle).await;
    let before = tree(&other.laptop.work);
    let refused = result::apply(&git_dir, &fetched, &ApplyOptions::default())
        .await
        .expect("apply");
    assert!(!refused.written, "{refused:?}");
    assert_eq!(refused.conflicts.len(), 1, "{refused:?}");
    assert_eq!(refused.conflicts[0].path, "notes.txt");
    assert!(
        refused.conflicts[0].hunks.contains("edited remotely"),
        "{:?}",
        refused.conflicts
    );
    assert_eq!(tree(&other.laptop.work), before, "nothing was written");
    let dry = result::apply(
        &git_dir,
        &fetched,
        &ApplyOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .expect("dry run");
    assert_eq!(dry.conflicts.len(), 1);
    assert_eq!(tree(&other.laptop.work), before, "a dry run writes nothing");

    let branch = result::apply(
        &git_dir,
        &fetched,
        &ApplyOptions {
            branch: Some("embark/result".into()),
            ..Default::default()
        },
    )
    .await
    .expect("branch");
    assert_eq!(branch.branch.as_deref(), Some("embark/result"));
    assert_eq!(git(&other.laptop.work, &["rev-parse", "embark/result"]), fetched.result);
    assert_eq!(
        git(
            &other.laptop.work,
            &["rev-list", "--count", "--first-parent", "embark/result"]
        ),
        (git(&other.laptop.work, &["rev-list", "--count", "HEAD"])
            .parse::<u32>()
            .expect("n")
            + 2)
        .to_string(),
        "the task's commit, the overlay as one commit, then the result"
    );
    assert_eq!(tree(&other.laptop.work), before, "--branch writes no file");

    let marked = result::apply(
        &git_dir,
        &fetched,
        &ApplyOptions {
            allow_conflicts: true,
            ..Default::default()
        },
    )
    .await
    .expect("apply with markers");
    assert!(marked.written && marked.conflicts.len() == 1, "{marked:?}");
    let notes = std::fs::read_to_string(other.laptop.work.join("notes.txt")).expect("read");
    assert!(
        notes.contains("<<<<<<<") && notes.contains("edited locally") && notes.contains("edited remotely"),
        "{notes}"
    );
    assert!(other.laptop.work.join("src/new.rs").is_file(), "the rest was applied");
}

#[tokio::test]
async fn a_workspace_that_changed_nothing_says_so() {
    let world = make_world();
    let commit = head(&world.workspace);
    let repo = ResultRepo::new(&world.task_dir, &world.workspace, &guard(), "test-task");
    let base = snapshot_base(&repo, &commit, None).await.expect("base");
    let captured = capture(&repo, &base).await.expect("capture");
    assert!(captured.changes.is_empty() && captured.bundle.is_none(), "{captured:?}");
    assert_eq!(captured.changes.summary(), "changed no files");
}

#[tokio::test]
async fn the_models_own_commits_are_kept_and_its_config_is_never_used() {
    let world = make_world();
    let (changes, bundle) = runner_result(&world, |ws| {
        write(&ws.join("committed.txt"), b"by the model\n");
        git(ws, &["add", "committed.txt"]);
        git(ws, &["commit", "-q", "-m", "the model's commit"]);
        // A filter and a hook the model planted afterwards must never run in the runner's git.
        let marker = ws.parent().expect("task dir").join("pwned");
        let planted = format!("sh -c 'touch {}; cat'", marker.display());
        git(ws, &["config", "filter.evil.clean", &planted]);
        write(
            &ws.join(".git/hooks/post-index-change"),
            format!("#!/bin/sh\ntouch {}\n", marker.display()).as_bytes(),
        );
        write(&ws.join(".gitattributes"), b"* filter=evil\n");
        write(&ws.join("after-commit.txt"), b"uncommitted by the model\n");
    })
    .await;
    assert!(
        !world.task_dir.join("pwned").exists(),
        "the workspace's filter and hooks never ran"
    );
    let (_, fetched) = fetch_into(&world, TaskId::new(), &changes, &bundle).await;
    let parents = git(
        &world.laptop.work,
        &["rev-list", "--parents", "-n", "1", &fetched.result],
    );
    assert_eq!(parents.split(' ').count(), 3, "base and the model's HEAD: {parents}");
    let log = git(&world.laptop.work, &["log", "--format=%s", &fetched.result]);
    assert!(log.contains("the model's commit"), "{log}");
}
