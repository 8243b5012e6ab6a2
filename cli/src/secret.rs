//! `shoal secret ...` and `shoal config ...`: create from a file or standard
//! input, list, inspect and remove, with Docker's output. A secret's value is
//! read, sent once to the manager, and never printed; a config's data is shown
//! by `inspect` (base64, like Docker's).

use std::io::Read;

use anyhow::Context;
use base64::Engine;
use serde::Serialize;
use serde_json::{Value, json};
use shoal_proto::control_client::ControlClient;
use shoal_proto::{
    Config, ConfigSpec, CreateConfigRequest, CreateSecretRequest, GetConfigRequest,
    GetSecretRequest, ListConfigsRequest, ListSecretsRequest, Meta, RemoveConfigRequest,
    RemoveSecretRequest, Secret, SecretSpec, validate,
};
use tonic::transport::Channel;

use crate::args::{ConfigCommand, SecretCommand, SecretCreateArgs, SecretListArgs};
use crate::connect;
use crate::output;

type Client = ControlClient<Channel>;

/// Headers of `secret ls` and `config ls`.
pub const HEADERS: [&str; 4] = ["ID", "NAME", "CREATED", "UPDATED"];

pub async fn run_secret(host: Option<&str>, command: SecretCommand) -> anyhow::Result<()> {
    // Read and check the value before connecting: a typo should not need a manager.
    if let SecretCommand::Create(args) = &command {
        let spec = secret_spec(args, &mut std::io::stdin())?;
        let mut client = connect::control(host).await?;
        let secret = client
            .create_secret(CreateSecretRequest { spec: Some(spec) })
            .await?
            .into_inner()
            .secret
            .unwrap_or_default();
        println!("{}", secret.id);
        return Ok(());
    }
    let mut client = connect::control(host).await?;
    match command {
        SecretCommand::Create(_) => unreachable!("handled above"),
        SecretCommand::Ls(args) => {
            let secrets = client
                .list_secrets(ListSecretsRequest {})
                .await?
                .into_inner()
                .secrets;
            let rows: Vec<Row> = secrets
                .iter()
                .map(|s| {
                    Row::new(
                        &s.id,
                        s.spec.as_ref().map(|s| &s.name),
                        &s.meta,
                        s.spec.as_ref().map(|s| &s.labels),
                    )
                })
                .collect();
            print_rows(&rows, &args)
        }
        SecretCommand::Inspect(args) => {
            let mut values = Vec::new();
            for name in &args.names {
                let secret = get_secret(&mut client, name).await?;
                values.push(inspect_secret(&secret));
            }
            output::print_json(&values)
        }
        SecretCommand::Rm(args) => {
            remove_each(&args.names, |name| {
                let mut client = client.clone();
                async move {
                    client
                        .remove_secret(RemoveSecretRequest { secret: name })
                        .await
                        .map(|_| ())
                }
            })
            .await
        }
    }
}

pub async fn run_config(host: Option<&str>, command: ConfigCommand) -> anyhow::Result<()> {
    if let ConfigCommand::Create(args) = &command {
        let spec = config_spec(args, &mut std::io::stdin())?;
        let mut client = connect::control(host).await?;
        let config = client
            .create_config(CreateConfigRequest { spec: Some(spec) })
            .await?
            .into_inner()
            .config
            .unwrap_or_default();
        println!("{}", config.id);
        return Ok(());
    }
    let mut client = connect::control(host).await?;
    match command {
        ConfigCommand::Create(_) => unreachable!("handled above"),
        ConfigCommand::Ls(args) => {
            let configs = client
                .list_configs(ListConfigsRequest {})
                .await?
                .into_inner()
                .configs;
            let rows: Vec<Row> = configs
                .iter()
                .map(|c| {
                    Row::new(
                        &c.id,
                        c.spec.as_ref().map(|s| &s.name),
                        &c.meta,
                        c.spec.as_ref().map(|s| &s.labels),
                    )
                })
                .collect();
            print_rows(&rows, &args)
        }
        ConfigCommand::Inspect(args) => {
            let mut values = Vec::new();
            for name in &args.names {
                let config = client
                    .get_config(GetConfigRequest {
                        config: name.clone(),
                    })
                    .await?
                    .into_inner()
                    .config
                    .with_context(|| format!("config {name} not found"))?;
                values.push(inspect_config(&config));
            }
            output::print_json(&values)
        }
        ConfigCommand::Rm(args) => {
            remove_each(&args.names, |name| {
                let mut client = client.clone();
                async move {
                    client
                        .remove_config(RemoveConfigRequest { config: name })
                        .await
                        .map(|_| ())
                }
            })
            .await
        }
    }
}

async fn get_secret(client: &mut Client, name: &str) -> anyhow::Result<Secret> {
    client
        .get_secret(GetSecretRequest {
            secret: name.to_string(),
        })
        .await?
        .into_inner()
        .secret
        .with_context(|| format!("secret {name} not found"))
}

