//! Semaphores, pools, retry and the unkeyed rate limiter: code without
//! `unsafe` blocks (CI's AddressSanitizer run leaves this binary out). One
//! test binary (one build of `common`, one link); each file is a module
//! named as it was.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod manual_clock;
mod pool;
mod pool_panics;
mod pool_sqlite;
mod rate_limiter_model;
mod retry;
mod review_hold;
mod review_rate_limiter_queue;
mod semaphore;
mod semaphore_model;
mod semaphore_panics;
