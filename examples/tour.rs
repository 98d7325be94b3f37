//! A guided, timed tour of awaitkit's patterns.
//!
//! Run it with `cargo run --all-features --example tour`. It walks through
//! asyncio's concurrency patterns one section at a time and prints what each
//! pattern does and how long it took. It runs on `futures::executor` — the
//! same code runs unchanged on tokio or smol.
//!
//! The last section shares one quota and one semaphore between processes
//! through Redis: it starts its own `redis-server` if one is on the `PATH`,
//! and says how to install one if not.

#[path = "common/sqlite.rs"]
mod sqlite;

#[cfg(feature = "redis")]
#[path = "common/redis_server.rs"]
mod redis_server;

use futures::StreamExt;
use futures_timer::Delay;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn section(title: &str) {
    println!("\n== {title}");
}

async fn fetch_user(id: u32) -> String {
    Delay::new(ms(500)).await;
    format!("user-{id}")
}

async fn fetch_posts(id: u32) -> Vec<String> {
    Delay::new(ms(300)).await;
    (1..=3).map(|n| format!("post {n} of user-{id}")).collect()
}

/// A download that takes `delay` and says so when it is cancelled.
struct Download {
    name: &'static str,
    finished: bool,
}

impl Drop for Download {
    fn drop(&mut self) {
        if !self.finished {
            println!("   {} cancelled (dropped before finishing)", self.name);
        }
    }
}