/// Remove each named object, printing its name like `docker secret rm`; goes
/// on after a failure and fails at the end if any did.
async fn remove_each<F, Fut>(names: &[String], remove: F) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut failed = Vec::new();
    for name in names {
        match remove(name.clone()).await {
            Ok(()) => println!("{name}"),
            Err(status) => {
                eprintln!(
                    "Error: {}",
                    crate::output::describe(&anyhow::Error::new(status))
                );
                failed.push(name.as_str());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("could not remove {}", failed.join(", "))
    }
}

/// The value to create from: the file's bytes, or standard input for `-`.
fn read_value(args: &SecretCreateArgs, stdin: &mut dyn Read) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    if args.file.as_os_str() == "-" {
        stdin
            .take(validate::MAX_DATA_SIZE as u64 + 1)
            .read_to_end(&mut data)
            .context("cannot read standard input")?;
    } else {
        data = std::fs::read(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
    }
    Ok(data)
}

/// `secret create` arguments to a checked spec.
pub fn secret_spec(args: &SecretCreateArgs, stdin: &mut dyn Read) -> anyhow::Result<SecretSpec> {
    let spec = SecretSpec {
        name: args.name.clone(),
        labels: args.labels.iter().cloned().collect(),
        data: read_value(args, stdin)?,
    };
    validate::secret_spec(&spec)?;
    Ok(spec)
}

/// `config create` arguments to a checked spec.
pub fn config_spec(args: &SecretCreateArgs, stdin: &mut dyn Read) -> anyhow::Result<ConfigSpec> {
    let spec = ConfigSpec {
        name: args.name.clone(),
        labels: args.labels.iter().cloned().collect(),
        data: read_value(args, stdin)?,
    };
    validate::config_spec(&spec)?;
    Ok(spec)
}

/// One line of `secret ls` / `config ls`.
#[derive(Debug, Serialize)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Row {
    fn new(
        id: &str,
        name: Option<&String>,
        meta: &Option<Meta>,
        labels: Option<&std::collections::HashMap<String, String>>,
    ) -> Self {
        let meta = meta.unwrap_or_default();
        Row {
            id: id.to_string(),
            name: name.cloned().unwrap_or_default(),
            labels: labels
                .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            created_at: meta.created_at,
            updated_at: meta.updated_at,
        }
    }

    pub fn table_row(&self, now_ms: i64) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            output::ago(self.created_at, now_ms),
            output::ago(self.updated_at, now_ms),
        ]
    }
}

fn print_rows(rows: &[Row], args: &SecretListArgs) -> anyhow::Result<()> {
    let now = shoal_proto::now_ms();
    output::print_list(
        rows,
        args.quiet,
        args.format,
        &HEADERS,
        |r| &r.id,
        |r| r.table_row(now),
    )
}

fn meta(m: &Option<Meta>) -> Value {
    let m = m.unwrap_or_default();
    json!({ "version": m.version, "created_at": m.created_at, "updated_at": m.updated_at })
}

/// `secret inspect`: everything but the value.
pub fn inspect_secret(s: &Secret) -> Value {
    let spec = s.spec.as_ref();
    json!({
        "id": s.id,
        "meta": meta(&s.meta),
        "spec": {
            "name": spec.map(|s| s.name.as_str()).unwrap_or(""),
            "labels": spec.map(|s| s.labels.clone()).unwrap_or_default(),
        },
    })
}

/// `config inspect`: with the data, base64 like Docker's.
pub fn inspect_config(c: &Config) -> Value {
    let spec = c.spec.as_ref();
    json!({
        "id": c.id,
        "meta": meta(&c.meta),
        "spec": {
            "name": spec.map(|s| s.name.as_str()).unwrap_or(""),
            "labels": spec.map(|s| s.labels.clone()).unwrap_or_default(),
            "data": base64::engine::general_purpose::STANDARD
                .encode(spec.map(|s| s.data.as_slice()).unwrap_or_default()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::parse;

    fn create_args(argv: &[&str]) -> SecretCreateArgs {
        match parse(argv).unwrap() {
            crate::args::Command::Secret(SecretCommand::Create(a)) => a,
            crate::args::Command::Config(ConfigCommand::Create(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_reads_a_file_or_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, b"s3cret\n").unwrap();
        let args = create_args(&[
            "shoal",
            "secret",
            "create",
            "--label",
            "a=b",
            "db",
            path.to_str().unwrap(),
        ]);
        let spec = secret_spec(&args, &mut std::io::empty()).unwrap();
        assert_eq!(spec.name, "db");
        assert_eq!(spec.data, b"s3cret\n");
        assert_eq!(spec.labels.get("a").map(String::as_str), Some("b"));

        let args = create_args(&["shoal", "config", "create", "app", "-"]);
        let spec = config_spec(&args, &mut &b"port=80"[..]).unwrap();
        assert_eq!(spec.data, b"port=80");
    }

    #[test]
    fn create_refuses_bad_values_before_connecting() {
        let args = create_args(&["shoal", "secret", "create", "db", "-"]);
        let err = secret_spec(&args, &mut std::io::empty()).unwrap_err();
        assert_eq!(err.to_string(), "data: the secret is empty");
        let big = vec![b'x'; validate::MAX_DATA_SIZE + 1];
        let err = secret_spec(&args, &mut &big[..]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("data: the secret is 512001 bytes"),
            "{err}"
        );
        let args = create_args(&["shoal", "secret", "create", "bad/name", "-"]);
        let err = secret_spec(&args, &mut &b"x"[..]).unwrap_err();
        assert!(err.to_string().starts_with("name:"), "{err}");
        let args = create_args(&["shoal", "secret", "create", "db", "/nonexistent/file"]);
        let err = secret_spec(&args, &mut std::io::empty()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/file"), "{err}");
    }

    #[test]
    fn inspect_shows_no_secret_value_but_config_data() {
        let secret = Secret {
            id: "x1".into(),
            spec: Some(SecretSpec {
                name: "db".into(),
                data: b"leak".to_vec(),
                ..Default::default()
            }),
            data_sealed: b"sealed".to_vec(),
            ..Default::default()
        };
        let shown = inspect_secret(&secret).to_string();
        assert!(
            shown.contains("\"db\"") && !shown.contains("leak") && !shown.contains("sealed"),
            "{shown}"
        );
        let config = Config {
            id: "g1".into(),
            spec: Some(ConfigSpec {
                name: "app".into(),
                data: b"port=80".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(inspect_config(&config)["spec"]["data"], "cG9ydD04MA==");
    }
}
