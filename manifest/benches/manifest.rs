//! `npm run bench:manifest`: the manifest scan on a 100k-file repository, side by side with git.
//!
//! Prints figures; it is not a pass/fail test. Each figure is the median of several runs:
//!
//! - warm, ~10 dirty files: our scan vs `git status --porcelain=v2` vs a naive baseline
//!   (`git ls-files --cached --others --exclude-standard`, then hash every listed file), with
//!   our scan's untracked walk not remembered and git's own untracked cache turned on as context;
//! - after every tracked file's mtime was touched (content unchanged): the first run after the
//!   touch of each, since that is when the work happens (git then rewrites its index, we never do);
//! - cold overlay hashing (no stat cache) vs merely reading the same files (the I/O floor).
//!
//! `BENCH_FILES` (default 100000) sets the repository's size.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use embark_manifest::{GitConfig, SyncConfig, hashing, scan};
use rayon::prelude::*;

const ROUNDS: usize = 5;

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@embark.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@embark.invalid")
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:8.1} ms", d.as_secs_f64() * 1000.0)
}

fn ratio(ours: Duration, theirs: Duration) -> String {
    format!("{:5.2}×", ours.as_secs_f64() / theirs.as_secs_f64())
}

fn build_repo(root: &Path, files: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(root).expect("mkdir");
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["config", "core.autocrlf", "false"]);
    // No background `gc --auto` after the 100k-object commit: it would compete for the cores and
    // keep writing into the directory while it is removed.
    git(root, &["config", "gc.auto", "0"]);
    git(root, &["config", "maintenance.auto", "false"]);
    std::fs::write(root.join(".gitignore"), "*.o\n/out/\n").expect("write .gitignore");
    let per_dir = 100;
    let mut paths = Vec::with_capacity(files);
    for i in 0..files {
        let dir = root.join(format!("d{:03}/s{:02}", i / per_dir / 10, i / per_dir % 10));
        if i % per_dir == 0 {
            std::fs::create_dir_all(&dir).expect("mkdir");
        }
        let path = dir.join(format!("f{i}.txt"));
        // Sizes vary like source files: 100 B to ~8 KiB.
        let size = 100 + (i * 7919) % 8000;
        let line = format!("file {i} line\n");
        let content: String = line.repeat(size / line.len() + 1);
        std::fs::write(&path, &content.as_bytes()[..size]).expect("write");
        paths.push(path);
    }
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "100k files"]);
    paths
}

fn dirty(root: &Path, tracked: &[PathBuf]) {
    for (n, path) in tracked.iter().step_by(tracked.len() / 5).take(5).enumerate() {
        std::fs::write(path, format!("dirty {n}\n")).expect("modify");
    }
    for n in 0..5 {
        std::fs::write(root.join(format!("untracked-{n}.txt")), format!("new {n}\n")).expect("untracked");
    }
    std::fs::write(root.join("ignored.o"), "ignored\n").expect("ignored");
}

fn touch_all(paths: &[PathBuf]) {
    let now = SystemTime::now();
    paths.par_iter().for_each(|p| {
        std::fs::File::options()
            .write(true)
            .open(p)
            .and_then(|f| f.set_modified(now))
            .expect("touch");
    });
}

fn git_status(root: &Path) {
    git(root, &["status", "--porcelain=v2"]);
}

