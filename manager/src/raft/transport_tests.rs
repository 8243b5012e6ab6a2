//! The gRPC transport against real mutual-TLS `Raft` services on loopback:
//! batches arrive decoded and in order, an unreachable peer is reported to
//! Raft (with its snapshot as failed), and a peer that comes up later is
//! reached once the backoff retries.

use std::time::{Duration, Instant};

use raft::SnapshotStatus;
use raft::eraftpb::{Message, MessageType};
use shoal_proto::RaftMember;
use shoal_proto::tls::pki::{self, RootCa};
use shoal_proto::tls::{self, Credentials, Role, SharedCredentials};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::raft::RaftService;
use crate::raft::service::Inbound;
use crate::raft::transport;

fn manager_creds(root: &RootCa, node: &str) -> SharedCredentials {
    let (key_pem, csr_pem) = pki::new_key_and_csr().unwrap();
    let identity = RootCa::identity(node, Role::Manager, "c1", Duration::from_secs(3600));
    let cert_pem = root.issue(&csr_pem, &identity).unwrap();
    SharedCredentials::new(Credentials {
        ca_pem: root.cert_pem().to_string(),
        cert_pem,
        key_pem,
    })
    .unwrap()
}

/// Serve a `Raft` service on `listener` whose inbox is returned.
fn serve(
    listener: TcpListener,
    creds: &SharedCredentials,
    shutdown: &CancellationToken,
) -> mpsc::Receiver<Inbound> {
    let (tx, rx) = mpsc::channel(1024);
    let tls = tls::server::server_config(creds).unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(RaftService::new(PeerInbox::new(tx)).into_server())
        .serve_with_incoming_shutdown(
            tls::server::incoming(listener, tls),
            shutdown.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    rx
}

fn append(to: u64, index: u64) -> Message {
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgAppend);
    msg.from = 1;
    msg.to = to;
    msg.index = index;
    msg
}

/// A transport for node 1 whose own reports land in the returned receiver.
fn transport(
    creds: SharedCredentials,
    peers: &[(u64, String)],
    shutdown: &CancellationToken,
) -> (GrpcTransport, mpsc::Receiver<Inbound>) {
    let (tx, rx) = mpsc::channel(1024);
    let transport = GrpcTransport::new(shutdown.clone());
    transport.set_credentials(creds);
    transport.attach(Store::in_memory(), PeerInbox::new(tx));
    let members: Vec<RaftMember> = peers
        .iter()
        .map(|(id, addr)| RaftMember {
            raft_id: *id,
            node_id: format!("n{id}"),
            addr: addr.clone(),
        })
        .collect();
    transport.seed(&members);
    (transport, rx)
}

async fn next(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("nothing arrived in 10 s")
        .expect("inbox open")
}

#[tokio::test]
async fn batches_arrive_in_order_over_mutual_tls() {
    let root = RootCa::generate("c1").unwrap();
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut peer_inbox = serve(listener, &manager_creds(&root, "n2"), &shutdown);
    let (transport, _reports) = transport(manager_creds(&root, "n1"), &[(2, addr)], &shutdown);

    transport.send((1..=300).map(|i| append(2, i)).collect());
    for want in 1..=300 {
        match next(&mut peer_inbox).await {
            Inbound::Message(msg) => assert_eq!((msg.to, msg.index), (2, want)),
            _ => panic!("expected a raft message"),
        }
    }
    shutdown.cancel();
}

