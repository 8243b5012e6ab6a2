//! `shoal secret ...` and `shoal config ...`: the same four commands for both
//! kinds, with Docker's arguments.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Format;
use super::values::{Quoting, choice, label};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create a secret from a file, or from standard input with `-`.
    Create(SecretCreateArgs),
    /// List secrets.
    #[command(alias = "list")]
    Ls(SecretListArgs),
    /// Show one or more secrets (never their value).
    Inspect(SecretInspectArgs),
    /// Remove one or more secrets (refused while a service uses them).
    #[command(alias = "remove")]
    Rm(SecretRemoveArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Create a config from a file, or from standard input with `-`.
    Create(SecretCreateArgs),
    /// List configs.
    #[command(alias = "list")]
    Ls(SecretListArgs),
    /// Show one or more configs, data included (base64).
    Inspect(SecretInspectArgs),
    /// Remove one or more configs (refused while a service uses them).
    #[command(alias = "remove")]
    Rm(SecretRemoveArgs),
}

#[derive(Debug, Args)]
pub struct SecretCreateArgs {
    /// Label KEY=VALUE (repeatable).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = Quoting(label))]
    pub labels: Vec<(String, String)>,
    /// Name (letters, digits, '_', '.', '-'; at most 64 characters).
    pub name: String,
    /// File to read the value from; `-` reads standard input.
    #[arg(value_name = "FILE|-")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct SecretListArgs {
    /// Only print ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[arg(long, value_parser = choice::<Format>(), default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct SecretInspectArgs {
    #[arg(required = true, value_name = "NAME|ID")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SecretRemoveArgs {
    #[arg(required = true, value_name = "NAME|ID")]
    pub names: Vec<String>,
}
