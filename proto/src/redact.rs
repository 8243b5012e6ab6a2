//! `Debug` for the messages that carry secret values ([`SecretSpec`],
//! [`Payload`], [`JoinClusterResponse`] with the data key): it shows the name and the size, never the bytes. The build
//! script skips prost's derived `Debug` for them, so a `{:?}` anywhere (a log
//! line, a panic, a test failure) cannot print a secret.

use std::fmt;

use crate::v1::{JoinClusterResponse, Payload, SecretSpec};

impl fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSpec")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("data", &Redacted(self.data.len()))
            .finish()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("data", &Redacted(self.data.len()))
            .finish()
    }
}

impl fmt::Debug for JoinClusterResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinClusterResponse")
            .field("raft_id", &self.raft_id)
            .field("members", &self.members)
            .field("data_key", &Redacted(self.data_key.len()))
            .finish()
    }
}

/// Stands for a value's bytes: `<redacted, 12 bytes>`.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret_value() {
        let spec = SecretSpec {
            name: "db-password".into(),
            data: b"hunter2".to_vec(),
            ..Default::default()
        };
        let request = crate::v1::CreateSecretRequest { spec: Some(spec) };
        let shown = format!("{request:?} {request:#?}");
        assert!(shown.contains("db-password"), "{shown}");
        assert!(shown.contains("<redacted, 7 bytes>"), "{shown}");
        // Neither the text nor the bytes as Debug prints a Vec<u8>.
        assert!(
            !shown.contains("hunter2") && !shown.contains("104, 117"),
            "{shown}"
        );

        let message = crate::v1::AssignmentsMessage {
            secrets: vec![Payload {
                id: "s1".into(),
                name: "db-password".into(),
                data: b"hunter2".to_vec(),
            }],
            ..Default::default()
        };
        let shown = format!("{message:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("104, 117"),
            "{shown}"
        );
    }
}
