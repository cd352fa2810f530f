//! `cargo run --release -p embark-bench`: load on a real broker, in this
//! process, over real HTTP and WebSockets on 127.0.0.1, printing figures
//! (not a test): task cycles per second with 8 runners, events per second in
//! batches of 100, lease writes (heartbeats) per second with 8 runners,
//! live-tail latency from an append to 100 WebSocket readers, cancel latency
//! to the runner's control channel and to a (Pi-less) stop, cycles and
//! events against their floor (the same rows written straight through sqlx,
//! in the same run), on each store this build has.
//!
//! The broker runs on its own runtime (2 worker threads), the load on
//! another: both share this machine's cores, as they would share a small
//! server. The broker logs nothing (no subscriber) and its rate limit is off.
//! `--quick` runs each phase for a second instead of five (a smoke check).
//!
//! PostgreSQL: on a fresh database created (and dropped after) on the server
//! `EMBARK_BENCH_DATABASE_URL`, else `EMBARK_TEST_DATABASE_URL`, names (a user
//! that may create databases); without either, its column says n/a.

mod floor;
mod load;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use embark_broker::config::Config;
use embark_broker::limits::RateLimit;
use embark_broker::server::Server;
use embark_broker::store::Database;
use embark_core::secret::Secret;
use embark_core::shutdown::Shutdown;

/// The figures of one store.
#[derive(Debug, Default)]
pub struct Figures {
    pub cycles: f64,
    pub cycles_floor: f64,
    /// CPU time of this whole process (broker and load) per cycle.
    pub cycle_cpu: Duration,
    pub events: f64,
    pub events_floor: f64,
    pub heartbeats: f64,
    pub live_p50: Duration,
    pub live_p99: Duration,
    pub live_missed: usize,
    pub cancel: CancelFigures,
}

/// Cancel latencies (see `load::cancels`).
#[derive(Debug, Default)]
pub struct CancelFigures {
    pub told_p50: Duration,
    pub told_p99: Duration,
    pub stopped_p50: Duration,
    pub stopped_p99: Duration,
}

pub const CLIENT_SECRET: &str = "bench-client-secret-0123456789";
pub const ENROLLMENT_SECRET: &str = "bench-enrollment-secret-0123456789";

/// A broker serving on its own runtime until dropped.
pub struct Running {
    pub url: String,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn config(db: Database) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        db,
        db_max_connections: 16,
        client_secret: Secret::new(CLIENT_SECRET),
        enrollment_secret: Secret::new(ENROLLMENT_SECRET),
        repo_transports: vec![embark_core::repo_url::Transport::Https],
        max_connections: 4096,
        head_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        shutdown_timeout: Duration::from_secs(5),
        live_send_timeout: Duration::from_secs(10),
        rate_limit: RateLimit {
            per_second: 0,
            burst: 0,
        },
        leases: embark_broker::api::Settings::default().leases,
    }
}

/// Starts a broker on `db`, on a runtime of its own.
fn start(db: Database) -> anyhow::Result<Running> {
    let config = config(db);
    let shutdown = Shutdown::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stopping = shutdown.clone();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the broker");
        runtime.block_on(async move {
            match Server::start(config, stopping).await {
                Ok(server) => {
                    let _ = ready_tx.send(Ok(server.addr()));
                    server.serve().await;
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(anyhow::Error::new(error)));
                }
            }
        });
    });
    let addr = ready_rx.recv().context("the broker thread ended")??;
    Ok(Running {
        url: format!("http://{addr}"),
        shutdown,
        thread: Some(thread),
    })
}

