//! A certificate refused in the TLS handshake, told in plain words.
//!
//! With TLS 1.3 the client finishes its handshake before the server has
//! checked the client's certificate; a server that refuses it answers with an
//! alert (`unknown_ca`, `certificate_expired`, ...) to the first bytes the
//! client sends. That alert reaches hyper's connection task as a read error,
//! while the call on that connection fails with only "operation was
//! canceled". A [`RefusalWatch`] handed to [`super::client::connect_watched`]
//! keeps the first TLS error seen on the connection, so that a client can say
//! what happened and what to do ([`explain`]).

use std::error::Error;
use std::io;
use std::sync::{Arc, OnceLock};

use rustls::{AlertDescription, CertificateError};

/// The first TLS error seen on the connections of a channel.
#[derive(Debug, Clone, Default)]
pub struct RefusalWatch(Arc<OnceLock<rustls::Error>>);

impl RefusalWatch {
    /// The TLS error recorded, if any.
    pub fn get(&self) -> Option<&rustls::Error> {
        self.0.get()
    }

    /// Keep the TLS error behind `err`, if it is one (the first one wins).
    pub(crate) fn record(&self, err: &io::Error) {
        if let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            let _ = self.0.set(tls.clone());
        }
    }
}

/// The TLS error somewhere in `err`'s chain of causes.
pub fn tls_error<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        cause = e.source();
    }
    None
}

/// What a refused certificate means for the person at the client, or `None`
/// for a TLS error that is not about certificates.
pub fn explain(err: &rustls::Error) -> Option<String> {
    use AlertDescription as Alert;
    use CertificateError as Cert;
    let said = match err {
        // The manager refused our certificate.
        rustls::Error::AlertReceived(alert) => match alert {
            Alert::UnknownCA => {
                "the manager refused this client certificate: it was not issued by this \
                 cluster's CA (a certificate of another cluster, or of a cluster created \
                 again since); use the admin certificate a manager of this cluster wrote \
                 to DATA_DIR/admin"
            }
            Alert::CertificateExpired => {
                "the manager refused this client certificate: it has expired (or is not \
                 valid yet: check this machine's clock); a manager writes a fresh admin \
                 certificate to DATA_DIR/admin when it starts"
            }
            Alert::CertificateRevoked => {
                "the manager refused this client certificate: it has been revoked"
            }
            Alert::CertificateRequired => {
                "the manager requires a client certificate: set SHOAL_CERT_PATH or \
                 --tls-dir to the admin certificate directory (DATA_DIR/admin on a manager)"
            }
            Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateUnknown
            | Alert::DecryptError => {
                "the manager refused this client certificate as unusable (damaged, or \
                 not made for a client); use the admin certificate a manager wrote to \
                 DATA_DIR/admin"
            }
            Alert::AccessDenied => "the manager refused this client certificate (access denied)",
            _ => return None,
        },
        // We refused the manager's certificate.
        rustls::Error::InvalidCertificate(cert) => match cert {
            Cert::UnknownIssuer | Cert::BadSignature => {
                "the manager's certificate was not issued by the CA in this client's \
                 ca.pem: the client's certificates belong to another cluster"
            }
            Cert::Expired | Cert::ExpiredContext { .. } => {
                "the manager's certificate has expired (or this machine's clock is wrong)"
            }
            Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                "the manager's certificate is not valid yet: check this machine's clock"
            }
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                "the server's certificate is not a shoal manager's: is this the manager's address?"
            }
            Cert::Revoked => "the manager's certificate has been revoked",
            _ => return None,
        },
        _ => return None,
    };
    Some(said.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_and_certificate_errors_are_named() {
        let foreign = rustls::Error::AlertReceived(AlertDescription::UnknownCA);
        assert!(
            explain(&foreign)
                .unwrap()
                .contains("not issued by this cluster's CA")
        );
        let expired = rustls::Error::AlertReceived(AlertDescription::CertificateExpired);
        assert!(explain(&expired).unwrap().contains("expired"));
        let server = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(explain(&server).unwrap().contains("another cluster"));
        assert_eq!(explain(&rustls::Error::DecryptError), None);

        // Found behind an io::Error, as the connector reports it.
        let io = io::Error::new(io::ErrorKind::InvalidData, foreign.clone());
        assert_eq!(tls_error(&io), Some(&foreign));
        let watch = RefusalWatch::default();
        watch.record(&io::Error::other("unrelated"));
        assert_eq!(watch.get(), None);
        watch.record(&io);
        watch.record(&io::Error::new(io::ErrorKind::InvalidData, expired));
        assert_eq!(watch.get(), Some(&foreign), "the first error wins");
    }
}