async fn download(name: &'static str, delay: u64) -> &'static str {
    let mut guard = Download {
        name,
        finished: false,
    };
    Delay::new(ms(delay)).await;
    guard.finished = true;
    name
}

async fn call_api(n: u32) -> Result<u32, String> {
    Delay::new(ms(50 * u64::from(n))).await;
    if n == 3 {
        Err(format!("call {n} failed"))
    } else {
        Ok(n * 10)
    }
}

/// A request handler: the network (50 ms), then parsing the body. Request
/// 13 parses a large body that takes 30 ms of CPU — on the executor's thread
/// (`off_executor = false`, the bug) or on a blocking thread pool.
async fn handle(id: u32, off_executor: bool) -> usize {
    Delay::new(ms(50)).await;
    let body = format!("payload of request {id}");
    let parse = move || {
        if id == 13 {
            std::thread::sleep(ms(30)); // stands in for 30 ms of CPU work
        }
        body.len()
    };
    if off_executor {
        blocking::unblock(parse).await
    } else {
        parse()
    }
}

fn main() {
    // Section 17 starts this tour again as separate processes.
    #[cfg(feature = "redis")]
    if let Ok(spec) = std::env::var(fleet::CHILD) {
        std::process::exit(fleet::child(&spec));
    }
    let tour = Instant::now();
    futures::executor::block_on(async {
        section("1. Sequential vs gather!: fetch a user (0.5 s) and their posts (0.3 s)");
        let start = Instant::now();
        let user = fetch_user(1).await;
        let posts = fetch_posts(1).await;
        let sequential = start.elapsed();
        println!(
            "   sequential: {user} with {} posts in {sequential:.2?}",
            posts.len()
        );

        let start = Instant::now();
        let (user, posts) = awaitkit::gather!(fetch_user(1), fetch_posts(1)).await;
        let concurrent = start.elapsed();
        println!(
            "   gather!:    {user} with {} posts in {concurrent:.2?}",
            posts.len()
        );
        println!(
            "   speedup: {:.1}x (the slower call sets the pace)",
            sequential.as_secs_f64() / concurrent.as_secs_f64()
        );

        section("2. gather over many: 1 000 calls of 200 ms each, outputs in input order");
        let start = Instant::now();
        let results = awaitkit::gather((0..1000u64).map(|i| async move {
            Delay::new(ms(200)).await;
            i * i
        }))
        .await;
        println!(
            "   {} results in {:.2?}; results[7] = {} (input order kept)",
            results.len(),
            start.elapsed(),
            results[7]
        );

        section("3. as_completed: handle each result as soon as it is ready");
        let start = Instant::now();
        let mut done = awaitkit::as_completed([
            download("big.iso", 600),
            download("small.txt", 100),
            download("medium.zip", 300),
        ])
        .indexed();
        while let Some((index, name)) = done.next().await {
            println!("   {:>6.2?}  #{index} {name}", start.elapsed());
        }

        section(
            "4. wait_any, first_ok, staggered_race: the first answer, the first success, a hedged request",
        );
        let start = Instant::now();
        let mirrors = [
            download("mirror-eu", 400),
            download("mirror-us", 150),
            download("mirror-asia", 700),
        ];
        let (index, name, rest) = awaitkit::wait_any(mirrors).await.expect("three mirrors");
        println!(
            "   {:.2?}: #{index} {name} answered first; {} still running",
            start.elapsed(),
            rest.len()
        );
        drop(rest);
        // A mirror that fails fast should not win: the first *success* wins.
        let start = Instant::now();
        let mirrors = [
            ("mirror-eu", 400, true),
            ("mirror-us", 50, false),
            ("mirror-asia", 200, true),
        ]
        .map(|(name, delay, up)| async move {
            let name = download(name, delay).await;
            if up {
                Ok(name)
            } else {
                Err(format!("{name}: 503"))
            }
        });
        let (index, name) = awaitkit::first_ok(mirrors)
            .await
            .expect("two mirrors are up");
        println!(
            "   {:.2?}: first_ok: #{index} {name} is the first success (mirror-us failed at 50 ms)",
            start.elapsed()
        );
        // A hedged request: ask the next replica only when the last one is slow
        // (100 ms) or fails, instead of all at once.
        let start = Instant::now();
        let replicas =
            [("replica-a", 600), ("replica-b", 150), ("replica-c", 150)].map(|(name, delay)| {
                move || async move { Ok::<_, String>(download(name, delay).await) }
            });
        let (index, name) = awaitkit::staggered_race(replicas, ms(100))
            .await
            .expect("a replica answers");
        println!(
            "   {:.2?}: staggered_race: #{index} {name} won; replica-b started at 100 ms, replica-c at 200 ms",
            start.elapsed()
        );

        section("5. wait(FirstCompleted): take what is done, keep the rest running");
        let start = Instant::now();
        let jobs = [
            download("job-a", 200),
            download("job-b", 500),
            download("job-c", 250),
        ];
        let outcome = awaitkit::wait(jobs, awaitkit::ReturnWhen::FirstCompleted).await;
        println!(
            "   {:.2?}: done {:?}, {} pending",
            start.elapsed(),
            outcome.done,
            outcome.pending.len()
        );
        let rest = outcome
            .pending
            .wait(awaitkit::ReturnWhen::AllCompleted)
            .await;
        println!(
            "   {:.2?}: the rest finished too: {:?}",
            start.elapsed(),
            rest.done
        );

        section("6. try_gather: fail fast, cancel the others");
        let start = Instant::now();
        let result = awaitkit::try_gather((1..=5).map(call_api)).await;
        println!(
            "   {:.2?}: {result:?} (calls 4 and 5 were dropped, not awaited)",
            start.elapsed()
        );

        section("7. gather_settled: panics become values (return_exceptions=True)");
        // Keep the default hook from printing the captured panic.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let outcomes = awaitkit::gather_settled((0..3).map(|i| async move {
            Delay::new(ms(20)).await;
            assert!(i != 1, "task {i} blew up");
            i
        }))
        .await;
        std::panic::set_hook(hook);
        for (i, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Ok(v) => println!("   task {i}: ok {v}"),
                Err(panic) => println!("   task {i}: {panic}"),
            }
        }

        section("8. timeout: cut off a slow call, let a fast one through (asyncio.wait_for)");
        let start = Instant::now();
        let fast = awaitkit::timeout(ms(300), download("fast call", 100)).await;
        println!(
            "   {:.2?}: fast call with a 300 ms limit -> {fast:?}",
            start.elapsed()
        );
        let start = Instant::now();
        let slow = awaitkit::timeout(ms(300), download("slow call", 2_000))
            .await
            .map_err(|elapsed| elapsed.to_string());
        println!(
            "   {:.2?}: slow call with a 300 ms limit -> {slow:?}",
            start.elapsed()
        );

        section("9. wait with a timeout, as_completed with a deadline: hand back the unfinished");
        let start = Instant::now();
        let jobs = [
            download("job-x", 100),
            download("job-y", 150),
            download("job-z", 5_000),
        ];
        let outcome = awaitkit::wait(jobs, awaitkit::ReturnWhen::AllCompleted)
            .with_timeout(ms(250))
            .await;
        println!(
            "   {:.2?}: timed out = {}, done {:?}, {} still running (dropping them now)",
            start.elapsed(),
            outcome.timed_out,
            outcome.done,
            outcome.pending.len()
        );
        drop(outcome.pending);
        let start = Instant::now();
        let mut stream = awaitkit::as_completed([download("q1", 50), download("q2", 4_000)])
            .indexed()
            .with_timeout(ms(200));
        while let Some(item) = stream.next().await {
            match item {
                Ok((i, name)) => println!("   {:.2?}: #{i} {name} done", start.elapsed()),
                Err(timed_out) => {
                    println!("   {:.2?}: {timed_out}", start.elapsed());
                    drop(timed_out.pending);
                }
            }
        }

        section("10. retry: exponential backoff with full jitter, printing each attempt");
        let start = Instant::now();
        let attempts = std::cell::Cell::new(0);
        let flaky = || {
            attempts.set(attempts.get() + 1);
            let n = attempts.get();
            async move {
                Delay::new(ms(20)).await;
                if n < 4 {
                    Err("503 Service Unavailable")
                } else {
                    Ok("200 OK")
                }
            }
        };
        let policy = awaitkit::RetryPolicy::new(5)
            .backoff(awaitkit::Backoff::exponential(ms(100), ms(1_000)))
            .attempt_timeout(ms(500));
        let result = policy
            .retry(flaky)
            .on_retry(|event| {
                println!(
                    "   {:.2?}: attempt {} failed: {}; retrying in {:.0?}",
                    start.elapsed(),
                    event.attempt,
                    event.error,
                    event.delay
                )
            })
            .await;
        println!(
            "   {:.2?}: {result:?} after {} attempts",
            start.elapsed(),
            attempts.get()
        );

        section("11. Semaphore: ten calls, at most three at a time (async with semaphore:)");
        let start = Instant::now();
        let sem = awaitkit::Semaphore::new(3);
        let calls = (1..=10).map(|i| {
            sem.limit(async move {
                println!("   {:>7.2?}: call {i:>2} starts", start.elapsed());
                Delay::new(ms(100)).await;
                println!("   {:>7.2?}: call {i:>2} ends", start.elapsed());
                i
            })
        });
        let done = awaitkit::gather(calls).await;
        println!(
            "   {:.2?}: {} calls done in 4 waves of at most 3 (sequential would take 1 s)",
            start.elapsed(),
            done.len()
        );

        section("12. RateLimiter: 20 calls at 5 per second (a strict sliding window)");
        let start = Instant::now();
        let limiter = awaitkit::RateLimiter::new(5, Duration::from_secs(1));
        let calls = (1..=20).map(|i| {
            limiter.limit(async move {
                let t = start.elapsed();
                if i % 5 == 1 {
                    print!("   {t:>7.2?}: calls");
                }
                print!(" {i}");
                if i % 5 == 0 {
                    println!();
                }
            })
        });
        awaitkit::gather(calls).await;
        println!(
            "   {:.2?}: 20 calls, 5 per window of 1 s: in every second, never a sixth",
            start.elapsed()
        );
        let composed = awaitkit::RateLimiter::new(50, Duration::from_secs(1));
        let sem = awaitkit::Semaphore::new(2);
        let running = std::cell::Cell::new(0);
        let most = std::cell::Cell::new(0);
        let start = Instant::now();
        let calls = (1..=10).map(|_| {
            sem.limit(composed.limit(async {
                running.set(running.get() + 1);
                most.set(most.get().max(running.get()));
                Delay::new(ms(20)).await;
                running.set(running.get() - 1);
            }))
        });
        awaitkit::gather(calls).await;
        println!(
            "   {:.2?}: rate and concurrency together (50/s, 2 at a time): 10 calls, at most {} at once",
            start.elapsed(),
            most.get()
        );

        section("13. Pool: SQLite connections, three queries at once through a pool of three");
        let path = sqlite::temp_db("tour");
        let pool = awaitkit::Pool::new(sqlite::Sqlite { path: path.clone() }, 3);
        sqlite::create_schema(&pool).await.expect("the schema");
        let start = Instant::now();
        // Three connections held at once (`try_gather` resolves only when all
        // three gets have one), so the pool opens three even on a cold start.
        let conns = awaitkit::try_gather((0..3).map(|_| pool.get()))
            .await
            .expect("three pooled connections");
        let queries = conns.iter().zip(1..=3i64).map(|(conn, id)| {
            sqlite::with_conn(conn, move |c| {
                c.query_row("SELECT id, name FROM users WHERE id = ?1", [id], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })
            })
        });
        let users = awaitkit::try_gather(queries).await.expect("the queries");
        drop(conns);
        for (id, name) in &users {
            println!("   user {id}: {name}");
        }
        let status = pool.status();
        println!(
            "   {:.2?}: 3 queries at once (blocking SQLite calls on the `blocking` thread pool); pool size {}, idle {}",
            start.elapsed(),
            status.size,
            status.idle
        );
        let start = Instant::now();
        let many = awaitkit::gather((0..30).map(|i| sqlite::fetch_user(&pool, i % 3 + 1))).await;
        println!(
            "   {:.2?}: {} more queries reusing the same {} connections (recycled with `SELECT 1`)",
            start.elapsed(),
            many.len(),
            pool.status().size
        );
        drop(pool);
        let _ = std::fs::remove_file(path);

        section(
            "14. process_batch: update 1 000 users, at most 10 at a time, with a live progress line",
        );
        use std::io::{IsTerminal as _, Write as _};
        // On a terminal one line is redrawn (`\r`); piped to a file, a plain
        // line at every quarter.
        let live = std::io::stdout().is_terminal();
        let most = std::cell::Cell::new(0);
        let updated = awaitkit::process_batch(1..=1000u32, 10, |id| async move {
            Delay::new(ms(5)).await; // an API call
            id
        })
        .on_progress(|p: &awaitkit::Progress| {
            most.set(most.get().max(p.in_flight + 1));
            let total = p.total.unwrap_or(0);
            let finished = p.done == total;
            let due = if live {
                p.done % 50 == 0 || finished
            } else {
                p.done * 4 % total.max(1) == 0
            };
            if !due {
                return;
            }
            // No ETA once everything is done.
            let eta = if finished {
                String::new()
            } else {
                format!(", ETA {:.2?}", p.eta.unwrap_or_default())
            };
            let line = format!(
                "{:>4}/{total} done, {:>4.0}/s{eta}, {:.2?} elapsed",
                p.done,
                p.rate.unwrap_or(0.0),
                p.elapsed
            );
            if live {
                print!("\r   {line:<60}");
                let _ = std::io::stdout().flush();
            } else {
                println!("   {line}");
            }
        })
        .await;
        if live {
            println!();
        }
        println!(
            "   {} users updated in input order (first {}, last {}); at most {} calls at once (sequential: 5 s)",
            updated.len(),
            updated[0],
            updated[999],
            most.get()
        );

        section(
            "15. task_group: background work next to other work (asyncio.create_task / TaskGroup)",
        );
        let start = Instant::now();
        let out = awaitkit::task_group(|tg| async move {
            let task1 = tg.spawn(async {
                Delay::new(ms(300)).await;
                Ok::<_, String>("task 1")
            });
            let task2 = tg.spawn(async {
                Delay::new(ms(300)).await;
                Ok("task 2")
            });
            Delay::new(ms(300)).await; // other work meanwhile
            println!("   {:>7.2?}: other work done", start.elapsed());
            Ok((task1.await??, task2.await??))
        })
        .await;
        println!(
            "   {:>7.2?}: {out:?} (300 ms, not 900: nothing was spawned on the executor)",
            start.elapsed()
        );
        let start = Instant::now();
        let failed = awaitkit::task_group(|tg| async move {
            tg.spawn(async { Ok(download("slow download", 1_000).await) });
            let bad = tg.spawn(async {
                Delay::new(ms(50)).await;
                Err::<&str, _>("the API said no")
            });
            bad.await.expect("nothing aborts it")
        })
        .await;
        println!(
            "   {:>7.2?}: {failed:?} — the first error cancelled the rest",
            start.elapsed()
        );
        // One task cancelled, the group goes on (asyncio's task.cancel()).
        let start = Instant::now();
        let out = awaitkit::task_group(|tg| async move {
            let stuck =
                tg.spawn(async { Ok::<_, String>(download("stuck download", 60_000).await) });
            let quick = tg.spawn(async { Ok::<_, String>(download("quick download", 100).await) });
            let quick = quick.await??;
            stuck.abort(); // dropped here
            let stuck = stuck.await.unwrap_err(); // TaskCancelled
            Ok::<_, String>(format!("{quick} done; stuck download: {stuck}"))
        })
        .await;
        println!("   {:>7.2?}: {out:?}", start.elapsed());

        section("16. Debug mode: find the request that blocks the executor, then fix it");
        for off_executor in [false, true] {
            let report =
                awaitkit::watch::Report::new().on_slow_poll(|slow| println!("   warning: {slow}"));
            let start = Instant::now();
            let requests =
                (0..20).map(|id| report.watch(format!("request {id}"), handle(id, off_executor)));
            awaitkit::gather(requests).await;
            let how = if off_executor {
                "after the fix (blocking::unblock)"
            } else {
                "with request 13 parsing on the executor"
            };
            println!(
                "   {:>7.2?}: 20 requests {how}; the report:",
                start.elapsed()
            );
            for line in report.to_string().lines() {
                println!("     {line}");
            }
        }
        println!(
            "   The first report points at request 13: one poll held the thread for 30 ms, and \
             the requests polled after it finished 30 ms late (wall 80 ms, not 50). Moved to a \
             blocking thread, it still takes 80 ms, but holds the executor for microseconds and \
             nobody else waits."
        );

        section(
            "17. Beyond one process: one quota and one semaphore shared by 4 processes, through Redis",
        );
        #[cfg(feature = "redis")]
        fleet::section().await;
        #[cfg(not(feature = "redis"))]
        println!("   skipped: needs the `redis` feature (cargo run --all-features --example tour)");
    });
    println!("\nTour finished in {:.2?}.", tour.elapsed());
}

