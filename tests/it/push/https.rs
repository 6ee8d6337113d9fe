//! Push to HTTPS endpoints whose certificates come from the plant's own CA: delivered when the
//! endpoint's `ca_file` names that CA (and with a client certificate where the endpoint asks for
//! one), refused in words that say what to change when not.

use std::process::Command;

use super::*;
use crate::support::certs::Pki;

/// [`system`], at an https:// URL by the name the receivers' certificates carry.
fn https_system(name: &str, port: u16, tls: &str) -> String {
    let push =
        format!("retry = [\"200ms\", \"400ms\"]\nafter_last = \"hold\"\ntimeout = \"2s\"\n{tls}");
    system(name, port, &push).replace("url = \"http://127.0.0.1:", "url = \"https://localhost:")
}

async fn https_receiver(name: &str, port: u16, pki: &Pki, client_ca: bool) -> Receiver {
    let server = pki.server(
        &format!("{name}-server"),
        &["localhost", "127.0.0.1"],
        false,
    );
    let mut c = Command::new("python3");
    c.arg(root().join("tests/interop/push_receiver.py"))
        .args(["--port", &port.to_string(), "--secret-env", "PUSH_SECRET"])
        .arg("--tls-cert")
        .arg(&server.cert)
        .arg("--tls-key")
        .arg(&server.key);
    if client_ca {
        c.arg("--tls-client-ca").arg(pki.ca());
    }
    let r = Receiver::start(name, c, true);
    r.wait_lines(
        |l| l.iter().any(|v| v["listening"].is_number()),
        "listening",
    )
    .await;
    r
}

#[tokio::test]
async fn https_endpoints_of_the_plants_ca_get_everything_others_are_refused_in_words() {
    let pki = Pki::new("plant");
    let client = pki.client("push-client", "mes-events push");
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let ca = format!("ca_file = {:?}", pki.ca().display().to_string());
    let mutual = format!(
        "{ca}\nclient_cert = {:?}\nclient_key = {:?}",
        client.cert.display().to_string(),
        client.key.display().to_string()
    );
    let w = World::new(&[
        ("trusted", https_system("trusted", ports[0], &ca)),
        ("mutual", https_system("mutual", ports[1], &mutual)),
        ("untrusted", https_system("untrusted", ports[2], "")),
        ("anonymous", https_system("anonymous", ports[3], &ca)),
    ])
    .await;
    let trusted = https_receiver("trusted", ports[0], &pki, false).await;
    let mutual = https_receiver("mutual", ports[1], &pki, true).await;
    let untrusted = https_receiver("untrusted", ports[2], &pki, false).await;
    let anonymous = https_receiver("anonymous", ports[3], &pki, true).await;
    let push = w.push();
    let emitted = w.emit(12, 4, 0).await;
    trusted.wait_handled(12).await;
    mutual.wait_handled(12).await;
    assert_once_in_order("trusted", &trusted.lines(), &emitted);
    assert_once_in_order("mutual", &mutual.lines(), &emitted);

    // The plant's CA is not in this host's store: refused, and said so.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let said = loop {
        let log = push.log();
        if log.contains("not signed by a CA this client trusts")
            && log.contains("refused this client's certificate")
        {
            break log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refusals were not logged within 30 s:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(untrusted.handled().is_empty() && anonymous.handled().is_empty());
    assert!(said.contains("push.ca_file"), "{said}");
    assert!(
        !said.contains(std::fs::read_to_string(&client.key).unwrap().trim()),
        "a key printed"
    );
    w.stop().await;
}
