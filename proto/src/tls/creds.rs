//! A node's credentials: the cluster's CA certificate, its own certificate and
//! private key. On disk they are three PEM files in one directory (`ca.pem`,
//! `cert.pem`, `key.pem`, the key mode 0600), like `DOCKER_CERT_PATH`.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{PeerIdentity, TlsError};

pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// CA certificate, node certificate and key, as PEM. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identity = self.identity().map(|i| (i.node_id, i.role));
        f.debug_struct("Credentials")
            .field("identity", &identity)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The credentials kept in `dir`, or `None` when it holds none yet.
    pub fn load(dir: &Path) -> Result<Option<Self>, TlsError> {
        if !dir.join(CERT_FILE).exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map_err(|e| TlsError::Io(format!("{}: {e}", path.display())))
        };
        let creds = Credentials {
            ca_pem: read(CA_FILE)?,
            cert_pem: read(CERT_FILE)?,
            key_pem: read(KEY_FILE)?,
        };
        creds.certified_key()?;
        Ok(Some(creds))
    }

    /// Write the three files into `dir` (created 0700), each written then
    /// renamed so a crash never leaves half a file; the key last.
    pub fn store(&self, dir: &Path) -> Result<(), TlsError> {
        let io = |e: std::io::Error| TlsError::Io(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        for (name, text, mode) in [
            (CA_FILE, &self.ca_pem, 0o644),
            (KEY_FILE, &self.key_pem, 0o600),
            (CERT_FILE, &self.cert_pem, 0o644),
        ] {
            let tmp = dir.join(format!(".{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
                .map_err(io)?;
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&tmp, dir.join(name)).map_err(io)?;
        }
        Ok(())
    }

    /// Who the certificate says this node is.
    pub fn identity(&self) -> Result<PeerIdentity, TlsError> {
        PeerIdentity::from_pem(&self.cert_pem)
    }

    pub(crate) fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let chain: Vec<_> = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Certificate(format!("bad certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError::Certificate("no certificate in cert.pem".into()));
        }
        Ok(chain)
    }

    pub(crate) fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsError::Certificate(format!("bad private key PEM: {e}")))
    }

    pub(crate) fn roots(&self) -> Result<RootCertStore, TlsError> {
        roots(&self.ca_pem)
    }

    /// The certificate and key as rustls signs with them.
    pub(crate) fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let key = super::provider()
            .key_provider
            .load_private_key(self.private_key()?)
            .map_err(|e| TlsError::Certificate(format!("unusable private key: {e}")))?;
        let certified = CertifiedKey::new(self.cert_chain()?, key);
        certified
            .keys_match()
            .map_err(|e| TlsError::Certificate(format!("key does not match certificate: {e}")))?;
        Ok(Arc::new(certified))
    }
}

/// A root store holding the certificates of `ca_pem`.
pub(crate) fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Certificate(format!("bad CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Certificate(format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Certificate("no CA certificate".into()));
    }
    Ok(roots)
}

/// Credentials shared by a node's listener and its outgoing connections, so a
/// renewal takes effect at the next handshake without a restart.
#[derive(Clone)]
pub struct SharedCredentials {
    inner: Arc<RwLock<Current>>,
}

struct Current {
    creds: Arc<Credentials>,
    key: Arc<CertifiedKey>,
    client: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for SharedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedCredentials")
            .field(&self.get())
            .finish()
    }
}

impl SharedCredentials {
    pub fn new(creds: Credentials) -> Result<Self, TlsError> {
        let current = Current::new(creds)?;
        Ok(SharedCredentials {
            inner: Arc::new(RwLock::new(current)),
        })
    }

    /// The credentials in use now.
    pub fn get(&self) -> Arc<Credentials> {
        self.read().creds.clone()
    }

    /// Use `creds` from the next handshake on.
    pub fn replace(&self, creds: Credentials) -> Result<(), TlsError> {
        let current = Current::new(creds)?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = current;
        Ok(())
    }

    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        self.read().key.clone()
    }

    /// A client config presenting the current certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.read().client.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Current {
    fn new(creds: Credentials) -> Result<Self, TlsError> {
        let key = creds.certified_key()?;
        let client = super::client::client_config(&creds)?;
        Ok(Current {
            creds: Arc::new(creds),
            key,
            client,
        })
    }
}