/// Section 17: the multi-process case. The tour starts a throwaway
/// `redis-server`, then starts itself 4 times over (with [`fleet::CHILD`]
/// set): the 4 processes share one `awaitkit::redis::RateLimiter` quota,
/// then one `awaitkit::redis::Semaphore`, and print what they were granted,
/// stamped with Redis's clock, for this process to line up.
#[cfg(feature = "redis")]
mod fleet {
    use super::ms;
    use super::redis_server::{self, RedisServer};
    use awaitkit::rate_limiter::Quota;
    use futures_timer::Delay;
    use redis::aio::MultiplexedConnection;
    use std::io::Read as _;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Set in the processes the tour starts: `<role>|<redis url>`.
    pub const CHILD: &str = "AWAITKIT_TOUR_FLEET";
    const PROCESSES: usize = 4;
    /// Rate-limited calls per process, all asked for at once.
    const CALLS: usize = 6;
    /// The shared quota: 10 calls per 500 ms (a strict sliding window).
    const QUOTA_CALLS: usize = 10;
    const PERIOD: Duration = Duration::from_millis(500);
    /// The shared semaphore: 2 permits, each job holding one for 100 ms.
    const PERMITS: usize = 2;
    const JOBS: usize = 2;
    const JOB: Duration = Duration::from_millis(100);
    /// A process that dies holding a permit gives it back after this.
    const LEASE: Duration = Duration::from_secs(2);
    /// Every call to Redis gives up after this: an error, never a hang.
    const TIMEOUT: Duration = Duration::from_millis(500);
    /// The processes' own deadline, after which they are killed.
    const FLEET_LIMIT: Duration = Duration::from_secs(10);