fn naive(root: &Path) -> usize {
    let listing = git(root, &["ls-files", "-z", "--cached", "--others", "--exclude-standard"]);
    let paths: Vec<&str> = listing.split('\0').filter(|p| !p.is_empty()).collect();
    paths
        .par_iter()
        .filter_map(|p| std::fs::read(root.join(p)).ok())
        .map(|bytes| blake3::hash(&bytes).as_bytes()[0] as usize)
        .count()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list themselves
    }
    let files: usize = std::env::var("BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("repo");
    eprintln!("building a {files}-file repository in {} …", root.display());
    let build = Instant::now();
    let tracked = build_repo(&root, files);
    dirty(&root, &tracked);
    eprintln!("built in {:.1} s", build.elapsed().as_secs_f64());
    let config = SyncConfig {
        git_config: GitConfig::Isolated,
        bounds: embark_manifest::Bounds {
            max_files: 100_000,
            max_bytes: 1 << 30,
            max_file_bytes: 1 << 30,
        },
        ..SyncConfig::default()
    };
    let ours = || {
        let scan = scan(&root, &config).expect("scan");
        assert_eq!(scan.manifest.overlay.len(), 10, "{}", scan.summary());
    };

    // Warm: git has refreshed its index once, our stat cache is filled once.
    git_status(&root);
    ours();
    let warm_git = median((0..ROUNDS).map(|_| time(|| git_status(&root))).collect());
    let warm_ours = median((0..ROUNDS).map(|_| time(ours)).collect());
    let warm_naive = median((0..ROUNDS).map(|_| time(|| assert!(naive(&root) > files))).collect());
    // Context: our scan with its untracked walk not remembered (the cache removed before each run),
    // and git with its own untracked cache (off by default) turned on and filled.
    let untracked_cache = root.join(".git/embark/untracked-cache");
    let walk_in_full = median(
        (0..ROUNDS)
            .map(|_| {
                std::fs::remove_file(&untracked_cache).expect("the warm scans remembered their walk");
                time(ours)
            })
            .collect(),
    );
    ours(); // remembered again, for the rows below
    git(&root, &["config", "core.untrackedCache", "true"]);
    git_status(&root);
    git_status(&root);
    let warm_git_untracked_cache = median((0..ROUNDS).map(|_| time(|| git_status(&root))).collect());
    git(&root, &["config", "core.untrackedCache", "false"]);
    git(&root, &["update-index", "--no-untracked-cache"]);
    // Context: what the tracked-file half of any status costs here at least.
    let lstat_floor = median(
        (0..ROUNDS)
            .map(|_| {
                time(|| {
                    tracked.par_iter().for_each(|p| {
                        std::hint::black_box(std::fs::symlink_metadata(p).ok());
                    })
                })
            })
            .collect(),
    );
    let untracked_only = median(
        (0..ROUNDS)
            .map(|_| time(|| drop(git(&root, &["ls-files", "-z", "--others", "--exclude-standard"]))))
            .collect(),
    );

    // Touched: every tracked file's mtime moves, content stays. The first run after a touch does the work.
    let mut touched_ours = Vec::new();
    let mut touched_ours_again = Vec::new();
    let mut touched_git = Vec::new();
    let mut touched_git_again = Vec::new();
    for _ in 0..ROUNDS.min(3) {
        touch_all(&tracked);
        touched_ours.push(time(ours));
        touched_ours_again.push(time(ours));
        touch_all(&tracked);
        touched_git.push(time(|| git_status(&root)));
        touched_git_again.push(time(|| git_status(&root)));
    }
    let (touched_ours, touched_ours_again) = (median(touched_ours), median(touched_ours_again));
    let (touched_git, touched_git_again) = (median(touched_git), median(touched_git_again));

    // Cold hashing of an overlay vs reading the same files: a mix of source-sized files and a few big ones.
    let overlay_dir = tmp.path().join("overlay");
    std::fs::create_dir_all(&overlay_dir).expect("mkdir");
    let mut overlay = Vec::new();
    for i in 0..2000 {
        let p = overlay_dir.join(format!("src{i}.txt"));
        std::fs::write(&p, vec![b'a' + (i % 26) as u8; 100 + (i * 7919) % 16_000]).expect("write");
        overlay.push(p);
    }
    for i in 0..8 {
        let p = overlay_dir.join(format!("big{i}.bin"));
        std::fs::write(
            &p,
            (0..6u32 << 20)
                .map(|b| (b.wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect::<Vec<_>>(),
        )
        .expect("write");
        overlay.push(p);
    }
    let sizes: Vec<u64> = overlay.iter().map(|p| p.metadata().expect("meta").len()).collect();
    let total: u64 = sizes.iter().sum();
    let hash_all = || {
        overlay.par_iter().zip(&sizes).for_each(|(p, size)| {
            hashing::hash_file(p, *size, false, gix::hash::Kind::Sha1).expect("hash");
        })
    };
    let read_all = || {
        overlay.par_iter().for_each(|p| {
            std::hint::black_box(std::fs::read(p).expect("read"));
        })
    };
    read_all(); // the page cache holds them for both
    let cold_hash = median((0..ROUNDS).map(|_| time(hash_all)).collect());
    let floor = median((0..ROUNDS).map(|_| time(read_all)).collect());
    // Context for the bound: blake3's own speed on one core, in memory (no I/O at all).
    let in_memory = std::fs::read(&overlay[overlay.len() - 1]).expect("read");
    let blake3_one_core = median(
        (0..ROUNDS)
            .map(|_| {
                time(|| {
                    std::hint::black_box(blake3::hash(&in_memory));
                })
            })
            .collect(),
    );

    println!();
    println!(
        "manifest benchmark: {files} tracked files, 10 dirty, {} cores",
        rayon::current_num_threads()
    );
    println!("{:<58} {:>11} {:>8}", "", "median", "vs git");
    println!("{:<58} {:>11}", "git status --porcelain=v2 (warm)", ms(warm_git));
    println!(
        "{:<58} {:>11} {:>8}   target ≤ 1.00×",
        "embark manifest (warm)",
        ms(warm_ours),
        ratio(warm_ours, warm_git)
    );
    println!(
        "{:<58} {:>11} {:>8}",
        "  context: embark manifest, untracked walk not remembered",
        ms(walk_in_full),
        ratio(walk_in_full, warm_git)
    );
    println!(
        "{:<58} {:>11} {:>8}",
        "  context: git status with core.untrackedCache=true",
        ms(warm_git_untracked_cache),
        ratio(warm_git_untracked_cache, warm_git)
    );
    println!(
        "{:<58} {:>11} {:>8}",
        "naive: git ls-files + blake3 every listed file (rayon)",
        ms(warm_naive),
        ratio(warm_naive, warm_git)
    );
    println!(
        "{:<58} {:>11}",
        "  context: lstat of every tracked file (rayon)",
        ms(lstat_floor)
    );
    println!(
        "{:<58} {:>11}",
        "  context: git ls-files --others --exclude-standard",
        ms(untracked_only)
    );
    println!(
        "{:<58} {:>11}",
        "git status, first run after touching every file",
        ms(touched_git)
    );
    println!(
        "{:<58} {:>11} {:>8}   target ≤ 1.50×",
        "embark manifest, first run after touching every file",
        ms(touched_ours),
        ratio(touched_ours, touched_git)
    );
    println!(
        "{:<58} {:>11}",
        "git status, second run after the touch (index rewritten)",
        ms(touched_git_again)
    );
    println!(
        "{:<58} {:>11} {:>8}",
        "embark manifest, second run after the touch",
        ms(touched_ours_again),
        ratio(touched_ours_again, touched_git_again)
    );
    println!();
    println!(
        "cold overlay hashing: {} files, {:.1} MiB",
        overlay.len(),
        total as f64 / (1 << 20) as f64
    );
    println!("{:<58} {:>11}", "read only (the I/O floor, rayon)", ms(floor));
    println!(
        "{:<58} {:>11} {:>8}   target ≤ 1.50× the floor",
        "blake3 hashing (rayon across files, mmap for big ones)",
        ms(cold_hash),
        ratio(cold_hash, floor)
    );
    let gbps = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    println!(
        "  context: the floor reads {:.1} GB/s; blake3 alone hashes {:.1} GB/s on one core (6 MiB in memory)",
        gbps(total, floor),
        gbps(in_memory.len() as u64, blake3_one_core)
    );
}
