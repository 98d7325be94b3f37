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
//! tokio current-thread runtime (criterion's runs are not pinned). Under
//! `cargo bench` a second, interleaved measurement (rounds of 2 000
//! operations per function, in turn, median per function) prints each
//! function's time and its ratio to `ping` and writes
//! `<criterion dir>/redis_checks.csv`: the ratio is what the bar (≤ 1.3 ×
//! PING per granted check) compares. On a small machine that ratio depends
//! on where the client and the server run, so the measurement runs in two
//! placements, pinned with `sched_setaffinity` (Linux), each round taking
//! both in turn: `same_cpu`, this thread (the runtime and the connection)
//! and every `redis-server` thread on one CPU, where the round trip is CPU
//! work only and a script's own cost weighs most; `separate_cpus`, the
//! server on that CPU and this thread on another, where the round trip
//! includes waking the other CPU, closer to a network hop. With one CPU
//! available, `same_cpu` only; elsewhere than Linux, one `unpinned` run.
//! The former affinity is restored afterwards (checked), so the process
//! sweep below is not pinned. Its section of `docs/benchmarks.md`:
//! `python3 scripts/bench_table.py --only redis`.
//!
//! Grants per second by processes (not criterion): 1, 4 and 16 OS
//! processes (this binary, run again with `AWAITKIT_REDIS_GRANTS` set),
//! each with its own multiplexed connection and current-thread runtime,
//! share one key of one quota that never runs out (the quotas above) and
//! check it with `try_acquire`, one check at a time, from a common start
//! for a fixed time; the sum of the processes' grants per second, and the
//! time per check each process saw. Beside them, the local
//! `awaitkit::RateLimiter` with the same quotas shared by 1, 4 and 16
//! threads of this process. Every run is repeated in rounds (quick mode:
//! 5 rounds of 200 ms, full: 9 of 500 ms), each round taking every run in
//! turn, and the median kept: fresh processes land on CPUs anew each
//! round, and on a small VM a round trip between a client and Redis on
//! different, idle vCPUs can cost several times one on the same vCPU.
//!
//! Then the quota that runs out: 16 processes loop on `acquire` of one key
//! limited to 1 000/s (a window of 100 per 100 ms; GCRA 1 000/s with a
//! burst of 100) for 1 s (full: 3 s), and the grants' Redis times are
//! checked against the quota (never more than it allows in any period; the
//! bench fails otherwise). Results on stderr and in
//! `<criterion dir>/redis_grants.csv` and `redis_grants_limited.csv`.
//! Under criterion's test mode (`cargo test --benches`) the interleaved
//! measurement runs one round of 50 operations per function and placement
//! (the pinning checked), the sweep runs with 1 and 4 processes for
//! 100 ms, and the quota check with 4 processes for 300 ms, writing
//! nothing.

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
    if let Ok(spec) = std::env::var(GRANTS_CHILD) {
        grants_child(&spec);
        return;
    }
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
    let window = unlimited_quota(Mode::Window);
    let gcra = unlimited_quota(Mode::Gcra);
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

    // The interleaved ratio table in each placement (see `Placement`):
    // under criterion's test mode one short round, unrecorded, so the
    // pinning is exercised; then the process sweep, small, unrecorded.
    let placements = Placement::available();
    if !benching {
        interleaved(&rt, &server, &mut ops, &placements, 1, 50);
        grants_sweep(&settings, server.port, &Sweep::TEST, false);
        return;
    }
    let rounds = if settings.quick { 15 } else { 61 };
    let per_round = 2_000;
    let medians = interleaved(&rt, &server, &mut ops, &placements, rounds, per_round);
    let mut csv = String::from(
        "placement,client_cpu,server_cpu,rounds,ops_per_round,function,median_ns,ratio_to_ping\n",
    );
    for (placement, medians) in placements.iter().zip(&medians) {
        let (client, server) = match placement.cpus {
            Some((client, server)) => (client.to_string(), server.to_string()),
            None => (String::new(), String::new()),
        };
        for ((name, _), m) in ops.iter().zip(medians) {
            csv.push_str(&format!(
                "{},{client},{server},{rounds},{},{name},{m:.0},{:.3}\n",
                placement.name,
                placement.ops_per_round(per_round),
                m / medians[0]
            ));
        }
    }
    std::fs::create_dir_all(&settings.out_dir).unwrap();
    std::fs::write(settings.out_dir.join("redis_checks.csv"), csv).unwrap();

    let sweep = if settings.quick {
        Sweep::QUICK
    } else {
        Sweep::FULL
    };
    grants_sweep(&settings, server.port, &sweep, true);
}

