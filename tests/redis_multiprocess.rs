//! One quota shared by 4 OS processes through a real `redis-server`: the
//! test binary starts itself 4 times (2 on tokio, 2 on smol, 4 contenders
//! each), every grant's Redis time comes back on the children's stdout, and
//! the parent counts grants per window by Redis's clock: never more than
//! `max_calls`. It prints the grants per process and the waits (p50, p99,
//! slowest), the fairness measure.
#![cfg(all(feature = "redis-tokio", feature = "redis-smol"))]

mod common;

use awaitkit::rate_limiter::Quota;
use awaitkit::redis::RateLimiter;
use common::redis_server::RedisServer;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "AWAITKIT_REDIS_CHILD";
const PROCESSES: usize = 4;
const CONTENDERS: usize = 4;
const PER_CONTENDER: usize = 5;

fn quota(mode: &str) -> Quota {
    match mode {
        // 8 per 100 ms: 80 grants take about a second.
        "window" => Quota::window(8, Duration::from_millis(100)).unwrap(),
        // 80/s in steps of 12.5 ms, bursts of 4.
        _ => Quota::gcra(80, Duration::from_secs(1), 4).unwrap(),
    }
}

/// The children's entry point: does nothing unless started by
/// [`run_fleet`] (with `AWAITKIT_REDIS_CHILD` set).
#[test]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (url, mode, runtime) = (parts[0].to_owned(), parts[1].to_owned(), parts[2]);
    let body = async move {
        let conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let limiter =
            RateLimiter::new(conn, "fleet:", quota(&mode)).with_timeout(Duration::from_secs(5));
        let contenders = (0..CONTENDERS).map(|_| async {
            let mut out = Vec::new();
            for _ in 0..PER_CONTENDER {
                let start = Instant::now();
                let grant = limiter.acquire("shared").await.expect("acquire");
                out.push((grant.redis_time().as_micros(), start.elapsed().as_micros()));
            }
            out
        });
        let all = awaitkit::gather(contenders).await;
        for (at, waited) in all.into_iter().flatten() {
            println!("GRANT {at} {waited}");
        }
    };
    match runtime {
        "tokio" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body),
        _ => smol::block_on(body),
    }
}

fn run_fleet(mode: &str) {
    let server = RedisServer::start();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            let runtime = if i % 2 == 0 { "tokio" } else { "smol" };
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_process_entry",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, format!("{}|{mode}|{runtime}", server.url()))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a child process")
        })
        .collect();
    let mut stamps = Vec::new();
    let mut waits = Vec::new();
    let mut per_process = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a child failed: {}", out.status);
        let text = String::from_utf8(out.stdout).unwrap();
        let mut count = 0;
        // The harness may print "test child_process_entry ... " on the same line.
        for line in text
            .lines()
            .filter_map(|l| l.split_once("GRANT ").map(|(_, rest)| rest))
        {
            let mut it = line.split(' ').map(|x| x.parse::<u64>().unwrap());
            stamps.push(it.next().unwrap());
            waits.push(it.next().unwrap());
            count += 1;
        }
        per_process.push(count);
    }
    let total = PROCESSES * CONTENDERS * PER_CONTENDER;
    assert_eq!(
        stamps.len(),
        total,
        "every acquire granted once: {per_process:?}"
    );
    let q = quota(mode);
    stamps.sort_unstable();
    let period = q.period().as_micros() as u64;
    match q.burst() {
        None => {
            let max = q.max_calls();
            for pair in stamps.windows(max + 1) {
                assert!(
                    pair[max] - pair[0] >= period,
                    "{} grants within one period: {pair:?}",
                    max + 1
                );
            }
        }
        Some(burst) => {
            // GCRA: grant k (in Redis-time order) no earlier than the first
            // plus (k - burst + 1) intervals.
            let interval = period / q.max_calls() as u64;
            for (k, &at) in stamps.iter().enumerate().skip(burst) {
                assert!(
                    at >= stamps[0] + (k + 1 - burst) as u64 * interval,
                    "grant {k} early"
                );
            }
        }
    }
    waits.sort_unstable();
    let pct = |p: usize| waits[(waits.len() - 1) * p / 100] as f64 / 1000.0;
    println!(
        "{mode}: {PROCESSES} processes x {CONTENDERS} contenders: grants per process {per_process:?}; \
         wait p50 {:.1} ms, p99 {:.1} ms, slowest {:.1} ms; span {:.0} ms (Redis time)",
        pct(50),
        pct(99),
        pct(100),
        (stamps[total - 1] - stamps[0]) as f64 / 1000.0
    );
}

#[test]
fn four_processes_share_one_window_quota() {
    common::watchdog("four_processes_share_one_window_quota", || {
        run_fleet("window")
    });
}

#[test]
fn four_processes_share_one_gcra_quota() {
    common::watchdog("four_processes_share_one_gcra_quota", || run_fleet("gcra"));
}
