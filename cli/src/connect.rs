//! Where the CLI finds its manager: the `--host`/`SHOAL_HOST` address (a unix
//! socket or a TCP address), else the control socket in the default data
//! directory — the same directory the daemons use, see [`default_data_dir`].
//! A manager that refuses the CLI's certificate is reported in plain words
//! ([`refusal`]), not as the transport error a failed call shows.

use std::path::{Path, PathBuf};

use std::sync::OnceLock;

use anyhow::{Context, bail};
use shoal_proto::control_client::ControlClient;
use shoal_proto::tls::client::{self, ClientTls};
use shoal_proto::tls::refusal::{self, RefusalWatch};
use shoal_proto::tls::{Credentials, SharedCredentials};
use shoal_proto::validate::MAX_REPLY_BYTES;
use shoal_proto::watch_client::WatchClient;
use tonic::transport::{Channel, Endpoint};

/// Name of the control socket inside a manager's data directory.
pub const SOCKET_NAME: &str = "shoal.sock";

/// The data directory when none is given: `$SHOAL_DATA_DIR`, else `/var/lib/shoal`
/// for root, else `$XDG_DATA_HOME/shoal` or `~/.local/share/shoal`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHOAL_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if running_as_root() {
        return PathBuf::from("/var/lib/shoal");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("shoal");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/shoal"),
        // No home at all (a bare service account): fall back to the system path.
        None => PathBuf::from("/var/lib/shoal"),
    }
}

/// True when the effective user is root. `/proc/self` is owned by the process's
/// effective uid; reading it avoids an `unsafe` call to `geteuid`.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A parsed `--host` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    /// `HOST:PORT`
    Tcp(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "unix://{}", path.display()),
            Target::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// Parse `unix:///path`, `tcp://HOST:PORT` or `HOST:PORT`; `None` means the
/// default control socket.
pub fn target(host: Option<&str>) -> anyhow::Result<Target> {
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(Target::Unix(default_data_dir().join(SOCKET_NAME)));
    };
    if let Some(path) = host.strip_prefix("unix://") {
        if !path.starts_with('/') {
            bail!("--host: {host:?} must name an absolute socket path (unix:///path/shoal.sock)");
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    let addr = host
        .strip_prefix("tcp://")
        .unwrap_or(host)
        .trim_end_matches('/');
    if addr.contains("://") {
        bail!(
            "--host: unsupported scheme in {host:?} (use unix://PATH, tcp://HOST:PORT or HOST:PORT)"
        );
    }
    match addr.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(Target::Tcp(addr.to_string()))
        }
        _ => bail!("--host: {host:?} is not HOST:PORT (for example 127.0.0.1:4280)"),
    }
}

/// Connect to the manager named by `--host` (or the default socket).
pub async fn control(host: Option<&str>) -> anyhow::Result<ControlClient<Channel>> {
    Ok(control_client(dial(host).await?))
}

/// A connection to the manager named by `--host` (or the default socket),
/// for the clients below: one connection serves both.
pub async fn dial(host: Option<&str>) -> anyhow::Result<Channel> {
    channel(&target(host)?).await
}

/// The manager's `Control` API on `channel`.
pub fn control_client(channel: Channel) -> ControlClient<Channel> {
    // Replies may be as large as the manager sends (lists of many services);
    // task lists come in pages.
    ControlClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES)
}

/// The manager's `Watch` API on `channel`: one message holds the changes of
/// one committed entry, as large as the manager sends.
pub fn watch_client(channel: Channel) -> WatchClient<Channel> {
    WatchClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES)
}

fn unreachable(target: &Target) -> String {
    format!("cannot reach the shoal manager at {target}: is `shoal up` or `shoal manager` running?")
}

