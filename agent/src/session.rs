//! The session with the managers: connect (trying each manager in turn, with
//! backoff), register the node, heartbeat, feed the assignments stream to the
//! worker and send status batches, and start over whenever any of that breaks.
//!
//! A session ends on a closed session stream, a failed heartbeat (the manager
//! forgot the session, or is gone), a broken assignments stream or a refused
//! status batch. Unsent statuses stay queued for the next session. Log
//! subscriptions (`crate::logs`) ride on the session but never end it.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::tls::SharedCredentials;
use shoal_proto::{
    AssignmentsRequest, HeartbeatRequest, NodeDescription, Resources, SessionRequest,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::{AgentConfig, load_node_id, manager_addr, store_node_id};
use crate::connect;
use crate::error::AgentError;
use crate::logs;
use crate::reporter::{Reporter, send_loop};
use crate::runtime::Runtime;
use crate::worker::Worker;

/// Heartbeat period used when the manager names none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// A session that lived this long was healthy: the next reconnect starts with a
/// short delay again.
const HEALTHY_SESSION: Duration = Duration::from_secs(5);

/// Pause before following a follower's pointer to the leader (two managers
/// with stale views must not bounce an agent between them in a tight loop).
const REDIRECT_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between attempts when several managers are known.
const CYCLE_CAP: Duration = Duration::from_secs(1);

/// Why one session attempt ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("the container engine cannot describe this node: {0}")]
    Describe(crate::runtime::RuntimeError),
    #[error("cannot list the node's containers for adoption: {0}")]
    Adopt(crate::runtime::RuntimeError),
    #[error("no heartbeat answered for {0:?}")]
    HeartbeatTimeout(Duration),
    #[error("the manager closed the {0} stream")]
    Closed(&'static str),
    /// Not a session problem: the agent cannot go on.
    #[error(transparent)]
    Fatal(AgentError),
}

impl SessionEnd {
    /// The leader's address, when a follower refused the session and named it.
    fn leader_hint(&self) -> Option<String> {
        match self {
            SessionEnd::Rpc(status) if status.code() == tonic::Code::Unavailable => status
                .metadata()
                .get(shoal_proto::LEADER_ADDR_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            _ => None,
        }
    }
}

/// Runs sessions until `shutdown`; returns early only on an error a reconnect
/// cannot fix (the data directory is unusable).
pub(crate) async fn run_sessions<R: Runtime>(
    config: &AgentConfig,
    creds: &SharedCredentials,
    runtime: &R,
    worker: &mut Worker<R>,
    reporter: &Reporter,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    // The node is who its certificate says; the id file only records it.
    let mut node_id = creds
        .get()
        .identity()
        .map_err(|e| AgentError::Join(e.to_string()))?
        .node_id;
    if load_node_id(&config.data_dir)? != node_id {
        store_node_id(&config.data_dir, &node_id)?;
    }
    let configured = config.manager_addrs()?;
    let mut managers = configured.clone();
    let mut next = 0usize;
    let mut backoff = Backoff::default();
    loop {
        let addr = managers[next % managers.len()].clone();
        let started = Instant::now();
        let mut session = Session {
            addr: &addr,
            node_id: &mut node_id,
            creds,
            managers: &mut managers,
            opened: false,
        };
        let end = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            end = session.run(config, runtime, worker, reporter) => end,
        };
        let opened = session.opened;
        if let SessionEnd::Fatal(e) = end {
            return Err(e);
        }
        for addr in &configured {
            if !managers.contains(addr) {
                managers.push(addr.clone());
            }
        }
        if let Some(leader) = end.leader_hint().filter(|l| *l != addr) {
            match manager_addr(&leader) {
                Ok(leader) => {
                    if !managers.contains(&leader) {
                        managers.push(leader.clone());
                    }
                    next = managers.iter().position(|m| *m == leader).unwrap_or(next);
                    info!(from = %addr, to = %leader, "the manager is a follower; going to the leader");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(REDIRECT_DELAY) => {}
                    }
                    continue;
                }
                Err(e) => {
                    warn!(manager = %leader, error = %e, "ignoring the leader address a manager named")
                }
            }
        }
        if opened && started.elapsed() >= HEALTHY_SESSION {
            backoff.reset();
        }
        next += 1;
        let mut delay = backoff.next_delay();
        if managers.len() > 1 {
            // Several managers: a failed attempt is most likely a dead one or
            // a follower during a failover; try the next soon, well within
            // the window a new leader gives its nodes to reconnect.
            delay = delay.min(CYCLE_CAP);
        }
        if opened {
            warn!(manager = %addr, node.id = %node_id, error = %end,
                "session with the manager ended; reconnecting in {delay:?}");
        } else {
            warn!(manager = %addr, error = %end,
                "cannot open a session with the manager; trying {} in {delay:?}",
                managers[next % managers.len()]);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One attempt at a session with one manager.
struct Session<'a> {
    addr: &'a str,
    node_id: &'a mut String,
    creds: &'a SharedCredentials,
    managers: &'a mut Vec<String>,
    /// The manager accepted the session (reconnects after this are news).
    opened: bool,
}

impl Session<'_> {
    async fn run<R: Runtime>(
        &mut self,
        config: &AgentConfig,
        runtime: &R,
        worker: &mut Worker<R>,
        reporter: &Reporter,
    ) -> SessionEnd {
        match self.run_inner(config, runtime, worker, reporter).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn run_inner<R: Runtime>(
        &mut self,
        config: &AgentConfig,
        runtime: &R,
        worker: &mut Worker<R>,
        reporter: &Reporter,
    ) -> Result<std::convert::Infallible, SessionEnd> {
        let description = describe(config, runtime).await?;
        let mut client = connect::dispatcher(self.addr, self.creds).await?;
        let request = SessionRequest {
            node_id: self.node_id.clone(),
            description: Some(description),
        };
        let mut session_stream = open_session(&mut client, request, self.addr).await?;
        let first = session_stream
            .message()
            .await?
            .ok_or(SessionEnd::Closed("session"))?;
        self.opened = true;
        self.adopt_node_id(&config.data_dir, &first.node_id)?;
        self.learn_managers(&first.managers);
        let session_id = first.session_id.clone();
        let period = period(first.heartbeat_period_ms, DEFAULT_HEARTBEAT);
        let grace = grace(first.heartbeat_grace_ms, period);
        info!(manager = %self.addr, node.id = %self.node_id, session = %session_id,
            heartbeat = ?period, "session opened");

        let node_id = self.node_id.clone();
        // Heartbeats start at once, beside the assignments stream's opening:
        // the manager's grace period runs from the session's first message.
        let heartbeat = heartbeat_loop(client.clone(), session_id.clone(), period, grace);
        let reports = send_loop(reporter, client.clone(), session_id.clone());
        let logs = logs::serve(client.clone(), runtime, &node_id, &session_id);
        let mut assignments_client = client.clone();
        let consume = async {
            let mut assignments = assignments_client
                .assignments(AssignmentsRequest {
                    session_id: session_id.clone(),
                })
                .await?
                .into_inner();
            while let Some(msg) = assignments.message().await? {
                worker
                    .apply(&node_id, msg)
                    .await
                    .map_err(SessionEnd::Adopt)?;
            }
            Err::<std::convert::Infallible, _>(SessionEnd::Closed("assignments"))
        };
        let watch_session = async {
            while let Some(msg) = session_stream.message().await? {
                self.learn_managers(&msg.managers);
            }
            Err::<std::convert::Infallible, _>(SessionEnd::Closed("session"))
        };
        tokio::select! {
            end = heartbeat => Err(end),
            status = reports => Err(SessionEnd::Rpc(status)),
            end = consume => end,
            end = watch_session => end,
            never = logs => match never {},
        }
    }

    /// Keeps the id the manager gave this node, on disk first.
    fn adopt_node_id(&mut self, data_dir: &Path, assigned: &str) -> Result<(), SessionEnd> {
        if assigned.is_empty() || assigned == self.node_id.as_str() {
            return Ok(());
        }
        if !self.node_id.is_empty() {
            warn!(old = %self.node_id, node.id = %assigned,
                "the manager gave this node a new id; containers of the old id will not be adopted");
        }
        store_node_id(data_dir, assigned).map_err(SessionEnd::Fatal)?;
        *self.node_id = assigned.to_string();
        Ok(())
    }

    /// Remembers managers the cluster advertises, to fall back on them.
    fn learn_managers(&mut self, advertised: &[String]) {
        for addr in advertised {
            match manager_addr(addr) {
                Ok(addr) if !self.managers.contains(&addr) => self.managers.push(addr),
                Ok(_) => {}
                Err(e) => warn!(manager = %addr, error = %e, "ignoring a manager address"),
            }
        }
    }
}

/// The `Session` call, repeated on the same connection for as long as the
/// manager answers that it is busy and says when to come back: a new
/// connection would cost it one more TLS handshake. Each wait is drawn
/// between half and one and a half times the one asked for, so that nodes
/// refused together do not return together.
async fn open_session(
    client: &mut DispatcherClient<Channel>,
    request: SessionRequest,
    addr: &str,
) -> Result<tonic::Streaming<shoal_proto::SessionMessage>, SessionEnd> {
    loop {
        match client.session(request.clone()).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => match retry_after(&status) {
                Some(wait) => {
                    let wait = wait.mul_f64(0.5 + rand::random::<f64>());
                    info!(manager = %addr, reason = %status.message(),
                        "the manager cannot take this node yet; asking again in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                None => return Err(status.into()),
            },
        }
    }
}

/// How long a busy manager asked to wait before calling again, if it did.
fn retry_after(status: &tonic::Status) -> Option<Duration> {
    if status.code() != tonic::Code::ResourceExhausted {
        return None;
    }
    let ms: u64 = status
        .metadata()
        .get(shoal_proto::RETRY_AFTER_MS_METADATA)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    // A manager's hint is trusted within reason.
    Some(Duration::from_millis(ms).min(Duration::from_secs(60)))
}

/// The node description: the engine's, with the configured name and labels.
async fn describe<R: Runtime>(
    config: &AgentConfig,
    runtime: &R,
) -> Result<NodeDescription, SessionEnd> {
    let info = runtime.describe().await.map_err(SessionEnd::Describe)?;
    Ok(NodeDescription {
        hostname: config.node_name.clone().unwrap_or(info.hostname),
        resources: Some(Resources {
            nano_cpus: info.nano_cpus,
            memory_bytes: info.memory_bytes,
        }),
        engine_version: info.engine_version,
        engine_labels: config.labels.clone(),
        os: info.os,
        arch: info.arch,
    })
}

/// Heartbeats on the manager's period until the manager refuses one, the
/// connection breaks, or none is answered for `grace`.
///
/// A slow answer is not a lost session: the manager marks the node DOWN only
/// after `grace` without a heartbeat, so the agent waits that long before it
/// gives up. Ending the session at the first slow heartbeat turns a busy
/// manager into a reconnect storm: every new session costs a TLS handshake,
/// a store write and a full assignment set, the handshakes then time out too,
/// and nodes really go silent for the grace period (seen with 5,000 nodes).
async fn heartbeat_loop(
    mut client: DispatcherClient<Channel>,
    session_id: String,
    mut period: Duration,
    grace: Duration,
) -> SessionEnd {
    // Sent times of answered heartbeats: the manager heard the node no earlier.
    let mut answered = Instant::now();
    // The first goes out at once: it tells the manager that the session
    // reached the agent, however long that took.
    loop {
        let sent = Instant::now();
        let deadline = (answered + grace).max(sent + period.min(grace));
        let request = HeartbeatRequest {
            session_id: session_id.clone(),
        };
        let call = client.heartbeat(request);
        match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(Ok(response)) => {
                answered = sent;
                period = self::period(response.into_inner().period_ms, period);
            }
            Ok(Err(status)) => return SessionEnd::Rpc(status),
            Err(_) => return SessionEnd::HeartbeatTimeout(deadline - answered),
        }
        tokio::time::sleep(period).await;
    }
}

/// How long the manager waits for heartbeats, or 3 periods (its default) when
/// an older manager does not say.
fn grace(ms: i64, period: Duration) -> Duration {
    if ms > 0 {
        Duration::from_millis(ms as u64)
    } else {
        period * 3
    }
}

/// A period in milliseconds from the manager, or `fallback` when it sent none.
fn period(ms: i64, fallback: Duration) -> Duration {
    if ms > 0 {
        Duration::from_millis(ms as u64)
    } else {
        fallback
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
