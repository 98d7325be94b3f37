//! The Redis-backed rate limiter and semaphore, each test against its own
//! throwaway `redis-server` (`common::redis_server`). One test binary; each
//! file is a module named as it was. Needs the `redis-tokio` and
//! `redis-smol` features (`cargo test --all-features`).

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod redis_rate_limiter;
mod redis_semaphore;
mod review_redis;
mod review_sem;
mod review_semnamed;