/// Where the interleaved measurement runs: the CPU of the thread that
/// drives the operations (the tokio current-thread runtime, the connection
/// included) and the CPU of every thread of the `redis-server`.
struct Placement {
    /// Its name in `redis_checks.csv`: `same_cpu`, `separate_cpus`, or
    /// `unpinned` where this bench cannot pin.
    name: &'static str,
    /// `(client CPU, server CPU)`; `None`: not pinned.
    cpus: Option<(usize, usize)>,
}

impl Placement {
    /// The placements this machine allows, from the CPUs this thread may
    /// run on: the server on the first; the client on the same one, then
    /// (with two CPUs or more) on the second.
    #[cfg(target_os = "linux")]
    fn available() -> Vec<Placement> {
        let cpus = affinity::get(0);
        let mut placements = vec![Placement {
            name: "same_cpu",
            cpus: Some((cpus[0], cpus[0])),
        }];
        if let Some(&other) = cpus.get(1) {
            placements.push(Placement {
                name: "separate_cpus",
                cpus: Some((other, cpus[0])),
            });
        }
        placements
    }

    /// Without `sched_setaffinity`: one unpinned placement.
    #[cfg(not(target_os = "linux"))]
    fn available() -> Vec<Placement> {
        vec![Placement {
            name: "unpinned",
            cpus: None,
        }]
    }

    /// Operations per function in one round of this placement, given
    /// those of the same-CPU placement: an eighth of them where the client
    /// and the server are on separate CPUs, whose round trips are many
    /// times longer (and so is the run).
    fn ops_per_round(&self, same_cpu: u32) -> u32 {
        match self.cpus {
            Some((client, server)) if client != server => same_cpu.div_ceil(8),
            _ => same_cpu,
        }
    }

    fn describe(&self) -> String {
        match self.cpus {
            Some((client, server)) if client == server => {
                format!("same CPU: the client thread and redis-server on CPU {server}")
            }
            Some((client, server)) => format!(
                "separate CPUs: the client thread on CPU {client}, redis-server on CPU {server}"
            ),
            None => "unpinned: wherever the scheduler puts them".to_owned(),
        }
    }
}

/// The CPU affinity of this thread and of the server's threads as they
/// were before the interleaved measurement, restored when dropped (also
/// on a panic), so the process sweep after it runs unpinned.
struct Pins {
    server_pid: u32,
    #[cfg(target_os = "linux")]
    thread: Vec<usize>,
    #[cfg(target_os = "linux")]
    server: Vec<usize>,
}

impl Pins {
    fn save(server: &Server) -> Pins {
        let server_pid = server.child.id();
        Pins {
            server_pid,
            #[cfg(target_os = "linux")]
            thread: affinity::get(0),
            #[cfg(target_os = "linux")]
            server: affinity::get(server_pid as libc::pid_t),
        }
    }