#[tokio::test]
async fn an_unreachable_peer_is_reported_and_its_snapshot_fails() {
    let root = RootCa::generate("c1").unwrap();
    let shutdown = CancellationToken::new();
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (transport, mut reports) = transport(manager_creds(&root, "n1"), &[(3, closed)], &shutdown);
    let mut snapshot = append(3, 1);
    snapshot.set_msg_type(MessageType::MsgSnapshot);
    transport.send(vec![snapshot]);
    let (mut unreachable, mut failed) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(unreachable && failed) {
        assert!(
            Instant::now() < deadline,
            "unreachable: {unreachable}, snapshot failed: {failed}"
        );
        match next(&mut reports).await {
            Inbound::Unreachable(3) => unreachable = true,
            Inbound::Snapshot {
                to: 3,
                status: SnapshotStatus::Failure,
            } => failed = true,
            _ => {}
        }
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_peer_that_comes_up_later_is_reached() {
    let root = RootCa::generate("c1").unwrap();
    let shutdown = CancellationToken::new();
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let (transport, mut reports) = transport(
        manager_creds(&root, "n1"),
        &[(4, addr.to_string())],
        &shutdown,
    );
    transport.send(vec![append(4, 1)]);
    assert!(matches!(next(&mut reports).await, Inbound::Unreachable(4)));

    let mut peer_inbox = serve(
        TcpListener::bind(addr).await.unwrap(),
        &manager_creds(&root, "n4"),
        &shutdown,
    );
    // Raft resends on every heartbeat; so does this test until one arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        transport.send(vec![append(4, 2)]);
        match tokio::time::timeout(Duration::from_millis(100), peer_inbox.recv()).await {
            Ok(Some(Inbound::Message(msg))) => {
                assert_eq!(msg.index, 2);
                break;
            }
            Ok(_) => panic!("expected a raft message"),
            Err(_) => assert!(Instant::now() < deadline, "the peer was never reached"),
        }
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_snapshot_larger_than_grpcs_message_limit_arrives_in_chunks_between_appends() {
    let root = RootCa::generate("c1").unwrap();
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // The peer's service keeps gRPC's default 4 MiB limit on a message.
    let mut peer_inbox = serve(listener, &manager_creds(&root, "n2"), &shutdown);
    let (transport, mut reports) = transport(manager_creds(&root, "n1"), &[(2, addr)], &shutdown);

    let data: Vec<u8> = (0..10 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut snapshot = append(2, 7);
    snapshot.set_msg_type(MessageType::MsgSnapshot);
    snapshot.mut_snapshot().set_data(data.clone().into());
    transport.send(vec![append(2, 5), append(2, 6), snapshot, append(2, 8)]);
    for want in [5, 6] {
        match next(&mut peer_inbox).await {
            Inbound::Message(msg) => assert_eq!(msg.index, want),
            _ => panic!("expected an append"),
        }
    }
    match next(&mut peer_inbox).await {
        Inbound::Message(msg) => {
            assert_eq!(msg.get_msg_type(), MessageType::MsgSnapshot);
            assert_eq!(
                msg.get_snapshot().get_data(),
                &data[..],
                "reassembled intact"
            );
        }
        _ => panic!("expected the snapshot"),
    }
    match next(&mut peer_inbox).await {
        Inbound::Message(msg) => assert_eq!(msg.index, 8, "order is kept"),
        _ => panic!("expected an append"),
    }
    match next(&mut reports).await {
        Inbound::Snapshot { to, status } => {
            assert_eq!(to, 2);
            assert_eq!(status, SnapshotStatus::Finish);
        }
        _ => panic!("expected the snapshot report"),
    }
    shutdown.cancel();
}

#[test]
fn small_messages_share_requests_and_a_large_one_is_split() {
    let small = vec![1u8; 1000];
    let large = vec![2u8; CHUNK_BYTES * 2 + 5];
    let out = transport::requests(vec![
        small.clone(),
        small.clone(),
        large.clone(),
        small.clone(),
    ]);
    // [small, small] | chunk | chunk | last chunk | [small]
    assert_eq!(
        out.len(),
        5,
        "{:?}",
        out.iter()
            .map(|r| (r.message.len(), r.batch.len(), r.chunk.len(), r.last_chunk))
            .collect::<Vec<_>>()
    );
    assert_eq!((out[0].message.len(), out[0].batch.len()), (1000, 1));
    assert!(!out[1].last_chunk && !out[2].last_chunk && out[3].last_chunk);
    let joined: Vec<u8> = out[1..4].iter().flat_map(|r| r.chunk.clone()).collect();
    assert_eq!(joined, large);
    assert!(
        out[1..4]
            .iter()
            .all(|r| r.message.is_empty() && r.batch.is_empty())
    );
    assert_eq!(out[4].message, small);
}
