//! `npm run bench:hydration` (also the last part of `npm run bench:manifest`):
//! a task's workspace made by the runner's hydration code with a warm cache
//! vs a fresh `git clone` + checkout, both from a `git daemon` on 127.0.0.1
//! that this benchmark starts and stops by PID. The repository has
//! `BENCH_HYDRATION_FILES` files (default 10 000: 100 directories of ~280-byte
//! files, one commit). Rounds are interleaved; medians are printed, with the
//! runner's previous warm path (a `--no-hardlinks` clone of the warm mirror +
//! checkout, no template) alongside. Target (issue 6): warm ≥ 5× faster than
//! a fresh clone.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embark_runner::cache::Cache;
use embark_runner::checkout::{CloneLimits, GitProtocol, GitProtocols, Sources, checkout_from};
use embark_runner::guard::Guard;
use embark_runner::template;

const ROUNDS: usize = 7;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `files` files in 100 directories, committed, and a bare copy to serve.
fn build_repo(root: &Path, files: usize) -> String {
    let work = root.join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    git(&work, &["init", "-q", "-b", "main"]);
    for i in 0..files {
        let dir = work.join(format!("d{:03}", i % 100));
        std::fs::create_dir_all(&dir).expect("dir");
        let line = format!("file {i}: the quick brown fox jumps over the lazy dog\n");
        std::fs::write(dir.join(format!("f{i:05}.txt")), line.repeat(5)).expect("write");
    }
    git(&work, &["add", "-A"]);
    git(
        &work,
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            "commit",
            "-q",
            "-m",
            "bench",
        ],
    );
    git(root, &["clone", "-q", "--bare", "work", "served/repo.git"]);
    git(&work, &["rev-parse", "HEAD"])
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let files: usize = std::env::var("BENCH_HYDRATION_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let commit = build_repo(root, files);

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // git-daemon itself, not `git daemon`: the wrapper would leave it running when killed.
    let mut daemon = Command::new(Path::new(&git(root, &["--exec-path"])).join("git-daemon"))
        .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", root.join("served").display()))
        .arg(root.join("served"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start git daemon");
    let url = format!("git://127.0.0.1:{port}/repo.git");
    let ready = (0..100).any(|_| {
        let ok = Command::new("git")
            .args(["ls-remote", "--quiet", &url, "HEAD"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            std::thread::sleep(Duration::from_millis(50));
        }
        ok
    });
    assert!(ready, "git daemon did not answer on {url}");

    let guard = Guard::at(embark_testkit::bin_path("embark-runner"));
    let limits = CloneLimits {
        timeout: Duration::from_secs(600),
        max_bytes: 4 << 30,
        protocols: GitProtocols::of(&[GitProtocol::Git]),
    };
    let cache = Cache::under(&root.join("spaces"));
    let spaces = root.join("spaces");

    // The first task: the mirror is fetched and the template made.
    let first = Instant::now();
    let made = template::workspace(
        &url,
        &commit,
        &spaces.join("ws-first"),
        &limits,
        &guard,
        "first",
        &cache,
        None,
    )
    .await
    .expect("first hydration");
    let first = first.elapsed();
    assert!(made.built);

    let (mut fresh, mut warm, mut mirror_only) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let dest = spaces.join(format!("fresh-{round}"));
        let started = Instant::now();
        git(
            root,
            &["clone", "-q", "--no-checkout", &url, dest.to_str().expect("utf-8")],
        );
        git(&dest, &["checkout", "-q", "--detach", &commit]);
        fresh.push(started.elapsed());

        let dest = spaces.join(format!("warm-{round}"));
        let started = Instant::now();
        let made = template::workspace(&url, &commit, &dest, &limits, &guard, "warm", &cache, None)
            .await
            .expect("warm hydration");
        warm.push(started.elapsed());
        assert!(!made.built, "the template was kept");

        let dest = spaces.join(format!("mirror-{round}"));
        let sources = Sources {
            mirrors: Some(&cache.mirrors),
            bundle: None,
        };
        let started = Instant::now();
        checkout_from(&url, &commit, &dest, &limits, &guard, "mirror", sources)
            .await
            .expect("mirror clone");
        mirror_only.push(started.elapsed());

        for kind in ["fresh", "warm", "mirror"] {
            std::fs::remove_dir_all(spaces.join(format!("{kind}-{round}"))).expect("clean up");
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();

    let (fresh, warm, mirror_only) = (median(fresh), median(warm), median(mirror_only));
    let ratio = |d: Duration| fresh.as_secs_f64() / d.as_secs_f64();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "runner hydration, {files} files, {ROUNDS} interleaved rounds, medians (load average {})",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("  fresh git clone + checkout (git daemon)          {:>9}", ms(fresh));
    println!(
        "  warm: copy of the verified template              {:>9}  {:.2}x faster than fresh (target >= 5x: {})",
        ms(warm),
        ratio(warm),
        if ratio(warm) >= 5.0 { "met" } else { "missed" }
    );
    println!(
        "  context: warm mirror, clone + checkout (before) {:>9}  {:.2}x faster than fresh",
        ms(mirror_only),
        ratio(mirror_only)
    );
    println!("  context: first task (mirror fetch + template)   {:>9}", ms(first));
}