/// The broker's figures on `db`, then the floor's on `floor`.
async fn measure(db: Database, floor: floor::Target, phase: Duration) -> anyhow::Result<Figures> {
    let broker = start(db)?;
    let mut figures = load::run(&broker.url, phase).await?;
    drop(broker);
    let (cycles, events) = floor::run(floor, phase).await?;
    figures.cycles_floor = cycles;
    figures.events_floor = events;
    Ok(figures)
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let phase = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;

    eprintln!("embark-bench: SQLite …");
    let sqlite = runtime.block_on(measure(
        Database::Sqlite(dir.path().join("broker.db")),
        floor::Target::Sqlite(dir.path().join("floor.db")),
        phase,
    ))?;

    let server = ["EMBARK_BENCH_DATABASE_URL", "EMBARK_TEST_DATABASE_URL"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|url| !url.trim().is_empty()));
    let postgres = match server {
        None => None,
        Some(server) => {
            eprintln!("embark-bench: PostgreSQL …");
            Some(runtime.block_on(async {
                let broker_db = floor::Scratch::create(&server).await?;
                let floor_db = floor::Scratch::create(&server).await?;
                let figures = measure(
                    Database::Postgres(broker_db.url.clone()),
                    floor::Target::Postgres(floor_db.url.clone()),
                    phase,
                )
                .await;
                broker_db.drop_database().await;
                floor_db.drop_database().await;
                figures
            })?)
        }
    };
    print(&sqlite, postgres.as_ref(), phase);
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// How one row shows a store's figures.
type Cell = dyn Fn(&Figures) -> String;

fn print(sqlite: &Figures, postgres: Option<&Figures>, phase: Duration) {
    let cell =
        |figures: Option<&Figures>, value: &dyn Fn(&Figures) -> String| figures.map_or_else(|| "n/a".to_owned(), value);
    let rows: [(&str, &Cell); 12] = [
        ("task cycles/s, 8 runners", &|f| format!("{:.0}", f.cycles)),
        ("  floor (sqlx, same rows)", &|f| format!("{:.0}", f.cycles_floor)),
        ("  broker / floor", &|f| format!("{:.2}", f.cycles / f.cycles_floor)),
        ("  CPU per cycle (broker + load)", &|f| {
            format!("{:.0} us", f.cycle_cpu.as_secs_f64() * 1e6)
        }),
        ("  cycles/s on 2 idle cores **", &|f| {
            format!("{:.0}", 2.0 / f.cycle_cpu.as_secs_f64().max(1e-9))
        }),
        ("events/s, batches of 100", &|f| format!("{:.0}", f.events)),
        ("  floor (sqlx, same rows)", &|f| format!("{:.0}", f.events_floor)),
        ("  broker / floor", &|f| format!("{:.2}", f.events / f.events_floor)),
        ("heartbeats/s, 8 runners", &|f| format!("{:.0}", f.heartbeats)),
        ("live p50 / p99, 100 readers", &|f| {
            format!(
                "{:.1} / {:.1} ms{}",
                f.live_p50.as_secs_f64() * 1e3,
                f.live_p99.as_secs_f64() * 1e3,
                if f.live_missed > 0 {
                    format!(" ({} missed)", f.live_missed)
                } else {
                    String::new()
                }
            )
        }),
        ("cancel -> runner told p50/p99", &|f| {
            format!("{:.1} / {:.1} ms", ms(f.cancel.told_p50), ms(f.cancel.told_p99))
        }),
        ("cancel -> stopped p50/p99 *", &|f| {
            format!("{:.1} / {:.1} ms", ms(f.cancel.stopped_p50), ms(f.cancel.stopped_p99))
        }),
    ];
    println!(
        "embark-bench: {} s per phase, broker and load in one process",
        phase.as_secs()
    );
    println!("{:<30} {:>22} {:>22}", "", "SQLite", "PostgreSQL");
    for (name, value) in rows {
        println!("{name:<30} {:>22} {:>22}", value(sqlite), cell(postgres, value));
    }
    println!(
        "* a runner that stops at once and reports `cancelled` (no Pi): the broker's part; a real Pi's stop is \
         `npm run smoke:runner-cancel`'s figure"
    );
    println!(
        "** 2 s of CPU per second over the CPU one cycle took (broker and load generator together, in this \
         process): the rate if nothing else ran on the 2 cores; compare the load average"
    );
    if postgres.is_none() {
        println!("PostgreSQL: set EMBARK_BENCH_DATABASE_URL (or EMBARK_TEST_DATABASE_URL) to a server to measure it.");
    }
}