    pub async fn section() {
        let Some(binary) = redis_server::find() else {
            println!(
                "   skipped: no `redis-server` on the PATH. Get one (Debian/Ubuntu: \
                 `sudo apt-get install redis-server`; macOS: `brew install redis`) and run the tour again."
            );
            return;
        };
        if let Err(e) = run(binary).await {
            println!("   stopped: {e}");
        }
    }

    async fn run(binary: PathBuf) -> Result<(), String> {
        // redis-rs is built with both its tokio and its smol support here
        // (--all-features); outside a tokio runtime it would pick smol
        // anyway, this makes the choice explicit.
        let _ = redis::aio::prefer_smol();
        let start = Instant::now();
        // Stopped when `server` is dropped: at the end of this section, or
        // on a panic.
        let server = blocking::unblock(move || RedisServer::start(&binary)).await?;
        println!(
            "   {:.2?}: redis-server up on 127.0.0.1:{} (a temporary directory, no persistence)",
            start.elapsed(),
            server.port()
        );
        println!(
            "   Each process is this tour started again. Their Redis connections run on \
             redis-rs's smol support\n   (`smol-comp`: smol's global executor drives them), \
             awaitkit's limiter and semaphore on futures::executor."
        );
        let url = server.url();

        println!(
            "   RateLimiter: {QUOTA_CALLS} calls per {PERIOD:?} (strict window), {PROCESSES} processes \
             asking for {CALLS} calls each at once:"
        );
        let start = Instant::now();
        let mut grants = Vec::new();
        for (p, out) in run_fleet("limiter", &url).await?.iter().enumerate() {
            for line in out.lines() {
                grants.push((parse(line)?, p + 1));
            }
        }
        grants.sort_unstable();
        let period = PERIOD.as_micros() as u64;
        let first = grants.first().ok_or("no grants")?.0;
        let windows = (grants.last().ok_or("no grants")?.0 - first) / period + 1;
        for k in 0..windows {
            let mut per = [0; PROCESSES];
            for &(_, p) in grants.iter().filter(|g| (g.0 - first) / period == k) {
                per[p - 1] += 1;
            }
            let who: Vec<String> = (1..=PROCESSES)
                .filter(|p| per[p - 1] > 0)
                .map(|p| format!("p{p} x{}", per[p - 1]))
                .collect();
            println!(
                "     {:>6} ms: {:>2} grants ({})",
                format!("+{}", k * period / 1000),
                per.iter().sum::<usize>(),
                who.join(", ")
            );
        }
        // The most grants in any window of one period (sliding, not only
        // the ones printed above), by Redis's clock.
        let stamps: Vec<u64> = grants.iter().map(|g| g.0).collect();
        let busiest = (0..stamps.len())
            .map(|i| stamps[i..].partition_point(|&s| s < stamps[i] + period))
            .max()
            .unwrap_or(0);
        println!(
            "   {:.2?}: {} calls granted; the busiest {PERIOD:?} by Redis's clock held {busiest} \
             (quota {QUOTA_CALLS}).\n   First come, first served across processes: a call \
             that finds the quota spent books the next free slot and sleeps until it.",
            start.elapsed(),
            grants.len()
        );

        println!(
            "   Semaphore: {PERMITS} permits (lease {LEASE:?}), {PROCESSES} processes running \
             {JOBS} jobs of {JOB:?} each under `limit`:"
        );
        let start = Instant::now();
        let mut holds = Vec::new();
        for (p, out) in run_fleet("semaphore", &url).await?.iter().enumerate() {
            for (job, line) in out.lines().enumerate() {
                let (from, to) = line.split_once(' ').ok_or("a malformed line")?;
                holds.push((parse(from)?, parse(to)?, p + 1, job + 1));
            }
        }
        holds.sort_unstable();
        let first = holds.first().ok_or("no holds")?.0;
        let last = holds.iter().map(|h| h.1).max().unwrap_or(first);
        // One column per 10 ms (wider spans are squeezed into 50 columns).
        let col = ((last - first) / 50).max(10_000);
        for &(from, to, p, job) in &holds {
            // Each column is the `col` microseconds it starts, rounded.
            let (a, b) = ((from - first + col / 2) / col, (to - first + col / 2) / col);
            let bar: String = (0..(last - first + col / 2) / col)
                .map(|c| if (a..b).contains(&c) { '#' } else { '.' })
                .collect();
            println!(
                "     p{p} job {job} |{bar}| +{} to +{} ms",
                (from - first) / 1000,
                (to - first) / 1000
            );
        }
        // Holders at once by Redis time: each job stamped its start after
        // its grant and its end before its release.
        let mut events: Vec<(u64, i32)> =
            holds.iter().flat_map(|h| [(h.0, 1), (h.1, -1)]).collect();
        events.sort_unstable(); // at the same microsecond, an end (-1) first
        let (mut now, mut most) = (0, 0);
        for (_, delta) in events {
            now += delta;
            most = most.max(now);
        }
        let mut conn = connect(&url).await?;
        let mut zcard = redis::cmd("ZCARD");
        let query = zcard.arg("tour:db:holders").query_async::<usize>(&mut conn);
        let held = awaitkit::timeout(TIMEOUT, query)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        println!(
            "   {:.2?}: {} jobs, at most {most} holding at once by Redis's clock (capacity \
             {PERMITS});\n   {held} permits still held after the processes exited.",
            start.elapsed(),
            holds.len()
        );
        drop(server);
        Ok(())
    }