    /// Pins every thread of the server and this thread as `placement`
    /// says, and checks that they are.
    fn apply(&self, placement: &Placement) {
        let Some((client, server)) = placement.cpus else {
            return;
        };
        #[cfg(target_os = "linux")]
        {
            for tid in affinity::threads(self.server_pid) {
                // A thread that ended meanwhile has nothing to pin.
                if affinity::set(tid, &[server]).is_ok() {
                    assert_eq!(affinity::get(tid), [server], "redis-server thread {tid}");
                }
            }
            affinity::set(0, &[client])
                .unwrap_or_else(|e| panic!("pin this thread to CPU {client}: {e}"));
            // The kernel moves the calling thread before returning.
            assert_eq!(affinity::current_cpu(), client, "this thread's CPU");
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (client, server, self.server_pid);
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        {
            for tid in affinity::threads(self.server_pid) {
                let _ = affinity::set(tid, &self.server);
            }
            if let Err(e) = affinity::set(0, &self.thread) {
                eprintln!("cannot restore this thread's CPU affinity: {e}");
            }
        }
    }
}

/// CPU affinity through `sched_getaffinity` / `sched_setaffinity`.
#[cfg(target_os = "linux")]
mod affinity {
    use std::io;
    use std::mem::{size_of, zeroed};

    /// The CPUs thread `tid` (0: the calling thread) may run on, ascending.
    pub fn get(tid: libc::pid_t) -> Vec<usize> {
        // SAFETY: `cpu_set_t` is a plain bit array; all zeros is the empty set.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        // SAFETY: `set` is a valid, writable `cpu_set_t` of the size passed.
        let r = unsafe { libc::sched_getaffinity(tid, size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(
            r,
            0,
            "sched_getaffinity({tid}): {}",
            io::Error::last_os_error()
        );
        (0..8 * size_of::<libc::cpu_set_t>())
            // SAFETY: `cpu` is below the set's size in bits.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    }

    /// Lets thread `tid` (0: the calling thread) run on `cpus` only.
    pub fn set(tid: libc::pid_t, cpus: &[usize]) -> io::Result<()> {
        // SAFETY: as in `get`.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        for &cpu in cpus {
            assert!(cpu < 8 * size_of::<libc::cpu_set_t>(), "CPU {cpu}");
            // SAFETY: `cpu` is below the set's size in bits (checked above).
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // SAFETY: `set` is a valid `cpu_set_t` of the size passed.
        let r = unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The threads of process `pid` (`/proc/<pid>/task`).
    pub fn threads(pid: u32) -> Vec<libc::pid_t> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap_or_else(|e| panic!("list the threads of process {pid}: {e}"))
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// The CPU the calling thread runs on.
    pub fn current_cpu() -> usize {
        // SAFETY: `sched_getcpu` takes nothing and only returns a number.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu)
            .unwrap_or_else(|_| panic!("sched_getcpu: {}", io::Error::last_os_error()))
    }
}

/// The interleaved measurement: `rounds` rounds, in each of which every
/// placement in turn (which one goes first alternates) runs every op
/// `per_round` times (see `Placement::ops_per_round`), op after op (which
/// one goes first rotates). Prints
/// the table and returns, per placement, every op's median time per
/// operation (ns) over the rounds.
/// This thread's and the server's CPU affinity are restored at the end.
fn interleaved(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    ops: &mut [(&str, Op<'_>)],
    placements: &[Placement],
    rounds: usize,
    per_round: u32,
) -> Vec<Vec<f64>> {
    let began = Instant::now();
    #[cfg(target_os = "linux")]
    let before = (
        affinity::get(0),
        affinity::get(server.child.id() as libc::pid_t),
    );
    let pins = Pins::save(server);
    let mut times: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); ops.len()]; placements.len()];
    for round in 0..rounds {
        for k in 0..placements.len() {
            let p = (round + k) % placements.len();
            pins.apply(&placements[p]);
            let per_round = placements[p].ops_per_round(per_round);
            // Which op goes first rotates too: none always runs right
            // after the move to this placement.
            for j in 0..ops.len() {
                let i = (round + j) % ops.len();
                let op = &mut ops[i].1;
                let t = rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..per_round {
                        op().await;
                    }
                    start.elapsed()
                });
                times[p][i].push(t.as_nanos() as f64 / f64::from(per_round));
            }
        }
    }
    drop(pins);
    #[cfg(target_os = "linux")]
    {
        let after = (
            affinity::get(0),
            affinity::get(server.child.id() as libc::pid_t),
        );
        assert_eq!(
            after, before,
            "CPU affinity (this thread, redis-server) restored"
        );
    }
    let medians: Vec<Vec<f64>> = times
        .into_iter()
        .map(|per_op| {
            per_op
                .into_iter()
                .map(|mut t| {
                    t.sort_by(f64::total_cmp);
                    t[t.len() / 2]
                })
                .collect()
        })
        .collect();
    eprintln!(
        "\nredis_check, interleaved ({rounds} round{} per placement, median per op; {:.1} s):",
        if rounds == 1 { "" } else { "s" },
        began.elapsed().as_secs_f64()
    );
    if placements.len() == 1 && placements[0].cpus.is_some() {
        eprintln!("  (this process may run on one CPU only: the same-CPU placement alone)");
    }
    for (placement, medians) in placements.iter().zip(&medians) {
        eprintln!(
            "  {} ({} ops per function and round)",
            placement.describe(),
            placement.ops_per_round(per_round)
        );
        for ((name, _), m) in ops.iter().zip(medians) {
            eprintln!(
                "    {name:<20} {:>9.2} us  {:>5.2} x ping",
                m / 1000.0,
                m / medians[0]
            );
        }
    }
    medians
}

/// Set in the children of the process sweep: `mode|port|key|run ms`.
const GRANTS_CHILD: &str = "AWAITKIT_REDIS_GRANTS";

/// What a process of the sweep does with the shared key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `try_acquire` on a window that never runs out.
    Window,
    /// `try_acquire` on a GCRA quota that never runs out.
    Gcra,
    /// `acquire` on a window of 100 per 100 ms.
    WindowLimited,
    /// `acquire` on GCRA 1 000/s, bursts of 100.
    GcraLimited,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Window,
        Mode::Gcra,
        Mode::WindowLimited,
        Mode::GcraLimited,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Window => "window",
            Mode::Gcra => "gcra",
            Mode::WindowLimited => "window_limited",
            Mode::GcraLimited => "gcra_limited",
        }
    }

    fn parse(name: &str) -> Mode {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("unknown mode {name}"))
    }

    fn quota(self) -> Quota {
        match self {
            Mode::Window | Mode::Gcra => unlimited_quota(self),
            Mode::WindowLimited => Quota::window(100, Duration::from_millis(100)).unwrap(),
            Mode::GcraLimited => Quota::gcra(1_000, Duration::from_secs(1), 100).unwrap(),
        }
    }
}

