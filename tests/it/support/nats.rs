//! A real nats-server per test: a local process (`mes_events::demo::local_nats`: `NATS_SERVER_BIN` or
//! PATH, 2.10 or newer, dynamic port, own store, killed and removed on drop). Where no such
//! binary exists but a Docker engine does, the same server runs through testcontainers. Where
//! neither exists the test fails with an install hint: never a silent skip.

use std::process::{Command, Stdio};

use mes_events::demo::local_nats::{self, LocalNats};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

pub enum NatsServer {
    Process(LocalNats),
    Container {
        container: Box<ContainerAsync<GenericImage>>,
        port: u16,
    },
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        Self::start_with_config("").await
    }

    /// Starts with settings inside its `jetstream {}` block (e.g. `sync_interval: "1s"`) and
    /// extra configuration; a local process only.
    pub async fn start_with_jetstream(jetstream: &str, extra: &str) -> NatsServer {
        match local_nats::find_binary() {
            Ok(Some(_)) => NatsServer::Process(
                LocalNats::start_with_jetstream(jetstream, extra).expect("starting nats-server"),
            ),
            Ok(None) => panic!(
                "this test needs a local nats-server: {}",
                local_nats::INSTALL_HINT
            ),
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts with extra nats-server configuration (e.g. an `authorization` block).
    pub async fn start_with_config(extra: &str) -> NatsServer {
        match local_nats::find_binary() {
            Ok(Some(_)) => {
                return NatsServer::Process(LocalNats::start(extra).expect("starting nats-server"))
            }
            Ok(None) => {}
            Err(e) => panic!("{e}"),
        }
        if docker_available() {
            assert!(
                extra.is_empty(),
                "extra server config needs a local nats-server: {}",
                local_nats::INSTALL_HINT
            );
            let container = GenericImage::new("nats", "2.11-alpine")
                .with_exposed_port(4222.tcp())
                .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
                .with_cmd(["-js", "-sd", "/data"])
                .start()
                .await
                .expect("starting a nats container");
            let port = container.get_host_port_ipv4(4222.tcp()).await.unwrap();
            return NatsServer::Container {
                container: Box::new(container),
                port,
            };
        }
        panic!(
            "no nats-server 2.10+ and no Docker engine: {}",
            local_nats::INSTALL_HINT
        );
    }

    pub fn url(&self) -> String {
        match self {
            NatsServer::Process(p) => p.url(),
            NatsServer::Container { port, .. } => format!("nats://127.0.0.1:{port}"),
        }
    }

    /// The local process (tests that freeze it or replace its store need one).
    pub fn local(&mut self) -> &mut LocalNats {
        match self {
            NatsServer::Process(p) => p,
            NatsServer::Container { .. } => {
                panic!(
                    "this test needs a local nats-server: {}",
                    local_nats::INSTALL_HINT
                )
            }
        }
    }

    /// Stops the server the hard way, keeping its store.
    pub async fn kill(&mut self) {
        match self {
            NatsServer::Process(p) => p.kill(),
            NatsServer::Container { container, .. } => {
                container.stop().await.expect("stopping nats container")
            }
        }
    }

    /// Starts it again on the same store (and, for a process, the same port).
    pub async fn restart(&mut self) {
        match self {
            NatsServer::Process(p) => p.restart().expect("restarting nats-server"),
            NatsServer::Container { container, port } => {
                container.start().await.expect("starting nats container");
                *port = container.get_host_port_ipv4(4222.tcp()).await.unwrap();
            }
        }
    }
}

fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Three nats-servers on loopback, routed into one JetStream cluster (`mes`), each with its own
/// store and a monitoring port; nodes can be killed and restarted on the same ports and stores.
pub struct NatsCluster {
    pub nodes: Vec<LocalNats>,
    monitoring: Vec<u16>,
}

impl NatsCluster {
    pub async fn start() -> NatsCluster {
        // Ports are picked free and released before the nodes bind them: another test may take
        // one in between, and a node that cannot bind never gets ready. Try again with new ones.
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start() {
                Ok(c) => return c,
                Err(e) => last = Some(e),
            }
        }
        panic!("starting a cluster node, three times: {last:?}")
    }

    fn try_start() -> Result<NatsCluster, mes_events::demo::local_nats::LocalNatsError> {
        let free = free_port;
        let routes: Vec<u16> = (0..3).map(|_| free()).collect();
        let monitoring: Vec<u16> = (0..3).map(|_| free()).collect();
        let list = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes = (0..3)
            .map(|i| {
                LocalNats::start(&format!(
                    "server_name: n{i}\nhttp: \"127.0.0.1:{}\"\ncluster {{ name: mes, listen: \"127.0.0.1:{}\", routes: [{list}] }}\n",
                    monitoring[i], routes[i]
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NatsCluster { nodes, monitoring })
    }

    /// Every node's URL, comma-separated, as a client's server list.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node a server name (`n0`…) belongs to.
    pub fn index_of(&self, server_name: &str) -> usize {
        server_name
            .strip_prefix('n')
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("not a node of this cluster: {server_name}"))
    }

    /// The node the client named `name` is connected to, from the nodes' monitoring (`/connz`).
    pub fn node_of_client(&self, name: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| {
            connections(self.monitoring[i])
                .iter()
                .any(|c| c["name"].as_str() == Some(name))
        })
    }
}

/// The client connections a server's monitoring port (`/connz`) lists, empty if none answers.
pub fn connections(monitoring: u16) -> Vec<serde_json::Value> {
    http_get(monitoring, "/connz?limit=1024")
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| v["connections"].as_array().cloned())
        .unwrap_or_default()
}

/// A free loopback port (for a server's monitoring).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status and body of an HTTP GET on a loopback port, or `None` if nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The body of an HTTP GET on a loopback port, or `None` if nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    http_status(port, path).map(|(_, body)| body)
}
