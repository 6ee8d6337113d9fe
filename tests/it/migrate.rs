//! `mes-events migrate`: idempotent, and safe when run twice at once.

use std::process::Command;

use crate::support::TestDb;

async fn schema_snapshot(db: &TestDb) -> Vec<String> {
    let c = db.client().await;
    c.query(
        "select table_name || '.' || column_name || ':' || data_type
           from information_schema.columns where table_schema = 'mes_events'
         union all
         select 'index ' || indexname || ' ' || indexdef from pg_indexes where schemaname = 'mes_events'
         union all
         select 'function ' || p.oid::regprocedure::text from pg_proc p
           join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'mes_events'
         union all
         select 'migration ' || version || ' ' || name from mes_events.schema_migrations
         order by 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn migrate_cmd(db: &TestDb) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mes-events"));
    c.arg("migrate")
        .env("MES_EVENTS_DATABASE__URL", &db.url)
        .current_dir(std::env::temp_dir());
    c
}

#[tokio::test]
async fn migrate_twice_in_a_row_and_twice_at_once() {
    // In a row.
    let db = TestDb::empty().await;
    for _ in 0..2 {
        let out = migrate_cmd(&db).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sequential = schema_snapshot(&db).await;
    assert!(sequential
        .iter()
        .any(|s| s.starts_with("function mes_events.emit(")));

    // At once, on a fresh database, several times to give the race a chance.
    for _ in 0..3 {
        let db2 = TestDb::empty().await;
        let a = migrate_cmd(&db2).spawn().unwrap();
        let b = migrate_cmd(&db2).spawn().unwrap();
        for child in [a, b] {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(schema_snapshot(&db2).await, sequential);
    }
}

#[tokio::test]
async fn relay_refuses_an_unmigrated_database_with_the_command_to_run() {
    let db = TestDb::empty().await;
    let out = Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .arg("emit")
        .args([
            "--type",
            crate::support::ORDER_TYPE,
            "--key",
            "k",
            "--data",
            &crate::support::order_data("k"),
        ])
        .env("MES_EVENTS_DATABASE__URL", &db.url)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mes-events migrate"), "{err}");
}
