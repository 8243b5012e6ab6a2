//! Encryption at rest for what the store must not hold in the clear: the root
//! CA's private key, the join tokens and secret values.
//!
//! A cluster-wide 256-bit data key seals values with ChaCha20-Poly1305 (ring)
//! before they are proposed, so neither the Raft log, the snapshots nor the
//! sled files ever hold the plaintext. Each manager keeps the key in
//! `DATA_DIR/keys/data.key` (mode 0600); a manager that joins later receives it
//! over mutual TLS.
//!
//! Sealed format: `version (1 byte) || nonce (12) || ciphertext || tag (16)`.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const KEY_LEN: usize = 32;
const VERSION: u8 = 1;
const KEY_DIR: &str = "keys";
const KEY_FILE: &str = "data.key";

/// Why a sealed value could not be opened, or the key not loaded.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is malformed (too short or unknown version)")]
    Malformed,
    #[error("sealed value does not open with this cluster's data key")]
    WrongKey,
    #[error("data key {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
}

/// The cluster's data key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct DataKey {
    bytes: [u8; KEY_LEN],
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system random source failed");
        DataKey { bytes }
    }

    /// The key from its raw bytes (as received from another manager).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, SealError> {
        let bytes: [u8; KEY_LEN] = raw.try_into().map_err(|_| SealError::Malformed)?;
        Ok(DataKey { bytes })
    }

    /// The raw key, to hand to a joining manager over an authenticated channel.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Path of the key file under a data directory.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(KEY_DIR).join(KEY_FILE)
    }

    /// The key kept in `data_dir`, if there is one.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, SealError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(raw) => Self::from_bytes(&raw)
                .map(Some)
                .map_err(|_| SealError::KeyFile {
                    path,
                    reason: format!("expected {KEY_LEN} bytes, found {}", raw.len()),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SealError::KeyFile {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Write the key to `data_dir` (mode 0600, written then renamed).
    pub fn store(&self, data_dir: &Path) -> Result<(), SealError> {
        let path = Self::path(data_dir);
        let err = |e: std::io::Error| SealError::KeyFile {
            path: path.clone(),
            reason: e.to_string(),
        };
        let dir = data_dir.join(KEY_DIR);
        std::fs::create_dir_all(&dir).map_err(err)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        let tmp = dir.join(format!("{KEY_FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(&self.bytes).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        Ok(())
    }

    /// The key kept in `data_dir`, or a new one stored there.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, SealError> {
        if let Some(key) = Self::load(data_dir)? {
            return Ok(key);
        }
        let key = Self::generate();
        key.store(data_dir)?;
        Ok(key)
    }

    fn aead_key(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.bytes).expect("a 32-byte ChaCha20 key"),
        )
    }

    /// Encrypt and authenticate `plaintext` under a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random source failed");
        let mut body = plaintext.to_vec();
        self.aead_key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([VERSION]),
                &mut body,
            )
            .expect("ChaCha20-Poly1305 sealing cannot fail for in-memory sizes");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out
    }

    /// Check and decrypt a value made by [`DataKey::seal`].
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 1 + NONCE_LEN + aead::CHACHA20_POLY1305.tag_len() || sealed[0] != VERSION
        {
            return Err(SealError::Malformed);
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN]
            .try_into()
            .expect("slice of NONCE_LEN bytes");
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .aead_key()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([VERSION]),
                &mut body,
            )
            .map_err(|_| SealError::WrongKey)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_hide_the_plaintext() {
        let key = DataKey::generate();
        let sealed = key.seal(b"hunter2 is my password");
        assert!(
            !sealed.windows(b"hunter2".len()).any(|w| w == b"hunter2"),
            "the plaintext shows through"
        );
        assert_eq!(key.open(&sealed).unwrap(), b"hunter2 is my password");
        // Two seals of the same value differ (fresh nonce).
        assert_ne!(sealed, key.seal(b"hunter2 is my password"));
        assert!(matches!(
            DataKey::generate().open(&sealed),
            Err(SealError::WrongKey)
        ));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(key.open(&tampered), Err(SealError::WrongKey)));
        assert!(matches!(key.open(&sealed[..10]), Err(SealError::Malformed)));
        assert_eq!(format!("{key:?}"), "DataKey(..)");
    }

    #[test]
    fn the_key_file_is_private_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DataKey::load(dir.path()).unwrap().is_none());
        let key = DataKey::load_or_create(dir.path()).unwrap();
        let again = DataKey::load_or_create(dir.path()).unwrap();
        assert_eq!(key.as_bytes(), again.as_bytes());
        let mode = std::fs::metadata(DataKey::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(DataKey::path(dir.path()), b"short").unwrap();
        let err = DataKey::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("expected 32 bytes"), "{err}");
    }
}
