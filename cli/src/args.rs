//! The command line, as clap derive structs: client commands with Docker's flag
//! names, and the daemons. Values are parsed here with the shared parsers of
//! `shoal_proto::validate`, so a bad value is reported against its flag
//! (`invalid value '5x' for '--restart-delay <DURATION>': ...`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shoal_proto::{ConfigReference, Mount, PortConfig, SecretReference};

mod daemons;
mod secrets;
mod values;

pub use daemons::*;

pub use secrets::*;
use values::{
    Quoting, bytes, choice, config_ref, count_u32, cpus, duration, label, mount, publish,
    scale_target, secret_ref,
};
pub use values::{count, tail};

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "A container cluster scheduler in the lineage of Docker Swarm mode"
)]
pub struct Cli {
    /// Manager to talk to: unix:///path/shoal.sock, HOST:PORT or tcp://HOST:PORT
    /// (default: the control socket in the default data directory).
    #[arg(
        short = 'H',
        long,
        global = true,
        env = "SHOAL_HOST",
        value_name = "ADDR"
    )]
    pub host: Option<String>,

    /// Directory with the admin client certificate (ca.pem, cert.pem, key.pem)
    /// for a manager reached over TCP; a manager writes it to DATA_DIR/admin.
    #[arg(long, global = true, env = "SHOAL_CERT_PATH", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage secrets.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Manage configs.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a manager.
    Manager(ManagerArgs),
    /// Run an agent that runs the tasks a manager assigns to this node.
    Agent(AgentArgs),
    /// Run a single-node cluster (manager and agent) in one process.
    Up(UpArgs),
    /// Create a new cluster in an empty data directory, print its join tokens and exit.
    Init(InitArgs),
    /// Print (or rotate) the token nodes join the cluster with.
    JoinToken(JoinTokenArgs),
}

impl Command {
    /// Daemons log at info by default, clients only at warn.
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::Manager(_) | Command::Agent(_) | Command::Up(_)
        )
    }
}

