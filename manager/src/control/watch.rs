//! The `Watch` API: the store's committed changes as a stream, filtered by kind.

use std::pin::Pin;

use futures::Stream;
use shoal_proto::watch_server::Watch;
use shoal_proto::{StoreObject, WatchEvent, WatchKind, WatchMessage, WatchRequest};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use tokio_util::sync::CancellationToken;

use crate::store::{ChangeKind, Kind, ObjectExt, Store};

#[derive(Clone)]
pub struct WatchService {
    store: Store,
    /// Ends every open stream when the manager shuts down, so that the gRPC
    /// server's graceful shutdown does not wait on watchers forever.
    shutdown: CancellationToken,
}

impl WatchService {
    pub fn new(store: Store, shutdown: CancellationToken) -> Self {
        WatchService { store, shutdown }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchMessage, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let kinds = req.into_inner().kinds;
        for k in &kinds {
            if !Kind::ALL.iter().any(|kind| kind.name() == k) {
                let known: Vec<&str> = Kind::ALL.iter().map(|kind| kind.name()).collect();
                return Err(Status::invalid_argument(format!(
                    "kinds: unknown kind {k:?} (use {})",
                    known.join(", ")
                )));
            }
        }
        let mut changes = self.store.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = changes.recv() => r,
                };
                let batch = match received {
                    Ok(batch) => batch,
                    Err(RecvError::Closed) => break,
                    Err(RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "watch fell {n} changes behind; watch again"
                            ))))
                            .await;
                        break;
                    }
                };
                let events: Vec<WatchEvent> = batch
                    .changes
                    .iter()
                    .filter(|c| {
                        kinds.is_empty() || kinds.iter().any(|k| k == c.object.kind().name())
                    })
                    .map(|c| WatchEvent {
                        kind: match c.kind {
                            ChangeKind::Created => WatchKind::Create,
                            ChangeKind::Updated | ChangeKind::Reported => WatchKind::Update,
                            ChangeKind::Deleted => WatchKind::Delete,
                        } as i32,
                        object: Some(StoreObject {
                            object: Some(super::redacted(c.object.to_object())),
                        }),
                        index: batch.index,
                    })
                    .collect();
                if !events.is_empty() && tx.send(Ok(WatchMessage { events })).await.is_err() {
                    break; // the client left
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
