//! Connections a hostile or foreign client opens against a real `shoal
//! manager` process (issue 30, defects 2, 7 and 8): bare TLS connections
//! that never call are closed and never starve the administrator; a refused
//! certificate is named in plain words by the CLI; a stock Python gRPC client
//! is served on the unix socket whatever `:authority` it sends.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::tls::anonymous::FIRST_CALL;
use shoal_proto::tls::client;
use shoal_proto::tls::{Credentials, Role, RootCa, SERVER_NAME, pki};
use shoal_tests::process::{ManagerProcess, shoal_bin};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

/// The bare connections the test holds open at once.
const BARE: usize = 2_000;
/// How many of them shake hands at the same time.
const HANDSHAKES_AT_ONCE: usize = 64;
/// The administrator's commands must answer within this, however many bare
/// connections are open (the issue's bound).
const ADMIN_ANSWERS_WITHIN: Duration = Duration::from_secs(1);
/// Slack on top of the manager's deadline for a silent connection: the
/// manager's timers and this test share two loaded cores.
const CLOSE_SLACK: Duration = Duration::from_secs(10);

/// Allow this test process the file descriptors of its bare connections.
fn raise_own_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        now > (BARE as u64) + 256,
        "this test needs {} open files; the limit is {now}",
        BARE + 256
    );
}

/// A CLI command, timed.
async fn timed(args: &[&str], cert_dir: Option<&Path>) -> (Output, Duration) {
    let mut command = tokio::process::Command::new(shoal_bin());
    command.args(args).env_remove("SHOAL_HOST");
    match cert_dir {
        Some(dir) => command.env("SHOAL_CERT_PATH", dir),
        None => command.env_remove("SHOAL_CERT_PATH"),
    };
    let start = Instant::now();
    let out = command.output().await.expect("run the shoal CLI");
    (out, start.elapsed())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn bare_tls_connections_are_closed_and_never_starve_the_administrator() {
    shoal_tests::init();
    raise_own_fd_limit();
    let manager = ManagerProcess::start(&[]).await.unwrap();
    let ca_pem = std::fs::read_to_string(manager.admin_dir().join("ca.pem")).unwrap();
    // A client that trusts the manager but has no certificate of its own.
    let connector = TlsConnector::from(client::pinned_config(&ca_pem).unwrap());
    let name = ServerName::try_from(SERVER_NAME).unwrap();

    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_AT_ONCE));
    let mut handshakes = tokio::task::JoinSet::new();
    for _ in 0..BARE {
        let (connector, name, gate, addr) =
            (connector.clone(), name.clone(), gate.clone(), manager.addr);
        handshakes.spawn(async move {
            let _turn = gate.acquire_owned().await.unwrap();
            let tcp = TcpStream::connect(addr).await?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>((tls, Instant::now()))
        });
    }
    let mut bare = Vec::with_capacity(BARE);
    while let Some(done) = handshakes.join_next().await {
        let conn = done.unwrap().unwrap_or_else(|e| {
            panic!(
                "a bare TLS handshake failed ({e}) after {} succeeded; manager log:\n{}",
                bare.len(),
                manager.log()
            )
        });
        bare.push(conn);
    }
    eprintln!(
        "{BARE} bare TLS connections open in {:?}",
        started.elapsed()
    );

    // Every one of them silent and open: the administrator is still served,
    // on the unix socket and over mutual TLS.
    let socket = manager.socket_host();
    let tcp = manager.addr.to_string();
    for round in 0..2 {
        for (how, args, certs) in [
            (
                "unix socket",
                ["--host", socket.as_str(), "service", "ls"],
                None,
            ),
            (
                "mutual TLS",
                ["--host", tcp.as_str(), "service", "ls"],
                Some(manager.admin_dir()),
            ),
        ] {
            let (out, took) = timed(&args, certs.as_deref()).await;
            assert!(
                out.status.success(),
                "service ls over the {how} failed with {BARE} bare connections open: {}",
                text(&out)
            );
            eprintln!("service ls over the {how}: {took:?}");
            assert!(
                took < ADMIN_ANSWERS_WITHIN,
                "service ls over the {how} took {took:?} (round {round}) with {BARE} bare connections open"
            );
        }
    }

    // The manager closes each of them within its deadline: reading gives end
    // of file (or the reset of a closed socket), never a timeout.
    let deadline = FIRST_CALL + CLOSE_SLACK;
    let mut reads = tokio::task::JoinSet::new();
    for (mut tls, opened) in bare {
        reads.spawn(async move {
            // The server's HTTP/2 preface (its SETTINGS) comes first.
            let mut sink = [0u8; 1024];
            let left = deadline.saturating_sub(opened.elapsed());
            let closed = async {
                while let Ok(n) = tls.read(&mut sink).await
                    && n > 0
                {}
            };
            match tokio::time::timeout(left, closed).await {
                Ok(()) => Ok(opened.elapsed()),
                Err(_) => Err("still open after the deadline"),
            }
        });
    }
    let mut open = 0;
    let mut slowest = Duration::ZERO;
    while let Some(read) = reads.join_next().await {
        match read.unwrap() {
            Ok(after) => slowest = slowest.max(after),
            Err(why) => {
                open += 1;
                if open == 1 {
                    eprintln!("first bare connection not closed: {why}");
                }
            }
        }
    }
    eprintln!("the last bare connection was closed {slowest:?} after its handshake");
    assert_eq!(
        open, 0,
        "{open} of {BARE} bare connections were not closed within {deadline:?} of their handshake"
    );
    // Not before the deadline either: a client gets its few seconds to call.
    assert!(
        slowest >= FIRST_CALL - Duration::from_millis(500),
        "closed after {slowest:?}, before the {FIRST_CALL:?} a client has for its first call"
    );
}

