//! The pool against a real database (SPEC §8): SQLite through rusqlite, its
//! blocking calls on the `blocking` thread pool, under every executor: three concurrent
//! queries through a pool of three (the example `examples/pool_sqlite.rs`).

#[path = "../../examples/common/sqlite.rs"]
mod sqlite;

use awaitkit::Pool;
use sqlite::{Sqlite, create_schema, fetch_user, temp_db, with_conn};

matrix! {
    async fn use_db_pool_runs_three_queries_through_a_pool_of_three() {
        let path = temp_db("test");
        let pool = Pool::new(Sqlite { path: path.clone() }, 3);
        create_schema(&pool).await.unwrap();

        // Three connections at once (the pool creates two more).
        let conns = awaitkit::gather((0..3).map(|_| pool.get())).await;
        let conns: Vec<_> = conns.into_iter().map(|c| c.unwrap()).collect();
        assert_eq!(pool.status().size, 3);
        let counts = awaitkit::gather(conns.iter().map(|conn| {
            with_conn(conn, |c| c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0)))
        }))
        .await;
        assert_eq!(counts.into_iter().map(Result::unwrap).collect::<Vec<_>>(), [3, 3, 3]);
        drop(conns);

        // The example's queries, concurrently, through the pool (recycled
        // connections pass the `SELECT 1` health check).
        let users = awaitkit::gather((1..=3).map(|id| fetch_user(&pool, id))).await;
        assert_eq!(
            users,
            [(1, "alice".to_owned()), (2, "bob".to_owned()), (3, "carol".to_owned())]
        );
        let status = pool.status();
        assert_eq!((status.size, status.idle, status.in_use, status.waiting), (3, 3, 0, 0));

        // Writes through one connection are seen through another.
        let conn = pool.get().await.unwrap();
        with_conn(&conn, |c| c.execute("INSERT INTO users (id, name) VALUES (4, 'dave')", []).map(drop))
            .await
            .unwrap();
        drop(conn);
        assert_eq!(fetch_user(&pool, 4).await, (4, "dave".to_owned()));

        pool.close();
        let _ = std::fs::remove_file(path);
    }
}
