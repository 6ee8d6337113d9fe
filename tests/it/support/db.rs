//! A PostgreSQL database per test: created on the server at `TEST_DATABASE_URL` (default: the
//! local server), migrated, and dropped (with its sessions) on drop. Where no server answers but
//! a Docker engine runs, a postgres container is used instead.

use std::sync::OnceLock;

use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio_postgres::NoTls;

const DEFAULT_ADMIN_URL: &str = "postgresql://postgres@127.0.0.1:5432/postgres";

pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

/// Keeps a fallback container alive for the whole test binary.
static CONTAINER: OnceLock<(String, ContainerAsync<GenericImage>)> = OnceLock::new();

impl TestDb {
    /// A new, empty, migrated database.
    pub async fn new() -> TestDb {
        Self::new_on(&admin_url().await).await
    }

    /// A new migrated database on the server at `admin_url` (e.g. a test's private server).
    pub async fn new_on(admin_url: &str) -> TestDb {
        let db = Self::empty_on(admin_url).await;
        let mut s = mes_events::store::session::connect(&db.url, "test migrate")
            .await
            .unwrap();
        mes_events::store::migrate::migrate(&mut s.client)
            .await
            .unwrap();
        db
    }

    /// A new database without the mes_events schema.
    pub async fn empty() -> TestDb {
        Self::empty_on(&admin_url().await).await
    }

    async fn empty_on(admin_url: &str) -> TestDb {
        let admin_url = admin_url.to_owned();
        let name = format!("mes_test_{:016x}", rand::random::<u64>());
        let (client, conn) = tokio_postgres::connect(&admin_url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("create database {name}"))
            .await
            .unwrap();
        let mut cfg: tokio_postgres::Config = admin_url.parse().unwrap();
        cfg.dbname(&name);
        let url = mes_events::store::session::to_url(&cfg);
        TestDb {
            name,
            url,
            admin_url,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside a runtime; use a thread with its own to drop the database.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("drop database if exists {name} with (force)"))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn admin_url() -> String {
    let url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
    if tokio_postgres::connect(&url, NoTls).await.is_ok() {
        return url;
    }
    if let Some((u, _)) = CONTAINER.get() {
        return u.clone();
    }
    let docker = std::process::Command::new("docker")
        .args(["info"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if docker {
        let c = GenericImage::new("postgres", "15-alpine")
            .with_wait_for(testcontainers::core::WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
            .start()
            .await
            .expect("starting a postgres container");
        let port = c.get_host_port_ipv4(5432).await.unwrap();
        let u = format!("postgresql://postgres@127.0.0.1:{port}/postgres");
        let _ = CONTAINER.set((u.clone(), c));
        return CONTAINER.get().unwrap().0.clone();
    }
    panic!(
        "PostgreSQL is not reachable at {url}: start it (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`), \
         or set TEST_DATABASE_URL, or run a Docker engine for testcontainers"
    );
}
