//! A private PostgreSQL server for one test, from the machine's binaries (`initdb`, `pg_ctl`;
//! `PG_BIN` or the newest `/usr/lib/postgresql/*/bin`), on a free port in a temp dir: the test
//! can stop, crash and restart it without touching the shared server. As root (CI), the server
//! runs as the `postgres` user, which initdb requires. Stopped hard and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::nats::free_port;

/// How `pg_ctl stop` ends the server.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// Clean: sessions ended, everything flushed.
    Fast,
    /// A crash: every process killed at once, nothing flushed (WAL not yet written is lost).
    Immediate,
}

pub struct PrivatePg {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
}

impl PrivatePg {
    pub fn start() -> PrivatePg {
        let pg = Self::init();
        pg.start_server();
        pg
    }

    /// A server with `conf` added to its postgresql.conf, `hba` as its whole pg_hba.conf (a
    /// `local` trust line is kept first, for pg_ctl), and `files` copied into its data folder
    /// (owner-only, as PostgreSQL demands of a key).
    pub fn start_with(conf: &str, hba: &str, files: &[(&str, &Path)]) -> PrivatePg {
        let pg = Self::init();
        for (name, from) in files {
            pg.put(name, &std::fs::read(from).unwrap());
        }
        let data = pg.data();
        let mut c = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        c.push('\n');
        c.push_str(conf);
        c.push('\n');
        std::fs::write(data.join("postgresql.conf"), c).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{hba}\n"),
        )
        .unwrap();
        pg.start_server();
        pg
    }

    /// Writes a file into the data folder, owner-only, owned by the server's user.
    pub fn put(&self, name: &str, bytes: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
    }

    /// Has the server read its configuration (and its TLS files) again.
    pub fn reload(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("reload")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl reload failed");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn init() -> PrivatePg {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("mes-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let pg = PrivatePg {
            port: free_port(),
            bin,
            dir,
        };
        let status = pg
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(pg.data())
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        pg
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Stops the server, cleanly or as a crash.
    pub fn stop(&self, how: Stop) {
        let mode = match how {
            Stop::Fast => "fast",
            Stop::Immediate => "immediate",
        };
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c.current_dir(self.dir.path());
            c
        } else {
            let mut c = Command::new(exe);
            c.current_dir(self.dir.path());
            c
        }
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return dir.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!("no initdb/pg_ctl under /usr/lib/postgresql/*/bin: install PostgreSQL's server package (apt-get install postgresql), or set PG_BIN")
    })
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "no postgres user to run the server as"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}
