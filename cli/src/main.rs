//! `shoal`: the one binary. Client commands talk to a manager over its
//! `Control` API (and its `Watch` API, to show a service converging);
//! `manager`, `agent` and `up` run the daemons from the shoal-manager and
//! shoal-agent libraries.
//!
//! - `args`: the clap command line.
//! - `connect`: finding and dialling the manager; [`connect::default_data_dir`].
//! - `service`, `node`, `secret` (secrets and configs): the client commands; `output` and `inspect` print
//!   (`output` also words errors for the user, [`output::describe`]);
//!   `progress` shows a service converging.
//! - `daemon`: the daemons and their shutdown; `join_tokens`: join tokens
//!   handed over through files (`--export-join-tokens`, `--token-file`).
//! - `testing` (tests only): fixtures the unit tests share.

mod args;
mod connect;
mod daemon;
mod inspect;
mod join_tokens;
mod node;
mod output;
mod progress;
mod secret;
mod service;
mod supervise;
#[cfg(test)]
pub(crate) mod testing;

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command};

/// jemalloc instead of glibc's malloc (measured in docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`. Allocations of 8 MiB and up go to
/// an arena that hands its pages back to the kernel as soon as they are
/// freed, and sled allocates each 8 MiB segment buffer afresh: every segment
/// written cost 2,048 page faults of zeroed pages. Above 32 MiB only (a
/// whole-state snapshot, say) keeps that arena for what is truly huge.
/// `_RJEM_MALLOC_CONF` in the environment still overrides it.
// The only unsafe in the product (shoal-bench exports the same symbol for
// itself): exporting a symbol that jemalloc's C code looks up is unsafe by
// nature; nothing else touches it.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf = MallocConf(c"oversize_threshold:33554432".as_ptr());

/// A C string pointer that jemalloc reads; it points into static memory.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: the pointer is to an immutable static string.
#[allow(unsafe_code)]
unsafe impl Sync for MallocConf {}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.command.is_daemon());
    // Exactly one rustls provider for the process; an Err means one is set already.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", output::describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let host = cli.host.as_deref();
    connect::set_tls_dir(cli.tls_dir.clone());
    match cli.command {
        Command::Service(command) => service::run(host, command).await,
        Command::Node(command) => node::run(host, command).await,
        Command::Secret(command) => secret::run_secret(host, command).await,
        Command::Config(command) => secret::run_config(host, command).await,
        Command::Manager(args) => daemon::manager(args).await,
        Command::Agent(args) => daemon::agent(args).await,
        Command::Up(args) => daemon::up(args).await,
        Command::Init(args) => daemon::init(args).await,
        Command::JoinToken(args) => node::join_token(host, args).await,
    }
}

/// `SHOAL_LOG` (an `EnvFilter` directive) or: info for daemons, warn for clients.
/// Logs go to stderr so that stdout stays for command output.
fn init_tracing(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person watching; log files stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
