//! The benchmark harness behind `shoal-bench` (issue 4): each scenario starts
//! real release-built `shoal` processes, drives them, and prints its figures as
//! `key=value` lines on stdout, one figure per line, as soon as it is known (so
//! a failed run still shows what it measured). Progress and explanations go to
//! stderr. Nothing here asserts on timings: the figures are for people and
//! scripts to judge (docs/BENCHMARKS.md).
//!
//! - [`daemons`]: the release `shoal` binary, manager and agent processes.
//! - [`procfs`]: readings of live processes from `/proc` (memory, CPU, page
//!   faults); the harness's open files limit and priority.
//! - [`cluster`]: several managers forming one Raft group, and when it is at rest.
//! - [`schedule`]: hollow nodes at scale, placements per second.
//! - [`converge`]: N replicas on the real engine via shoal, Swarm and `docker run`.
//! - [`recover`]: an agent killed, its replicas running elsewhere (shoal and Swarm).
//! - [`failover`]: the leader manager killed, a write accepted again.
//! - [`swarm`]: Docker Swarm on the local engine, and extra `dockerd` daemons.
//! - [`footprint`]: resident memory of the daemons.
//! - [`figures`]: printing figures and the small pure computations behind them.
//! - [`warm`]: faulting the harness's heap in before it measures.

pub mod cluster;
pub mod converge;
pub mod daemons;
pub mod failover;
pub mod figures;
pub mod footprint;
pub mod procfs;
pub mod recover;
pub mod schedule;
pub mod swarm;
pub mod tasks;
pub mod warm;
