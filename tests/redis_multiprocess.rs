//! One quota shared by 4 OS processes through a real `redis-server`: the
//! test binary starts itself 4 times (2 on tokio, 2 on smol, 4 contenders
//! each), every grant's Redis time comes back on the children's stdout, and
//! the parent counts grants per window by Redis's clock: never more than
//! `max_calls`. It prints the grants per process and the waits (p50, p99,
//! slowest), the fairness measure, also for contenders that sleep for the
//! retry-after and check again (no booking), for comparison. A run kills Redis mid-way and
//! restarts it empty: the processes see errors, retry, and recover, and the
//! quota holds on each side of the restart.
#![cfg(all(feature = "redis-tokio", feature = "redis-smol"))]

mod common;

use awaitkit::rate_limiter::Quota;
use awaitkit::redis::{Error, RateLimiter};
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
        "window" | "recheck" => Quota::window(8, Duration::from_millis(100)).unwrap(),
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
    let per_contender: usize = parts[3].parse().unwrap();
    let body = async move {
        // A reconnecting connection: the restart test kills Redis mid-run.
        let conn = redis::Client::open(url)
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let limiter =
            RateLimiter::new(conn, "fleet:", quota(&mode)).with_timeout(Duration::from_millis(300));
        let contenders = (0..CONTENDERS).map(|_| async {
            let mut out = Vec::new();
            let mut failures = 0;
            for _ in 0..per_contender {
                let start = Instant::now();
                let grant = loop {
                    // For comparison: sleep for the retry-after, then
                    // check again (no booking: whoever checks first wins).
                    if mode == "recheck" {
                        match limiter.try_acquire("shared").await {
                            Ok(grant) => break grant,
                            Err(Error::RateLimited { retry_after }) => {
                                smol::Timer::after(retry_after).await;
                                continue;
                            }
                            Err(e) => panic!("try_acquire: {e}"),
                        }
                    }
                    match limiter.acquire("shared").await {
                        Ok(grant) => break grant,
                        Err(e) if e.is_failure() && failures < 1000 => {
                            failures += 1;
                            smol::Timer::after(Duration::from_millis(10)).await;
                        }
                        Err(e) => panic!("acquire: {e}"),
                    }
                };
                out.push((grant.redis_time().as_micros(), start.elapsed().as_micros()));
            }
            (out, failures)
        });
        let all = awaitkit::gather(contenders).await;
        for (grants, failures) in all {
            println!("FAILURES {failures}");
            for (at, waited) in grants {
                println!("GRANT {at} {waited}");
            }
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

/// Grants sorted by Redis time, checked against the quota.
#[track_caller]
fn assert_quota(q: Quota, stamps: &[u64]) {
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
}

fn redis_time(port: u16) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"TIME\r\n").unwrap();
    let mut buf = [0u8; 128];
    let mut text = String::new();
    // *2 $10 <secs> $<n> <micros>: read until both numbers are in.
    while text.matches("\r\n").count() < 5 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "TIME: connection closed");
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    let lines: Vec<&str> = text.split("\r\n").collect();
    lines[2].parse::<u64>().unwrap() * 1_000_000 + lines[4].parse::<u64>().unwrap()
}

fn run_fleet(mode: &str) {
    run_fleet_with(mode, PER_CONTENDER, None);
}

/// The fleet; with `restart = Some(after)`, Redis is killed `after` into
/// the run and restarted 600 ms later, empty (no persistence).
fn run_fleet_with(mode: &str, per_contender: usize, restart: Option<Duration>) {
    let mut server = RedisServer::start();
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
                .env(
                    CHILD,
                    format!("{}|{mode}|{runtime}|{per_contender}", server.url()),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a child process")
        })
        .collect();
    let epochs = restart.map(|after| {
        std::thread::sleep(after);
        let killed_at = redis_time(server.port());
        server.kill();
        std::thread::sleep(Duration::from_millis(600));
        server.restart();
        (killed_at, redis_time(server.port()))
    });
    let mut failures = 0;
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
            .filter_map(|l| l.split_once("FAILURES ").map(|(_, rest)| rest))
        {
            failures += line.parse::<usize>().unwrap();
        }
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
    let total = PROCESSES * CONTENDERS * per_contender;
    assert_eq!(
        stamps.len(),
        total,
        "every acquire granted once: {per_process:?}"
    );
    let q = quota(mode);
    stamps.sort_unstable();
    match epochs {
        None => {
            assert_eq!(failures, 0, "Redis failed without a fault");
            assert_quota(q, &stamps);
        }
        Some((killed_at, restarted_at)) => {
            // Redis forgot every grant when it restarted: the quota holds
            // among the grants the old server made (booked slots may land
            // after the kill) and among the new server's, each counted by
            // Redis time.
            assert!(failures > 0, "no process saw the outage");
            let (old, new): (Vec<u64>, Vec<u64>) = stamps.iter().partition(|&&s| s < restarted_at);
            assert!(
                !old.is_empty() && !new.is_empty(),
                "grants before and after the restart"
            );
            assert_quota(q, &old);
            assert_quota(q, &new);
            println!(
                "restart: killed at {killed_at}, back at {restarted_at} (Redis time, us); \
                 {} grants before, {} after, {failures} failed calls retried",
                old.len(),
                new.len()
            );
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
fn four_processes_through_a_redis_restart() {
    common::watchdog("four_processes_through_a_redis_restart", || {
        run_fleet_with("window", 10, Some(Duration::from_millis(700)))
    });
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

/// For comparison (and the same strictness check): contenders that sleep
/// for the retry-after and check again, instead of booking a slot. Nothing
/// orders them, so the slowest waits far longer than with `acquire`; the
/// output shows by how much.
#[test]
fn four_processes_sleep_and_recheck_for_comparison() {
    common::watchdog("four_processes_sleep_and_recheck_for_comparison", || {
        run_fleet("recheck")
    });
}