/// How lists and records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a new service.
    Create(CreateArgs),
    /// List services.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// List the tasks of one or more services, history included.
    Ps(PsArgs),
    /// Show the details of one or more services.
    Inspect(InspectArgs),
    /// Scale one or more replicated services (SERVICE=REPLICAS).
    Scale(ScaleArgs),
    /// Update a service.
    Update(UpdateArgs),
    /// Remove one or more services.
    #[command(alias = "remove")]
    Rm(RemoveArgs),
    /// Fetch the logs of a service's tasks.
    Logs(LogsArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Replicated,
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartConditionArg {
    None,
    OnFailure,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpdateOrderArg {
    StartFirst,
    StopFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailureActionArg {
    Pause,
    Continue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AvailabilityArg {
    Active,
    Pause,
    Drain,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name.
    #[arg(long)]
    pub name: Option<String>,
    /// Number of tasks (replicated mode; default 1).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = Quoting(count))]
    pub replicas: Option<u64>,
    /// Service mode.
    #[arg(long, value_parser = choice::<ModeArg>(), default_value = "replicated")]
    pub mode: ModeArg,
    /// Set environment variables (KEY=VALUE, or KEY to copy it from this shell).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file", value_name = "PATH")]
    pub env_file: Vec<PathBuf>,
    /// Publish a port: [PUBLISHED:]TARGET[/PROTOCOL] or published=..,target=..,mode=..,protocol=..
    #[arg(short = 'p', long = "publish", value_name = "PORT", value_parser = Quoting(publish))]
    pub publish: Vec<PortConfig>,
    /// Attach a mount: type=bind|volume|tmpfs,source=..,target=..[,readonly]
    #[arg(long = "mount", value_name = "MOUNT", value_parser = Quoting(mount))]
    pub mount: Vec<Mount>,
    /// Give the tasks a secret: NAME, NAME,target=FILE or source=NAME,target=FILE,uid=U,gid=G,mode=0400
    /// (the file is /run/secrets/FILE; repeatable).
    #[arg(long = "secret", value_name = "SECRET", value_parser = Quoting(secret_ref))]
    pub secret: Vec<SecretReference>,
    /// Give the tasks a config: NAME, NAME,target=/PATH or source=NAME,target=/PATH,uid=U,gid=G,mode=0444
    /// (default target /NAME; repeatable).
    #[arg(long = "config", value_name = "CONFIG", value_parser = Quoting(config_ref))]
    pub config: Vec<ConfigReference>,
    /// Placement constraint (node.hostname==a, node.labels.zone!=east, ...).
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraint: Vec<String>,
    /// Placement preference (spread=node.labels.KEY).
    #[arg(long = "placement-pref", value_name = "PREF")]
    pub placement_pref: Vec<String>,
    /// Service labels.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = Quoting(label))]
    pub label: Vec<(String, String)>,
    /// Container labels.
    #[arg(long = "container-label", value_name = "KEY=VALUE", value_parser = Quoting(label))]
    pub container_label: Vec<(String, String)>,
    #[command(flatten)]
    pub task: TaskFlags,
    /// Exit at once instead of waiting for the service to converge.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Print only the service id (and no progress).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Image to run.
    pub image: String,
    /// Command and arguments (the container's Cmd).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub args: Vec<String>,
}

/// The flags `create` and `update` share: each one replaces one value of the spec.
#[derive(Debug, Default, Args)]
pub struct TaskFlags {
    /// Maximum number of tasks per node (0 = unlimited).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = Quoting(count))]
    pub replicas_max_per_node: Option<u64>,
    /// Reserve CPUs (e.g. 0.5).
    #[arg(long, value_name = "CPUS", allow_negative_numbers = true, value_parser = Quoting(cpus))]
    pub reserve_cpu: Option<i64>,
    /// Reserve memory (e.g. 512m).
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true, value_parser = Quoting(bytes))]
    pub reserve_memory: Option<i64>,
    /// Limit CPUs.
    #[arg(long, value_name = "CPUS", allow_negative_numbers = true, value_parser = Quoting(cpus))]
    pub limit_cpu: Option<i64>,
    /// Limit memory.
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true, value_parser = Quoting(bytes))]
    pub limit_memory: Option<i64>,
    /// Restart when: none, on-failure or any.
    #[arg(long, value_parser = choice::<RestartConditionArg>())]
    pub restart_condition: Option<RestartConditionArg>,
    /// Delay between restart attempts (e.g. 5s).
    #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = Quoting(duration))]
    pub restart_delay: Option<i64>,
    /// Give up restarting after this many attempts (0 = never).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = Quoting(count))]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy.
    #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = Quoting(duration))]
    pub restart_window: Option<i64>,
    /// Tasks updated at once (0 = all).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = Quoting(count))]
    pub update_parallelism: Option<u64>,
    /// Delay between updates.
    #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = Quoting(duration))]
    pub update_delay: Option<i64>,
    /// Start the new task before stopping the old one, or the reverse.
    #[arg(long, value_parser = choice::<UpdateOrderArg>())]
    pub update_order: Option<UpdateOrderArg>,
    /// What to do when an update fails.
    #[arg(long, value_parser = choice::<FailureActionArg>())]
    pub update_failure_action: Option<FailureActionArg>,
    /// How long a new task must run to count as a success.
    #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = Quoting(duration))]
    pub update_monitor: Option<i64>,
    /// Command to run to check health (run by the shell).
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between health checks.
    #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = Quoting(duration))]
    pub health_interval: Option<i64>,
    /// Consecutive failures needed to report unhealthy.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = Quoting(count_u32))]
    pub health_retries: Option<u32>,
    /// Maximum time one check may take.
    #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = Quoting(duration))]
    pub health_timeout: Option<i64>,
    /// Start period during which failures do not count.
    #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = Quoting(duration))]
    pub health_start_period: Option<i64>,
    /// Disable any container health check.
    #[arg(long, conflicts_with_all = ["health_cmd", "health_interval", "health_retries", "health_timeout", "health_start_period"])]
    pub no_healthcheck: bool,
    /// Working directory inside the container.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User name or UID[:GID].
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Signal that stops the container.
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Time to wait before killing the container.
    #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = Quoting(duration))]
    pub stop_grace_period: Option<i64>,
    /// Override the image's entrypoint.
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Service image.
    #[arg(long)]
    pub image: Option<String>,
    /// Number of tasks.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = Quoting(count))]
    pub replicas: Option<u64>,
    /// Add or replace environment variables.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env_add: Vec<String>,
    /// Remove environment variables.
    #[arg(long, value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Add or replace service labels.
    #[arg(long, value_name = "KEY=VALUE", value_parser = Quoting(label))]
    pub label_add: Vec<(String, String)>,
    /// Remove service labels.
    #[arg(long, value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Add or replace container labels.
    #[arg(long, value_name = "KEY=VALUE", value_parser = Quoting(label))]
    pub container_label_add: Vec<(String, String)>,
    /// Remove container labels.
    #[arg(long, value_name = "KEY")]
    pub container_label_rm: Vec<String>,
    /// Add placement constraints.
    #[arg(long, value_name = "EXPR")]
    pub constraint_add: Vec<String>,
    /// Remove placement constraints.
    #[arg(long, value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// Add placement preferences.
    #[arg(long, value_name = "PREF")]
    pub placement_pref_add: Vec<String>,
    /// Remove placement preferences.
    #[arg(long, value_name = "PREF")]
    pub placement_pref_rm: Vec<String>,
    /// Add or replace a published port (matched by published port and protocol).
    #[arg(long, value_name = "PORT", value_parser = Quoting(publish))]
    pub publish_add: Vec<PortConfig>,
    /// Remove a published port by its target port (TARGET[/PROTOCOL]).
    #[arg(long, value_name = "TARGET")]
    pub publish_rm: Vec<String>,
    /// Add or replace a mount (matched by target).
    #[arg(long, value_name = "MOUNT", value_parser = Quoting(mount))]
    pub mount_add: Vec<Mount>,
    /// Remove a mount by its target path.
    #[arg(long, value_name = "PATH")]
    pub mount_rm: Vec<String>,
    /// Add or replace (same target) a secret, as --secret of create.
    #[arg(long, value_name = "SECRET", value_parser = Quoting(secret_ref))]
    pub secret_add: Vec<SecretReference>,
    /// Remove a secret by name or id.
    #[arg(long, value_name = "SECRET")]
    pub secret_rm: Vec<String>,
    /// Add or replace (same target) a config, as --config of create.
    #[arg(long, value_name = "CONFIG", value_parser = Quoting(config_ref))]
    pub config_add: Vec<ConfigReference>,
    /// Remove a config by name or id.
    #[arg(long, value_name = "CONFIG")]
    pub config_rm: Vec<String>,
    #[command(flatten)]
    pub task: TaskFlags,
    /// Exit at once instead of waiting for the service to converge.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Print nothing but errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Service name or id.
    pub service: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only print ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[arg(long, value_parser = choice::<Format>(), default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only print task ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[arg(long, value_parser = choice::<Format>(), default_value = "table")]
    pub format: Format,
    /// Do not truncate ids and errors.
    #[arg(long)]
    pub no_trunc: bool,
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Service name or id.
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// Follow log output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Number of lines to show from the end of each task's log ("all" for every line).
    #[arg(short = 'n', long, value_name = "N", default_value = "all", value_parser = Quoting(tail))]
    pub tail: i64,
    /// Show timestamps.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Do not include task ids in the output.
    #[arg(long)]
    pub no_task_ids: bool,
    /// Do not truncate task ids.
    #[arg(long)]
    pub no_trunc: bool,
    /// Do not map node ids to hostnames.
    #[arg(long)]
    pub no_resolve: bool,
    /// Print only the log lines: no task, node or timestamp prefix.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print a human-readable summary instead of JSON.
    #[arg(long)]
    pub pretty: bool,
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Exit at once instead of waiting for the services to converge.
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[arg(required = true, value_name = "SERVICE=REPLICAS", value_parser = Quoting(scale_target))]
    pub targets: Vec<(String, u64)>,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show the details of one or more nodes.
    Inspect(NodeInspectArgs),
    /// Change a node's availability or labels.
    Update(NodeUpdateArgs),
    /// Remove one or more nodes from the cluster; their certificates are refused from then on.
    #[command(alias = "remove")]
    Rm(NodeRemoveArgs),
    /// Take managers out of the raft group (they stop); refused if it would break quorum.
    Demote(NodeRoleArgs),
    /// Turn agents into managers (not in place: explains how to add a manager).
    Promote(NodeRoleArgs),
}

#[derive(Debug, Args)]
pub struct NodeRoleArgs {
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodeRemoveArgs {
    /// Remove a node even while it is ready (its agent is then refused).
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodeInspectArgs {
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodeUpdateArgs {
    /// Availability of the node.
    #[arg(long, value_parser = choice::<AvailabilityArg>())]
    pub availability: Option<AvailabilityArg>,
    /// Add or replace node labels.
    #[arg(long, value_name = "KEY=VALUE", value_parser = Quoting(label))]
    pub label_add: Vec<(String, String)>,
    /// Remove node labels.
    #[arg(long, value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Node id, id prefix or hostname.
    pub node: String,
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
