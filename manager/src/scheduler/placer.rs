//! The orchestrator's creations, placed before they are written.
//!
//! Swarm creates a task PENDING and the scheduler assigns it in a second
//! write. Here the orchestrator hands a batch of new tasks to the scheduler
//! instead, which places them on its current view of the nodes (together with
//! whatever else is waiting) and writes them once, already ASSIGNED, or
//! PENDING with the reason no node could take them. One Raft entry, one apply
//! and one change per task instead of two. The orchestrator gets the
//! proposal's outcome as if it had written the batch itself; when the
//! scheduler has stopped, it gets its tasks back and writes them PENDING.

use shoal_proto::Task;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Applied, Queued, StoreError};

/// Batches waiting for the scheduler: the orchestrator keeps at most its own
/// proposals in flight, so this only bounds a scheduler that fell behind.
const CAPACITY: usize = 16;

/// New tasks to place and create, and where the creation's outcome goes.
pub struct PlaceRequest {
    pub(crate) tasks: Vec<Task>,
    pub(crate) reply: oneshot::Sender<Result<Applied, StoreError>>,
}

/// The orchestrator's handle on the scheduler's placements.
#[derive(Clone)]
pub struct Placer(mpsc::Sender<PlaceRequest>);

/// A placer and the receiver the scheduler serves it from.
pub fn placer() -> (Placer, mpsc::Receiver<PlaceRequest>) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    (Placer(tx), rx)
}

impl Placer {
    /// Have the scheduler place and create `tasks` (new tasks, not yet in the
    /// store) in one non-atomic proposal, in this order: the outcome's refused
    /// positions are positions in `tasks`. Gives the tasks back when the
    /// scheduler has stopped.
    pub async fn create(&self, tasks: Vec<Task>) -> Result<Queued, Vec<Task>> {
        let (reply, rx) = oneshot::channel();
        match self.0.send(PlaceRequest { tasks, reply }).await {
            Ok(()) => Ok(Queued::from_receiver(rx)),
            Err(mpsc::error::SendError(request)) => Err(request.tasks),
        }
    }
}
