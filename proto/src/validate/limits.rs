//! Every bound on what a user may ask for, in one place (docs/LIMITS.md lists
//! them with the same reasons).
//!
//! A limit exists so that what the manager allocates follows what exists, never
//! what a spec asks for: every task carries its service's spec on the wire, in
//! the Raft log and in memory, and the orchestrator makes a task per replica.
//! Each number is far above what a real deployment uses and far below what would
//! hurt the manager; each doc comment says why it is where it is. The CLI and the
//! manager enforce them with the same functions ([`super::service_spec`] and
//! friends), so a user sees the same words either way.

/// Longest service name: a DNS label, because the name is also the service's
/// DNS name.
pub const MAX_NAME_LEN: usize = 63;

/// Most replicas one service may ask for. The orchestrator and the store hold a
/// task per replica, so this bounds what one spec can make the manager allocate;
/// the manager is measured at 1,000 nodes x 100,000 tasks of one service.
pub const MAX_REPLICAS: u64 = 100_000;

/// Most labels on one object (service, container, node, secret, config).
/// Label-driven proxies use tens; every task copies its service's labels.
pub const MAX_LABELS: usize = 256;

/// Longest label key. Reverse-DNS keys (`com.example.router.rule`) are well
/// under 100 bytes.
pub const MAX_LABEL_KEY_LEN: usize = 1024;

/// Longest label value. Long enough for a proxy rule or a small JSON document.
pub const MAX_LABEL_VALUE_LEN: usize = 4 * 1024;

/// Most bytes (keys plus values) in one object's labels. It keeps the largest
/// secret or config (whose labels are not under [`MAX_SPEC_BYTES`]) within
/// [`MAX_REQUEST_BYTES`].
pub const MAX_LABELS_BYTES: usize = 32 * 1024;

/// Most environment variables of a container. Real services set tens; a
/// 100,000-line `--env-file` is a mistake, and every task would carry it.
pub const MAX_ENV: usize = 1_000;

/// Most items in the entrypoint, in the arguments, and in the health command,
/// each.
pub const MAX_ARGS: usize = 1_000;

/// Longest single environment entry (`KEY=VALUE`), argument or health command.
/// Enough for a PEM certificate or an inline script; Linux itself refuses one
/// exec string over 128 KiB.
pub const MAX_ITEM_LEN: usize = 32 * 1024;

/// Most mounts of a container. Docker sets none; real services use a handful.
pub const MAX_MOUNTS: usize = 100;

/// Longest path (mount source and target, config target, working directory):
/// Linux's `PATH_MAX`, beyond which the engine refuses the path anyway.
pub const MAX_PATH_LEN: usize = 4_096;

/// Most published ports of a service. Each ingress port is reserved on every
/// node; port ranges are not supported, so a range is one entry per port.
pub const MAX_PORTS: usize = 1_000;

/// Most secret references and most config references of a container, each.
/// Each one is a file the agent writes before the container starts.
pub const MAX_FILE_REFS: usize = 100;

/// Most placement constraints of a service. The scheduler evaluates every one
/// for every node and task it places.
pub const MAX_CONSTRAINTS: usize = 100;

/// Longest placement constraint (`node.labels.KEY==VALUE`): room for the
/// longest label key and value.
pub const MAX_CONSTRAINT_LEN: usize = MAX_LABEL_KEY_LEN + MAX_LABEL_VALUE_LEN + 64;

/// Most spread preferences of a service. Each one splits the nodes again into
/// groups; Swarm users nest two or three.
pub const MAX_PREFERENCES: usize = 10;

/// Longest container hostname: the kernel's `HOST_NAME_MAX`, beyond which the
/// container fails at start (`sethostname: invalid argument`).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// Longest short free string (the user, `USER[:GROUP]`; the stop signal; a
/// secret or config reference's source).
pub const MAX_SHORT_LEN: usize = 256;

/// Longest duration (restart delay and window, health interval, timeout and
/// start period, stop grace period, update delay and monitor): one year. It
/// keeps `Instant + Duration` arithmetic far from overflow, and a year-long
/// delay is a typo.
pub const MAX_DURATION_MS: i64 = 365 * 24 * 60 * 60 * 1000;

/// Largest CPU limit or reservation: 8,192 CPUs (Linux's largest `NR_CPUS`),
/// in nano-CPUs. Sums over every replica of a service stay far within `i64`.
pub const MAX_NANO_CPUS: i64 = 8_192 * 1_000_000_000;

/// Largest memory limit or reservation: 64 TiB, beyond the largest machines
/// sold, and small enough that the reservations of [`MAX_REPLICAS`] tasks sum
/// within `i64`.
pub const MAX_MEMORY_BYTES: i64 = 64 << 40;

/// Most restart attempts a restart policy may count (0 means unlimited). The
/// orchestrator remembers each restart of a slot to count them.
pub const MAX_RESTART_ATTEMPTS: u64 = 10_000;

/// Most health retries before a container is unhealthy. More would keep a
/// broken container "starting" for good.
pub const MAX_HEALTH_RETRIES: u32 = 10_000;

/// Largest service spec, encoded. Every task carries its service's spec on the
/// wire, in the Raft log and in memory, so 100,000 tasks of the largest spec
/// are 6.4 GB in flight; a Raft entry holds at most ~2 MiB
/// (manager/src/raft/disk.rs), and a batch of tasks shares one entry.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;

/// Largest request the manager's Control API needs to decode: a little above
/// the largest valid write (a secret of [`super::MAX_DATA_SIZE`] with the
/// largest labels, ~533 KiB; the largest service spec, 64 KiB). Raft and
/// dispatcher traffic between nodes is not user input and needs its own bound.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Largest request the manager's Dispatcher API decodes from an agent: a batch
/// of 2,000 task status reports (the agent's largest) with long engine errors,
/// or a chunk of log lines, is far under it.
pub const MAX_AGENT_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Largest reply the manager sends and the CLI takes (lists of services and
/// nodes; task lists come in pages of about 2 MiB).
pub const MAX_REPLY_BYTES: usize = 256 * 1024 * 1024;

/// How many characters of a bad value an error quotes ([`super::quoted`]).
pub const QUOTE_CHARS: usize = 64;

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