    fn parse(s: &str) -> Result<u64, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("a malformed line: {s:?}"))
    }

    /// The processes started by [`run_fleet`], killed if dropped before
    /// they exit.
    struct Fleet(Vec<Child>);

    impl Drop for Fleet {
        fn drop(&mut self) {
            for child in &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts this tour `PROCESSES` times in `role`, and hands back what
    /// each printed (an error if one fails or outlives `FLEET_LIMIT`).
    async fn run_fleet(role: &str, url: &str) -> Result<Vec<String>, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut fleet = Fleet(Vec::new());
        for _ in 0..PROCESSES {
            let child = Command::new(&exe)
                .env(CHILD, format!("{role}|{url}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
            fleet.0.push(child);
        }
        // Waiting on processes blocks: off the executor (see section 16).
        blocking::unblock(move || {
            let deadline = Instant::now() + FLEET_LIMIT;
            let mut outputs = Vec::new();
            for (i, child) in fleet.0.iter_mut().enumerate() {
                let status = loop {
                    match child.try_wait().map_err(|e| e.to_string())? {
                        Some(status) => break status,
                        None if Instant::now() < deadline => std::thread::sleep(ms(5)),
                        None => {
                            return Err(format!("p{} still running after {FLEET_LIMIT:?}", i + 1));
                        }
                    }
                };
                let (mut out, mut err) = (String::new(), String::new());
                if let Some(mut s) = child.stdout.take() {
                    let _ = s.read_to_string(&mut out);
                }
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                if !status.success() {
                    return Err(format!("p{} failed ({status}): {}", i + 1, err.trim()));
                }
                outputs.push(out);
            }
            Ok(outputs)
        })
        .await
    }

    async fn connect(url: &str) -> Result<MultiplexedConnection, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        awaitkit::timeout(TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|e| format!("connecting to Redis: {e}"))?
            .map_err(|e| format!("connecting to Redis: {e}"))
    }

    /// Redis's clock, in microseconds since the epoch.
    async fn redis_now(conn: &mut MultiplexedConnection) -> Result<u64, String> {
        let time = redis::cmd("TIME");
        let query = time.query_async::<(u64, u64)>(conn);
        let (secs, micros) = awaitkit::timeout(TIMEOUT, query)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(secs * 1_000_000 + micros)
    }

    /// A process of the fleet: runs `role` and prints one line per grant;
    /// the exit code.
    pub fn child(spec: &str) -> i32 {
        let _ = redis::aio::prefer_smol();
        let out = futures::executor::block_on(async {
            match spec.split_once('|') {
                Some(("limiter", url)) => limiter(url).await,
                Some(("semaphore", url)) => semaphore(url).await,
                _ => Err(format!(
                    "{CHILD}={spec:?}: expected limiter|<url> or semaphore|<url>"
                )),
            }
        });
        match out {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        }
    }

    /// `CALLS` acquires of the shared quota at once; the Redis time of each
    /// grant.
    async fn limiter(url: &str) -> Result<Vec<String>, String> {
        let quota = Quota::window(QUOTA_CALLS, PERIOD).map_err(|e| e.to_string())?;
        let limiter = awaitkit::redis::RateLimiter::new(connect(url).await?, "tour:", quota)
            .with_timeout(TIMEOUT);
        let grants = awaitkit::try_gather((0..CALLS).map(|_| limiter.acquire("partner-api")))
            .await
            .map_err(|e| e.to_string())?;
        Ok(grants
            .iter()
            .map(|g| g.redis_time().as_micros().to_string())
            .collect())
    }

    /// `JOBS` jobs under the shared semaphore at once; for each, the Redis
    /// time when it started and ended, holding its permit.
    async fn semaphore(url: &str) -> Result<Vec<String>, String> {
        let conn = connect(url).await?;
        let sem = awaitkit::redis::Semaphore::new(conn.clone(), "tour:db", PERMITS, LEASE)
            .with_timeout(TIMEOUT)
            .with_poll_interval(ms(10));
        let jobs = (0..JOBS).map(|_| {
            let (sem, mut conn) = (&sem, conn.clone());
            async move {
                let job = sem.limit(async move {
                    let from = redis_now(&mut conn).await?;
                    Delay::new(JOB).await;
                    let to = redis_now(&mut conn).await?;
                    Ok::<_, String>(format!("{from} {to}"))
                });
                job.await.map_err(|e| e.to_string())?
            }
        });
        awaitkit::try_gather(jobs).await
    }
}