/// The quotas that never run out (`Window`: a window of 10⁹ calls per
/// 10 ms, so the sorted set keeps only ~10 ms of stamps; `Gcra`: 10⁹/s,
/// bursts of 10⁹).
fn unlimited_quota(mode: Mode) -> Quota {
    match mode {
        Mode::Window | Mode::WindowLimited => {
            Quota::window(1_000_000_000, Duration::from_millis(10)).unwrap()
        }
        Mode::Gcra | Mode::GcraLimited => {
            Quota::gcra(1_000_000_000, Duration::from_secs(1), 1_000_000_000).unwrap()
        }
    }
}

/// The sizes of a process sweep.
struct Sweep {
    /// Process (and, for the local limiter, thread) counts.
    processes: &'static [usize],
    /// Rounds, in each of which every count runs once in turn.
    rounds: usize,
    /// How long every process (thread) checks in a round.
    run: Duration,
    /// Processes sharing the limited quota.
    limited_processes: usize,
    /// How long they acquire.
    limited_run: Duration,
}

impl Sweep {
    const FULL: Sweep = Sweep {
        processes: &[1, 4, 16],
        rounds: 9,
        run: Duration::from_millis(500),
        limited_processes: 16,
        limited_run: Duration::from_secs(3),
    };
    const QUICK: Sweep = Sweep {
        processes: &[1, 4, 16],
        rounds: 5,
        run: Duration::from_millis(200),
        limited_processes: 16,
        limited_run: Duration::from_secs(1),
    };
    const TEST: Sweep = Sweep {
        processes: &[1, 4],
        rounds: 1,
        run: Duration::from_millis(100),
        limited_processes: 4,
        limited_run: Duration::from_millis(300),
    };
}