/// Credentials for `node_id` signed by `signer`, trusting `ca_pem`, valid in
/// `(not_before, not_after)` (Unix seconds), stored in a new directory.
fn minted(signer: &RootCa, ca_pem: &str, node_id: &str, valid: (i64, i64)) -> TempDir {
    let (key_pem, csr) = pki::new_key_and_csr().unwrap();
    let mut identity = RootCa::identity(
        node_id,
        Role::Admin,
        "some-cluster",
        pki::DEFAULT_CERT_LIFETIME,
    );
    (identity.not_before, identity.not_after) = valid;
    let creds = Credentials {
        ca_pem: ca_pem.to_string(),
        cert_pem: signer.issue(&csr, &identity).unwrap(),
        key_pem,
    };
    let dir = TempDir::new().unwrap();
    creds.store(dir.path()).unwrap();
    dir
}

#[tokio::test]
async fn the_cli_names_a_foreign_or_expired_certificate() {
    shoal_tests::init();
    // The manager runs a CA the test holds, so the test can mint an expired
    // certificate the cluster would never issue.
    let ca = RootCa::generate("test-made-ca").unwrap();
    let files = TempDir::new().unwrap();
    let (cert, key) = (files.path().join("ca.pem"), files.path().join("ca-key.pem"));
    std::fs::write(&cert, ca.cert_pem()).unwrap();
    std::fs::write(&key, ca.key_pem()).unwrap();
    let manager = ManagerProcess::start(&[
        "--ca-cert",
        cert.to_str().unwrap(),
        "--ca-key",
        key.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let host = manager.addr.to_string();
    let now = pki::unix_now();

    let foreign = RootCa::generate("elsewhere").unwrap();
    let dir = minted(&foreign, ca.cert_pem(), "intruder", (now - 60, now + 3600));
    let (out, _) = timed(&["--host", &host, "service", "ls"], Some(dir.path())).await;
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("refused this client certificate")
            && said.contains("not issued by this cluster's CA"),
        "a foreign CA's certificate is not named: {said}"
    );

    let dir = minted(&ca, ca.cert_pem(), "old-admin", (now - 7200, now - 3600));
    let (out, _) = timed(&["--host", &host, "service", "ls"], Some(dir.path())).await;
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("refused this client certificate") && said.contains("has expired"),
        "an expired certificate is not named: {said}"
    );

    // The CLI that trusts another CA refuses the manager, and says why.
    let dir = minted(&foreign, foreign.cert_pem(), "lost", (now - 60, now + 3600));
    let (out, _) = timed(&["--host", &host, "service", "ls"], Some(dir.path())).await;
    let said = text(&out);
    assert!(
        said.contains("the manager's certificate was not issued by the CA in this client's ca.pem"),
        "{said}"
    );
}

/// A Python interpreter that has grpcio (`make tools` installs it), or
/// `None` where the test may be skipped.
fn python_with_grpc() -> Option<&'static str> {
    let found = ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import grpc"])
            .output()
            .is_ok_and(|out| out.status.success())
    });
    let required = std::env::var_os("SHOAL_REQUIRE_DOCKER").is_some_and(|v| v == "1")
        || std::env::var_os("CI").is_some();
    if found.is_none() && required {
        panic!("no Python with grpcio (python3-grpcio): run `make tools`");
    }
    found
}

/// A raw unary call on the unix socket: no stubs, identity serializers;
/// `authority` as grpcio 1.6x and later send it unless told otherwise.
const PYTHON_CLIENT: &str = r#"
import sys, grpc
socket, authority = sys.argv[1], sys.argv[2]
for options in ([], [("grpc.default_authority", authority)]):
    channel = grpc.insecure_channel("unix://" + socket, options=options)
    call = channel.unary_unary(
        "/shoal.v1.Control/ListServices",
        request_serializer=lambda x: x,
        response_deserializer=lambda x: x,
    )
    try:
        call(b"", timeout=10)
        print("answered", options)
    except grpc.RpcError as e:
        print("failed", options, e.code(), e.details())
        sys.exit(1)
"#;

#[tokio::test]
async fn a_stock_python_grpc_client_is_served_on_the_unix_socket() {
    shoal_tests::init();
    let Some(python) = python_with_grpc() else {
        eprintln!("skipped: no Python with grpcio here (run `make tools`)");
        return;
    };
    let manager = ManagerProcess::start(&[]).await.unwrap();
    let socket = manager.data_dir.join("shoal.sock");
    let path = socket.to_str().unwrap();
    // What grpcio derives from `unix:///a/b.sock`: the path, percent-encoded.
    let authority = path.trim_start_matches('/').replace('/', "%2F");
    let out = tokio::process::Command::new(python)
        .args(["-c", PYTHON_CLIENT, path, &authority])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the Python gRPC client was not served: {}",
        text(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("answered")
            .count(),
        2
    );
}
