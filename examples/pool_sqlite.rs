//! A connection pool on a real database: a pool of three SQLite
//! connections, three queries at once.
//!
//! Run it with `cargo run --example pool_sqlite`. SQLite calls block, so
//! each runs on the `blocking` thread pool; the pool itself is awaitkit's,
//! and the same code runs on tokio, smol or `futures::executor`.

#[path = "common/sqlite.rs"]
mod sqlite;

use awaitkit::Pool;
use sqlite::{Sqlite, create_schema, fetch_user, temp_db};
use std::time::Instant;

fn main() {
    futures::executor::block_on(async {
        let path = temp_db("example");
        let pool = Pool::new(Sqlite { path: path.clone() }, 3);
        create_schema(&pool).await.expect("the schema");

        let start = Instant::now();
        let users = awaitkit::gather((1..=3).map(|id| fetch_user(&pool, id))).await;
        for (id, name) in &users {
            println!("user {id}: {name}");
        }
        let status = pool.status();
        println!(
            "3 queries in {:.2?} through a pool of {} (size {}, idle {}, in use {})",
            start.elapsed(),
            status.max_size,
            status.size,
            status.idle,
            status.in_use
        );
        drop(pool);
        let _ = std::fs::remove_file(path);
    });
}