/// A child of the sweep: connects, says `ready`, reads the common start
/// (Unix time in ns) from stdin, then checks the shared key until the end
/// of the run. Prints `grants <n> <elapsed ns>`, then, for the limited
/// modes, the Redis time (us) of every grant, one per line.
fn grants_child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let [mode, port, key, run_ms] = parts[..] else {
        panic!("bad {GRANTS_CHILD}: {spec}");
    };
    let mode = Mode::parse(mode);
    let run = Duration::from_millis(run_ms.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limiter = rt.block_on(async {
        let conn: MultiplexedConnection = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let limiter = awaitkit::redis::RateLimiter::new(conn, "bench:", mode.quota());
        // Loads the script and warms the connection, on another key.
        limiter
            .try_acquire(format!("{key}:warm-up"))
            .await
            .map(drop)
            .unwrap();
        limiter
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let start_unix = Duration::from_nanos(line.trim().parse().unwrap());
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(start_unix.saturating_sub(now_unix));
    let start = Instant::now();
    let deadline = start + run;
    let mut grants = 0u64;
    let mut stamps = Vec::new();
    rt.block_on(async {
        match mode {
            Mode::Window | Mode::Gcra => {
                while Instant::now() < deadline {
                    if let Err(e) = limiter.try_acquire(key).await {
                        panic!("a check of a quota that never runs out failed: {e}");
                    }
                    grants += 1;
                }
            }
            Mode::WindowLimited | Mode::GcraLimited => {
                // The acquire still waiting at the end of the run is
                // dropped (its booked slot stays unused).
                let end = tokio::time::Instant::from_std(deadline);
                while let Ok(grant) = tokio::time::timeout_at(end, limiter.acquire(key)).await {
                    let grant = grant.unwrap_or_else(|e| panic!("acquire failed: {e}"));
                    stamps.push(grant.redis_time().as_micros());
                    grants += 1;
                }
            }
        }
    });
    let elapsed = start.elapsed();
    writeln!(out, "grants {grants} {}", elapsed.as_nanos()).unwrap();
    for at in stamps {
        writeln!(out, "{at}").unwrap();
    }
    out.flush().unwrap();
}

/// What one process (or thread) of a run reports.
struct Share {
    grants: u64,
    elapsed: Duration,
    /// Redis times of the grants (us), for the limited modes.
    stamps: Vec<u64>,
}

/// Runs `processes` children in `mode` on one fresh key, from a common
/// start, for `run`.
fn fleet(port: u16, mode: Mode, processes: usize, run: Duration) -> Vec<Share> {
    use std::io::BufRead;
    let exe = std::env::current_exe().expect("this bench's path");
    let key = format!("grants:{}:{processes}:{}", mode.name(), std::process::id());
    let spec = format!("{}|{port}|{key}|{}", mode.name(), run.as_millis());
    let mut children: Vec<(Child, std::io::BufReader<std::process::ChildStdout>)> = (0..processes)
        .map(|_| {
            let mut child = Command::new(&exe)
                .env(GRANTS_CHILD, &spec)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a child of the sweep");
            let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
            (child, stdout)
        })
        .collect();
    for (child, stdout) in &mut children {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        if line.trim() != "ready" {
            let status = child.wait().unwrap();
            panic!("a child of the sweep did not start ({status}): {line:?}");
        }
    }
    // Every child is connected and blocked on stdin: start all of them a
    // little later, on the common (Unix) clock.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + Duration::from_millis(20 + 2 * processes as u64);
    for (child, _) in &mut children {
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", start.as_nanos()).unwrap();
    }
    children
        .into_iter()
        .map(|(mut child, stdout)| {
            let mut lines = stdout.lines().map(Result::unwrap);
            let head = lines.next().unwrap_or_default();
            let status = child.wait().unwrap();
            assert!(status.success(), "a child of the sweep failed: {status}");
            let fields: Vec<&str> = head.split_whitespace().collect();
            let ["grants", grants, nanos] = fields[..] else {
                panic!("unexpected child output: {head:?}");
            };
            Share {
                grants: grants.parse().unwrap(),
                elapsed: Duration::from_nanos(nanos.parse().unwrap()),
                stamps: lines.map(|l| l.parse().unwrap()).collect(),
            }
        })
        .collect()
}

/// `threads` threads of this process check `limiter` (whose quota never
/// runs out) from a common start, for `run`.
fn local_threads(limiter: &awaitkit::RateLimiter, threads: usize, run: Duration) -> Vec<Share> {
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let deadline = start + run;
                    let mut grants = 0u64;
                    // The clock is read once per 64 checks.
                    while Instant::now() < deadline {
                        for _ in 0..64 {
                            if limiter.try_acquire().is_err() {
                                common::unexpected("a quota that never runs out refused");
                            }
                        }
                        grants += 64;
                    }
                    Share {
                        grants,
                        elapsed: start.elapsed(),
                        stamps: Vec::new(),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Grants per second of all `shares` together (each over its own time),
/// and the mean time per check one of them saw, in us.
fn throughput(shares: &[Share]) -> (f64, f64) {
    let rate: f64 = shares
        .iter()
        .map(|s| s.grants as f64 / s.elapsed.as_secs_f64())
        .sum();
    let us: f64 = shares
        .iter()
        .map(|s| s.elapsed.as_secs_f64() * 1e6 / s.grants.max(1) as f64)
        .sum::<f64>()
        / shares.len() as f64;
    (rate, us)
}

/// The grants (Redis times in us, sorted) against `quota`: never more than
/// `max_calls` in any window of one period (GCRA: grant k no earlier than
/// the first plus k - burst + 1 intervals, as the quota's key was fresh).
/// Returns how many grants the quota allows over their span.
fn assert_within_quota(quota: Quota, stamps: &[u64]) -> u64 {
    let period = quota.period().as_micros() as u64;
    let max = quota.max_calls();
    let (Some(&first), Some(&last)) = (stamps.first(), stamps.last()) else {
        return 0;
    };
    let span = last - first;
    match quota.burst() {
        None => {
            for w in stamps.windows(max + 1) {
                assert!(
                    w[max] - w[0] >= period,
                    "{} grants within one period of {period} us: from {} to {}",
                    max + 1,
                    w[0],
                    w[max]
                );
            }
            max as u64 * (span / period + 1)
        }
        Some(burst) => {
            let interval = period.div_ceil(max as u64);
            for (k, &at) in stamps.iter().enumerate().skip(burst) {
                assert!(
                    at >= first + (k + 1 - burst) as u64 * interval,
                    "grant {k} at {at} us is early (first {first} us, interval {interval} us)"
                );
            }
            burst as u64 + span / interval
        }
    }
}

/// The process sweep (see the module docs); `record`: write the CSVs.
fn grants_sweep(settings: &common::Settings, port: u16, sweep: &Sweep, record: bool) {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let local_window = awaitkit::RateLimiter::with_quota(unlimited_quota(Mode::Window));
    let local_gcra = awaitkit::RateLimiter::with_quota(unlimited_quota(Mode::Gcra));
    eprintln!(
        "\nredis_grants: one quota that never runs out, {} rounds of {} ms per run \
         (local: threads of this process); median (min..max) over the rounds:",
        sweep.rounds,
        sweep.run.as_millis()
    );
    let began = Instant::now();
    let functions = ["window", "gcra", "local_window", "local_gcra"];
    // Every run of a round in turn, so load on the machine hits them alike.
    let mut results: Vec<Vec<(f64, f64)>> =
        vec![Vec::new(); functions.len() * sweep.processes.len()];
    for _ in 0..sweep.rounds {
        for (f, function) in functions.iter().enumerate() {
            for (p, &n) in sweep.processes.iter().enumerate() {
                let shares = match *function {
                    "window" => fleet(port, Mode::Window, n, sweep.run),
                    "gcra" => fleet(port, Mode::Gcra, n, sweep.run),
                    "local_window" => local_threads(&local_window, n, sweep.run),
                    _ => local_threads(&local_gcra, n, sweep.run),
                };
                results[f * sweep.processes.len() + p].push(throughput(&shares));
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut rows: Vec<(&str, Vec<String>)> = Vec::new();
    for (f, function) in functions.iter().enumerate() {
        let mut function_rows = Vec::new();
        for (p, &n) in sweep.processes.iter().enumerate() {
            let runs = &results[f * sweep.processes.len() + p];
            let rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let (min, max) = (
                rates.iter().copied().fold(f64::MAX, f64::min),
                rates.iter().copied().fold(0.0, f64::max),
            );
            let rate = median(rates);
            let us = median(runs.iter().map(|r| r.1).collect());
            eprintln!(
                "  {function:<12} x {n:>2}: {rate:>10.0} ({min:.0}..{max:.0}) grants/s  \
                 {us:>8.3} us per check"
            );
            function_rows.push(format!(
                "{n},{},{:.3},{rate:.0},{min:.0},{max:.0},{us:.4},{unix}",
                sweep.rounds,
                sweep.run.as_secs_f64()
            ));
        }
        rows.push((*function, function_rows));
    }

    eprintln!("  (the sweep took {:.1} s)", began.elapsed().as_secs_f64());
    let n = sweep.limited_processes;
    eprintln!(
        "redis_grants_limited: {n} processes acquire one key limited to 1 000/s for {:.1} s:",
        sweep.limited_run.as_secs_f64()
    );
    let mut limited_rows = Vec::new();
    for (mode, function) in [(Mode::WindowLimited, "window"), (Mode::GcraLimited, "gcra")] {
        let shares = fleet(port, mode, n, sweep.limited_run);
        let mut stamps: Vec<u64> = shares.iter().flat_map(|s| s.stamps.clone()).collect();
        stamps.sort_unstable();
        let grants = stamps.len() as u64;
        assert_eq!(grants, shares.iter().map(|s| s.grants).sum::<u64>());
        assert!(grants > 0, "{function}: nothing was granted");
        let allowed = assert_within_quota(mode.quota(), &stamps);
        assert!(
            grants <= allowed,
            "{function}: {grants} grants where the quota allows {allowed}"
        );
        let span = Duration::from_micros(stamps[stamps.len() - 1] - stamps[0]);
        let rate = grants as f64 / sweep.limited_run.as_secs_f64();
        let per: Vec<u64> = shares.iter().map(|s| s.grants).collect();
        let (min, max) = (per.iter().min().unwrap(), per.iter().max().unwrap());
        eprintln!(
            "  {function:<6}: {grants} grants over {:.3} s of Redis time (the quota allows \
             {allowed}), {rate:.0}/s over the run; per process {min}..{max}",
            span.as_secs_f64()
        );
        limited_rows.push((
            function,
            format!(
                "{n},{:.3},{grants},{allowed},{:.3},{rate:.0},1000,{min},{max},{unix}",
                sweep.limited_run.as_secs_f64(),
                span.as_secs_f64()
            ),
        ));
    }

    if !record {
        return;
    }
    for (function, function_rows) in rows {
        settings.replace_csv_rows(
            "redis_grants.csv",
            "group,function,processes,rounds,seconds,grants_per_s,min_grants_per_s,\
             max_grants_per_s,us_per_check,unix_time",
            &format!("redis_grants,{function},"),
            &function_rows,
        );
    }
    for (function, row) in limited_rows {
        settings.upsert_csv(
            "redis_grants_limited.csv",
            "group,function,processes,seconds,grants,allowed,redis_span_s,grants_per_s,\
             quota_per_s,min_per_process,max_per_process,unix_time",
            &format!("redis_grants_limited,{function},"),
            &row,
        );
    }
}
