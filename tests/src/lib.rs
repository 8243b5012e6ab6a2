//! Support for shoal's end-to-end scenarios: real `shoal` processes on loopback
//! ports, in-process fake agents speaking real gRPC, and a poll-with-deadline
//! helper instead of sleeps.
//!
//! - [`process`]: build and start `shoal` daemons, kill -9 them, run CLI commands.
//! - [`docker`]: `shoal agent` processes on the real engine, the engine's view of
//!   shoal's containers, and a cleanup guard.
//! - [`docker_cluster`]: a manager and two agents on the real engine.
//! - [`agents`]: hollow agents with the fake runtime (the scenarios' and the
//!   benchmark's nodes).
//! - [`wait`]: [`wait::eventually`], the only way a scenario waits.
//! - [`group`]: scenarios with several managers (the fault suite's helpers).
//! - [`secured`]: a manager whose root CA the test holds (security scenarios).
//! - [`linearizability`]: the checker the fault suite runs its histories through.
//! - [`bench`]: the benchmark harness behind the `shoal-bench` binary.

pub mod agents;
pub mod bench;
pub mod docker;
pub mod docker_cluster;
pub mod group;
pub mod linearizability;
pub mod process;
pub mod secured;
pub mod wait;

/// Install the process-wide rustls provider and a test log subscriber, once.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}
