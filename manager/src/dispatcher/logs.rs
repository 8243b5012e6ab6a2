//! The agents' half of `service logs`: the `LogSubscriptions` stream a session
//! keeps open and the `PublishLogs` streams agents answer on. The dispatcher
//! vouches for the session (and so the node); the [`LogBroker`] does the routing.

use shoal_proto::{PublishLogsMessage, PublishLogsResponse};
use tonic::{Status, Streaming};

use super::{Inner, lock, session};
use crate::auth::{self, Caller};
use crate::logbroker::{LogBroker, SubscriptionStream};

/// `LogSubscriptions`: the subscriptions for the session's node, until the
/// session ends.
pub(super) fn subscriptions(inner: &Inner, session_id: &str) -> Result<SubscriptionStream, Status> {
    let live = lock(&inner.sessions).lookup(session_id);
    let Some((node_id, token)) = live else {
        return Err(session::unknown(session_id));
    };
    Ok(inner.logs.listen(&node_id, token))
}

/// `PublishLogs`: hand every message to the broker as coming from the node of
/// its (live) session. A stream carries one session; when it ends, every
/// subscription it published for is finished for that node, `close` or not,
/// so a vanished agent cannot hold a client's stream open.
pub(super) async fn publish(
    inner: &Inner,
    caller: &Caller,
    mut stream: Streaming<PublishLogsMessage>,
) -> Result<PublishLogsResponse, Status> {
    let mut origin: Option<(String, String)> = None;
    let mut seen: Vec<String> = Vec::new();
    let result = async {
        while let Some(msg) = stream.message().await? {
            let node_id = node_of(inner, &mut origin, &msg.session_id)?;
            auth::check_node(caller, &node_id)?;
            if !seen.contains(&msg.subscription_id) {
                seen.push(msg.subscription_id.clone());
            }
            inner.logs.publish(&node_id, msg).await?;
        }
        Ok(PublishLogsResponse {})
    }
    .await;
    if let Some((_, node_id)) = &origin {
        finish_all(&inner.logs, &seen, node_id).await;
    }
    result
}

/// The node of `session_id`, which must stay the same for the whole stream and
/// still be live.
fn node_of(
    inner: &Inner,
    origin: &mut Option<(String, String)>,
    session_id: &str,
) -> Result<String, Status> {
    if let Some((first, _)) = origin.as_ref()
        && first != session_id
    {
        return Err(Status::invalid_argument(format!(
            "session_id: one PublishLogs stream carries one session ({first}), not {session_id}"
        )));
    }
    let live = lock(&inner.sessions).lookup(session_id);
    let Some((node_id, _)) = live else {
        return Err(session::unknown(session_id));
    };
    *origin = Some((session_id.to_string(), node_id.clone()));
    Ok(node_id)
}

async fn finish_all(logs: &LogBroker, subscriptions: &[String], node_id: &str) {
    for id in subscriptions {
        logs.finish(id, node_id).await;
    }
}
