//! `awaitkit::redis::RateLimiter` against a loopback `redis-server` (started
//! here, on a free port, no persistence), in the same run as its floors:
//!
//! * `ping`: a bare `PING` round trip on the same multiplexed connection
//!   (the floor of any check that asks Redis);
//! * `evalsha_time`: `EVALSHA` of a script that only calls `TIME` (the
//!   floor of any check done by a script that reads Redis's clock);
//! * `window_check` / `gcra_check`: a granted `try_acquire` (quotas that
//!   never run out: a window of 10⁹ calls per 10 ms, so the sorted set
//!   stays at the ~10 ms of stamps a run adds; GCRA 10⁹/s with a burst of
//!   10⁹);
//! * `sem_acquire_release`: an uncontended `redis::Semaphore` acquire and
//!   release (two script calls: compare with 2 x `ping`);
//! * `local_window` / `local_gcra`: the in-process `awaitkit::RateLimiter`
//!   with the same quotas, for scale.
//!
//! One criterion iteration = one awaited operation, one at a time, on a
//! tokio current-thread runtime. Under `cargo bench` a second, interleaved
//! measurement (rounds of 2 000 operations per function, in turn, median
//! per function) prints each function's time and its ratio to `ping` and
//! writes `<criterion dir>/redis_checks.csv`: the ratio is what the bar
//! (≤ 1.3 × PING per granted check) compares. Its section of
//! `docs/benchmarks.md`: `python3 scripts/bench_table.py --only redis`.

mod common;

use awaitkit::rate_limiter::Quota;
use criterion::Criterion;
use redis::aio::MultiplexedConnection;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("awaitkit-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `redis-server` ({e}): install it (`apt-get install redis-server`)"
                )
            });
        // Dropped (killed and waited for) if it never answers.
        let server = Server { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Op<'a> = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = ()> + 'a>> + 'a>;

fn main() {
    let settings = common::Settings::from_env();
    let server = Server::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conn: MultiplexedConnection = rt.block_on(async {
        redis::Client::open(format!("redis://127.0.0.1:{}/", server.port))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });
    let window = Quota::window(1_000_000_000, Duration::from_millis(10)).unwrap();
    let gcra = Quota::gcra(1_000_000_000, Duration::from_secs(1), 1_000_000_000).unwrap();
    let remote_window = awaitkit::redis::RateLimiter::new(conn.clone(), "bench:", window);
    let remote_gcra = awaitkit::redis::RateLimiter::new(conn.clone(), "bench:", gcra);
    let local_window = awaitkit::RateLimiter::with_quota(window);
    let local_gcra = awaitkit::RateLimiter::with_quota(gcra);
    let sem =
        awaitkit::redis::Semaphore::new(conn.clone(), "bench:sem", 8, Duration::from_secs(30));
    let time_script = redis::Script::new("return redis.call('TIME')");

    let ops: Vec<(&str, Op<'_>)> = vec![
        ("ping", {
            let conn = conn.clone();
            Box::new(move || {
                let mut conn = conn.clone();
                Box::pin(async move {
                    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                    assert_eq!(pong, "PONG");
                })
            })
        }),
        ("evalsha_time", {
            let conn = conn.clone();
            let script = &time_script;
            Box::new(move || {
                let mut conn = conn.clone();
                Box::pin(async move {
                    let _: (u64, u64) = script.invoke_async(&mut conn).await.unwrap();
                })
            })
        }),
        ("window_check", {
            let l = &remote_window;
            Box::new(move || Box::pin(async move { l.try_acquire("w").await.map(drop).unwrap() }))
        }),
        ("gcra_check", {
            let l = &remote_gcra;
            Box::new(move || Box::pin(async move { l.try_acquire("g").await.map(drop).unwrap() }))
        }),
        ("sem_acquire_release", {
            let s = &sem;
            Box::new(move || {
                Box::pin(async move { s.acquire().await.unwrap().release().await.unwrap() })
            })
        }),
        ("local_window", {
            let l = &local_window;
            Box::new(move || Box::pin(async move { l.try_acquire().unwrap() }))
        }),
        ("local_gcra", {
            let l = &local_gcra;
            Box::new(move || Box::pin(async move { l.try_acquire().unwrap() }))
        }),
    ];
    let mut ops = ops;

    // Under `cargo bench` (not criterion's test mode): the run marker first,
    // so this run's estimates are newer than it.
    let benching = std::env::args().any(|a| a == "--bench");
    if benching {
        settings.write_run_marker("awaitkit-bench-run-redis.txt");
    }
    let mut c: Criterion = settings.criterion().configure_from_args();
    {
        let mut group = c.benchmark_group("redis_check");
        for (name, op) in ops.iter_mut() {
            group.bench_function(*name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            op().await;
                        }
                        start.elapsed()
                    })
                })
            });
        }
        group.finish();
    }
    c.final_summary();

    // The interleaved ratio table: only under `cargo bench`.
    if !benching {
        return;
    }
    let rounds = if settings.quick { 15 } else { 61 };
    let per_round = 2_000u32;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); ops.len()];
    for _ in 0..rounds {
        for (i, (_, op)) in ops.iter_mut().enumerate() {
            let t = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..per_round {
                    op().await;
                }
                start.elapsed()
            });
            times[i].push(t.as_nanos() as f64 / f64::from(per_round));
        }
    }
    let medians: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect();
    let ping = medians[0];
    let mut csv = String::from("function,median_ns,ratio_to_ping\n");
    eprintln!("\nredis_check, interleaved ({rounds} rounds x {per_round} ops, median per op):");
    for ((name, _), m) in ops.iter().zip(&medians) {
        eprintln!(
            "  {name:<20} {:>9.2} us  {:>5.2} x ping",
            m / 1000.0,
            m / ping
        );
        csv.push_str(&format!("{name},{m:.0},{:.3}\n", m / ping));
    }
    std::fs::create_dir_all(&settings.out_dir).unwrap();
    std::fs::write(settings.out_dir.join("redis_checks.csv"), csv).unwrap();
}
