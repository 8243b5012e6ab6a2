//! Join tokens handed over through files, for clusters started by a tool
//! rather than a person (`deploy/compose.yaml`): the first manager writes its
//! tokens with `--export-join-tokens DIR`, and the managers and agents that
//! join read theirs with `--token-file PATH`, waiting until it appears.
//!
//! A token is a credential: it is never logged, and the files are written
//! with mode 0600 in a directory of mode 0700, atomically (write, then
//! rename), so a reader never sees half a token.

use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use shoal_proto::tls::JoinToken;
use tokio_util::sync::CancellationToken;

/// How long `--token-file` waits for its file before giving up.
pub const TOKEN_FILE_WAIT: Duration = Duration::from_secs(120);

/// How often a missing token file is looked for again.
const POLL: Duration = Duration::from_millis(200);

/// The files `--export-join-tokens DIR` writes.
pub const MANAGER_TOKEN_FILE: &str = "manager.token";
pub const WORKER_TOKEN_FILE: &str = "worker.token";

/// Wait until `path` holds a join token and return it; `None` when
/// `shutdown` comes first. `flag` names the flag in errors. A file that
/// exists but is empty may still be being written, so it is waited for too.
pub async fn wait_for_token(
    flag: &str,
    path: &Path,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut logged = false;
    loop {
        let seen = match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => return parse(flag, path, &text).map(Some),
            Ok(_) => "is empty",
            Err(e) if e.kind() == ErrorKind::NotFound => "does not exist",
            Err(e) => bail!("{flag}: cannot read {}: {e}", path.display()),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{flag}: {} still {seen} after {}s (the first manager writes it when started with --export-join-tokens)",
                path.display(),
                timeout.as_secs()
            );
        }
        if !logged {
            tracing::info!(flag, path = %path.display(), "waiting for the join token file");
            logged = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The token in a file's text, checked (the error never quotes the token).
fn parse(flag: &str, path: &Path, text: &str) -> anyhow::Result<String> {
    let token = JoinToken::parse(text).with_context(|| format!("{flag}: {}", path.display()))?;
    Ok(token.to_string())
}

/// `--token-file` and `--export-join-tokens` values: a path, not empty.
pub fn path_flag(value: &str) -> Result<PathBuf, String> {
    if value.trim().is_empty() {
        return Err("the path is empty".into());
    }
    Ok(PathBuf::from(value))
}

/// `--export-join-tokens`: a directory, or a path where one can be created.
pub fn export_dir_flag(value: &str) -> Result<PathBuf, String> {
    let path = path_flag(value)?;
    match std::fs::metadata(&path) {
        Ok(meta) if !meta.is_dir() => Err(format!("{value} exists and is not a directory")),
        _ => Ok(path),
    }
}

/// Write a new cluster's tokens into `dir` (created with mode 0700 if
/// needed) as [`MANAGER_TOKEN_FILE`] and [`WORKER_TOKEN_FILE`], mode 0600.
pub fn export(dir: &Path, manager_token: &str, worker_token: &str) -> anyhow::Result<()> {
    let failed =
        |what: &str, path: &Path| format!("--export-join-tokens: cannot {what} {}", path.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| failed("create", dir))?;
    for (name, token) in [
        (MANAGER_TOKEN_FILE, manager_token),
        (WORKER_TOKEN_FILE, worker_token),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| failed("write", &tmp))?;
        out.write_all(format!("{token}\n").as_bytes())
            .and_then(|()| out.sync_all())
            .with_context(|| failed("write", &tmp))?;
        std::fs::rename(&tmp, &path).with_context(|| failed("write", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn token() -> String {
        JoinToken::generate(DIGEST).to_string()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn exported_tokens_are_private_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("join");
        let (manager, worker) = (token(), token());
        export(&out, &manager, &worker).unwrap();
        assert_eq!(mode(&out), 0o700);
        for (name, expected) in [(MANAGER_TOKEN_FILE, &manager), (WORKER_TOKEN_FILE, &worker)] {
            let path = out.join(name);
            assert_eq!(mode(&path), 0o600, "{name}");
            assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), expected);
        }
        // A second cluster's tokens replace the first's; no temporary file stays.
        export(&out, &worker, &manager).unwrap();
        let manager_file = std::fs::read_to_string(out.join(MANAGER_TOKEN_FILE)).unwrap();
        assert_eq!(manager_file.trim(), worker);
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    }

    #[test]
    fn exporting_into_a_file_names_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let err = format!("{:#}", export(&file, &token(), &token()).unwrap_err());
        assert!(err.starts_with("--export-join-tokens"), "{err}");
        let err = export_dir_flag(file.to_str().unwrap()).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        assert!(export_dir_flag(dir.path().join("new").to_str().unwrap()).is_ok());
        assert!(path_flag(" ").is_err());
    }

    #[tokio::test]
    async fn waits_until_the_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.token");
        let expected = token();
        let (writer_path, text) = (path.clone(), format!("{expected}\n"));
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::write(writer_path, text).unwrap();
        });
        let found = wait_for_token(
            "--token-file",
            &path,
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(found, Some(expected));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_file_times_out_naming_flag_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("never");
        let err = wait_for_token(
            "--token-file",
            &path,
            Duration::from_millis(300),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("--token-file"), "{err}");
        assert!(err.contains(path.to_str().unwrap()), "{err}");
        assert!(err.contains("does not exist"), "{err}");
    }

    #[tokio::test]
    async fn a_bad_token_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad");
        let secret = "SHLTKN-1-nothex-sosecret";
        std::fs::write(&path, secret).unwrap();
        let shutdown = CancellationToken::new();
        let err = wait_for_token("--token-file", &path, Duration::from_secs(1), &shutdown)
            .await
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.starts_with("--token-file"), "{err}");
        assert!(err.contains("invalid"), "{err}");
        assert!(!err.contains("sosecret"), "{err}");
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let found = wait_for_token(
            "--token-file",
            &dir.path().join("never"),
            Duration::from_secs(60),
            &shutdown,
        )
        .await
        .unwrap();
        assert_eq!(found, None);
    }
}
