//! A pool manager for SQLite connections (rusqlite with its bundled SQLite),
//! shared by `examples/pool_sqlite.rs` and `tests/sync/pool_sqlite.rs`.
//!
//! SQLite calls block, so every one of them runs on the `blocking` crate's
//! thread pool (`blocking::unblock`), which works under every executor. A
//! pooled object is an `Arc<Mutex<Connection>>` so a query can take it to
//! that thread and the guard stays with the task.

use awaitkit::pool::Manager;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub type Conn = Arc<Mutex<rusqlite::Connection>>;

/// Opens connections to one database file.
pub struct Sqlite {
    pub path: PathBuf,
}

impl Manager for Sqlite {
    type Object = Conn;
    type Error = rusqlite::Error;

    async fn create(&self) -> Result<Conn, rusqlite::Error> {
        let path = self.path.clone();
        let conn = blocking::unblock(move || rusqlite::Connection::open(path)).await?;
        Ok(Arc::new(Mutex::new(conn)))
    }

    /// A health check before a connection is handed out again.
    async fn recycle(&self, conn: &mut Conn) -> Result<(), rusqlite::Error> {
        let conn = conn.clone();
        blocking::unblock(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
                .map(drop)
        })
        .await
    }
}

/// Runs `f` with the connection on the blocking thread pool.
pub async fn with_conn<R: Send + 'static>(
    conn: &Conn,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
) -> rusqlite::Result<R> {
    let conn = conn.clone();
    blocking::unblock(move || f(&conn.lock().unwrap_or_else(|p| p.into_inner()))).await
}

/// The example schema: a users table with three rows.
pub async fn create_schema(pool: &awaitkit::Pool<Sqlite>) -> rusqlite::Result<()> {
    let conn = pool.get().await.map_err(|e| match e {
        awaitkit::pool::PoolError::Create(e) => e,
        other => panic!("{other}"),
    })?;
    with_conn(&conn, |c| {
        c.execute_batch(
            "DROP TABLE IF EXISTS users;
             CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
             INSERT INTO users (id, name) VALUES (1, 'alice'), (2, 'bob'), (3, 'carol');",
        )
    })
    .await
}

/// The query for one user: (id, name).
pub async fn fetch_user(pool: &awaitkit::Pool<Sqlite>, id: i64) -> (i64, String) {
    let conn = pool.get().await.expect("a pooled connection");
    with_conn(&conn, move |c| {
        c.query_row("SELECT id, name FROM users WHERE id = ?1", [id], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
    })
    .await
    .expect("the query")
}

/// A fresh database file path in the temporary directory.
pub fn temp_db(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("awaitkit-{tag}-{}-{n}.sqlite3", std::process::id()))
}
