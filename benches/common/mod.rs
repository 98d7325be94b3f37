//! What every bench shares: quick/full mode, the criterion directory and the
//! run marker the report script reads (`scripts/bench_table.py`).

#![allow(dead_code)]

use criterion::Criterion;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Wake;
use std::time::Duration;

/// Mode and output directory of a bench run.
pub struct Settings {
    /// `AWAITKIT_BENCH_QUICK=1`: fewer samples, shorter runs.
    pub quick: bool,
    /// criterion's output directory.
    pub out_dir: PathBuf,
}

impl Settings {
    /// Reads the mode and where criterion writes (`$CRITERION_HOME`, else
    /// `$CARGO_TARGET_DIR/criterion`, else `target/criterion`).
    pub fn from_env() -> Self {
        let quick = std::env::var("AWAITKIT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let out_dir = if let Some(home) = std::env::var_os("CRITERION_HOME") {
            PathBuf::from(home)
        } else if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
            PathBuf::from(target).join("criterion")
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join("criterion")
        };
        Settings { quick, out_dir }
    }

    /// criterion configured for the mode.
    pub fn criterion(&self) -> Criterion {
        let c = Criterion::default().output_directory(&self.out_dir);
        if self.quick {
            c.sample_size(10)
                .warm_up_time(Duration::from_millis(200))
                .measurement_time(Duration::from_secs(1))
        } else {
            c.sample_size(30)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(3))
        }
    }

    /// Writes this bench's run marker (`file` in the criterion directory):
    /// results older than it are stale for the report.
    pub fn write_run_marker(&self, file: &str) {
        std::fs::create_dir_all(&self.out_dir).expect("create criterion dir");
        let mode = if self.quick {
            "quick (AWAITKIT_BENCH_QUICK=1): sample size 10, warm-up 200 ms, measurement 1 s"
        } else {
            "full: sample size 30, warm-up 1 s, measurement 3 s"
        };
        std::fs::write(self.out_dir.join(file), format!("{mode}\n")).expect("write run marker");
    }
}

impl Settings {
    /// Writes `row` under `key` (`group,function,` …) in the CSV `file` of
    /// the criterion directory, replacing an older row with the same key.
    pub fn upsert_csv(&self, file: &str, header: &str, key: &str, row: &str) {
        std::fs::create_dir_all(&self.out_dir).expect("create criterion dir");
        let path = self.out_dir.join(file);
        let mut lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("group,") && !l.starts_with(key))
            .map(str::to_owned)
            .collect();
        lines.push(format!("{key}{row}"));
        let mut out = format!("{header}\n");
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        std::fs::write(&path, out).unwrap_or_else(|e| panic!("write {file}: {e}"));
    }
}

/// The benches' top-level wake flag: `wake` is one relaxed store (BENCH.md's
/// minimal driver).
pub struct Flag(pub AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Settings {
    /// Replaces every row under `key` (`group,function,` …) in the CSV
    /// `file` of the criterion directory with `rows` (each without the key):
    /// for results of several rows per function (e.g. one per run), so a
    /// run with fewer rows leaves none of an older run's behind.
    pub fn replace_csv_rows(&self, file: &str, header: &str, key: &str, rows: &[String]) {
        std::fs::create_dir_all(&self.out_dir).expect("create criterion dir");
        let path = self.out_dir.join(file);
        let mut lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("group,") && !l.starts_with(key))
            .map(str::to_owned)
            .collect();
        lines.extend(rows.iter().map(|row| format!("{key}{row}")));
        let mut out = format!("{header}\n");
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        std::fs::write(&path, out).unwrap_or_else(|e| panic!("write {file}: {e}"));
    }
}
