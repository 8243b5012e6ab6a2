//! The scheduler: assigns PENDING tasks to nodes.
//!
//! Swarm's model, in small pieces:
//! - [`nodeinfo`]: one node and the footprint of its tasks (counts per service,
//!   reserved CPU/memory, host ports in use).
//! - [`filters`]: the filter pipeline (ready, availability, constraints,
//!   resources, host ports, max replicas per node), each filter explaining a
//!   refusal; the aggregated explanation becomes the task's status message.
//! - [`spread`]: the choice among passing nodes (fewest tasks of the service,
//!   then fewest tasks, then node id; spread preferences as a decision tree).
//! - [`state`]: the scheduler's indexed copy of nodes and tasks, fed by the
//!   store's change stream.
//! - [`pass`]: one scheduling pass over the pending tasks, grouping identical ones.
//! - [`driver`]: [`run`], the leader-only loop that follows the store, runs passes
//!   and commits decisions in batches.
//! - [`placer`]: the orchestrator's new tasks, placed before they are written,
//!   so a task is created already ASSIGNED (one write instead of two).
//!
//! Everything but the driver is pure and tested on plain data.

pub mod driver;
pub mod filters;
pub mod nodeinfo;
pub mod pass;
pub mod placer;
pub mod spread;
pub mod state;

pub use pass::Decisions;
pub use placer::{Placer, placer};