async fn channel(target: &Target) -> anyhow::Result<Channel> {
    match target {
        Target::Unix(path) => {
            if !path.exists() {
                bail!("{} (no socket at {})", unreachable(target), path.display());
            }
            unix_channel(path).await.map_err(|e| {
                anyhow::anyhow!("{} ({})", unreachable(target), root_cause(e.as_ref()))
            })
        }
        Target::Tcp(addr) => {
            let creds = admin_credentials()?;
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .with_context(|| format!("--host: invalid address {addr:?}"))?
                .connect_timeout(std::time::Duration::from_secs(5));
            client::connect_watched(endpoint, ClientTls::Node(creds), watch().clone())
                .await
                .map_err(|e| match refusal() {
                    Some(why) => anyhow::anyhow!("{why}"),
                    None => anyhow::anyhow!("{} ({})", unreachable(target), root_cause(&e)),
                })
        }
    }
}

/// The TLS errors of this process's connection to the manager (a CLI talks
/// to one manager).
fn watch() -> &'static RefusalWatch {
    static WATCH: OnceLock<RefusalWatch> = OnceLock::new();
    WATCH.get_or_init(RefusalWatch::default)
}

/// Why the manager refused this CLI's certificate, or it the manager's, in
/// words that say what to do; `None` if nothing was refused. A call on a
/// refused connection fails with only "operation was canceled", so the
/// error report asks here first.
pub fn refusal() -> Option<String> {
    let why = refusal::explain(watch().get()?)?;
    let dir = TLS_DIR
        .get()
        .cloned()
        .flatten()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "SHOAL_CERT_PATH".into());
    Some(format!("{why} (certificates in {dir})"))
}

/// `--tls-dir`/`SHOAL_CERT_PATH`, set once by `main`.
static TLS_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Remember where the admin client certificate is (`--tls-dir`).
pub fn set_tls_dir(dir: Option<PathBuf>) {
    let _ = TLS_DIR.set(dir);
}

/// The admin client certificate a remote CLI presents.
fn admin_credentials() -> anyhow::Result<SharedCredentials> {
    let Some(dir) = TLS_DIR.get().cloned().flatten() else {
        bail!(
            "a manager reached over TCP needs the admin client certificate: set SHOAL_CERT_PATH \
             or --tls-dir to a directory holding ca.pem, cert.pem and key.pem (a manager writes \
             them to DATA_DIR/admin)"
        );
    };
    let creds = Credentials::load(&dir)
        .map_err(|e| anyhow::anyhow!("--tls-dir: {e}"))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--tls-dir: no cert.pem in {} (SHOAL_CERT_PATH)",
                dir.display()
            )
        })?;
    SharedCredentials::new(creds).map_err(|e| anyhow::anyhow!("--tls-dir {}: {e}", dir.display()))
}

/// The innermost cause: transport errors nest the same words several times.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

async fn unix_channel(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_parse() {
        assert_eq!(
            target(Some("unix:///run/shoal.sock")).unwrap(),
            Target::Unix("/run/shoal.sock".into())
        );
        assert_eq!(
            target(Some("tcp://10.0.0.1:4280")).unwrap(),
            Target::Tcp("10.0.0.1:4280".into())
        );
        assert_eq!(
            target(Some("localhost:4280")).unwrap(),
            Target::Tcp("localhost:4280".into())
        );
        assert_eq!(
            target(Some("[::1]:4280")).unwrap(),
            Target::Tcp("[::1]:4280".into())
        );
        for bad in [
            "unix://rel.sock",
            "https://x:1",
            "nohost",
            "x:0",
            ":4280",
            "x:port",
        ] {
            let err = target(Some(bad)).unwrap_err().to_string();
            assert!(err.starts_with("--host"), "{bad}: {err}");
        }
        assert!(matches!(target(None).unwrap(), Target::Unix(p) if p.ends_with(SOCKET_NAME)));
    }

    #[tokio::test]
    async fn a_missing_socket_says_what_to_start() {
        let err = control(Some("unix:///nonexistent/shoal.sock"))
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("unix:///nonexistent/shoal.sock"), "{text}");
        assert!(text.contains("shoal up"), "{text}");
    }
}
