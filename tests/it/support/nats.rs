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
