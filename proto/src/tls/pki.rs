//! Certificates: who a certificate names (node id, role, cluster), the root
//! CA that signs node certificates, and the key + CSR a joining node sends.
//!
//! A node certificate's subject carries the identity: `CN` = node id, `OU` =
//! role (`worker`, `manager` or `admin`), `O` = cluster id. The role is set by
//! the CA from the join token it checked (or, on renewal, from the store), never
//! from the CSR: the CA copies nothing from a CSR but its public key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Role, SERVER_NAME, TlsError};

/// Default lifetime of a node certificate (Swarm's default too).
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// Lifetime of the root CA certificate (Swarm: 20 years).
const CA_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// Certificates are valid from a little before they are made (an hour, or a
/// tenth of a short lifetime), so a peer whose clock is slightly behind does
/// not refuse a fresh certificate.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    /// Unix seconds after which the certificate is no longer valid.
    pub not_after: i64,
    /// Unix seconds from which the certificate is valid.
    pub not_before: i64,
}

impl PeerIdentity {
    /// Read the identity from a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| TlsError::Certificate(format!("unreadable certificate: {e}")))?;
        let subject = cert.subject();
        let first = |values: Vec<&str>, what: &str| -> Result<String, TlsError> {
            values
                .first()
                .map(|v| v.to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| TlsError::Certificate(format!("certificate subject has no {what}")))
        };
        let node_id = first(
            subject
                .iter_common_name()
                .filter_map(|a| a.as_str().ok())
                .collect(),
            "common name (node id)",
        )?;
        let role = first(
            subject
                .iter_organizational_unit()
                .filter_map(|a| a.as_str().ok())
                .collect(),
            "organizational unit (role)",
        )?;
        let role: Role = role.parse()?;
        let cluster_id = first(
            subject
                .iter_organization()
                .filter_map(|a| a.as_str().ok())
                .collect(),
            "organization (cluster id)",
        )?;
        Ok(PeerIdentity {
            node_id,
            role,
            cluster_id,
            not_after: cert.validity().not_after.timestamp(),
            not_before: cert.validity().not_before.timestamp(),
        })
    }

    /// Read the identity of the first certificate of a PEM chain.
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        let der = first_cert_der(pem)?;
        Self::from_der(&der)
    }
}

/// When to renew a certificate: at a random point between 50 % and 80 % of
/// its life (unix seconds), so that a fleet issued together does not renew
/// together.
pub fn renewal_time(identity: &PeerIdentity) -> i64 {
    use rand::Rng;
    let life = (identity.not_after - identity.not_before).max(0);
    let fraction = rand::rng().random_range(0.5..0.8);
    identity.not_before + (life as f64 * fraction) as i64
}

/// The first certificate of a PEM text.
pub fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| TlsError::Certificate("no certificate in PEM".into()))?
        .map_err(|e| TlsError::Certificate(format!("bad certificate PEM: {e}")))
}

/// The digest a join token pins the root CA with: SHA-256 of the CA
/// certificate's DER, lowercase hex.
pub fn ca_digest(ca_cert_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, ca_cert_der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A private key and a CSR for it, as a joining node makes them. The CSR names
/// nothing: the CA decides the subject.
pub fn new_key_and_csr() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(pki_err)?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(pki_err)?
        .pem()
        .map_err(pki_err)?;
    Ok((key.serialize_pem(), csr))
}

fn pki_err(e: rcgen::Error) -> TlsError {
    TlsError::Certificate(e.to_string())
}

/// Now, in unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn offset(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The cluster's root certificate authority.
pub struct RootCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &self.digest())
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// A new self-signed root CA for `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(pki_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "shoal root CA");
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = unix_now();
        params.not_before = offset(now - BACKDATE.as_secs() as i64);
        params.not_after = offset(now + CA_LIFETIME.as_secs() as i64);
        let cert = params.self_signed(&key).map_err(pki_err)?;
        Ok(RootCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// The CA from its certificate and private key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let cert_der = first_cert_der(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(pki_err)?;
        Ok(RootCa {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The private key, PEM. Keep it sealed at rest.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// [`ca_digest`] of this CA.
    pub fn digest(&self) -> String {
        ca_digest(&self.cert_der)
    }

    /// Sign a certificate for `identity` over the public key of `csr_pem`,
    /// valid from `identity.not_before` to `identity.not_after`. Manager
    /// certificates also name [`SERVER_NAME`] so clients can verify them.
    pub fn issue(&self, csr_pem: &str, identity: &PeerIdentity) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Certificate(format!("certificate request refused: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.node_id.as_str());
        dn.push(DnType::OrganizationalUnitName, identity.role.as_str());
        dn.push(DnType::OrganizationName, identity.cluster_id.as_str());
        params.distinguished_name = dn;
        let mut sans = vec![SanType::DnsName(
            format!("{}.shoal", identity.node_id)
                .try_into()
                .map_err(pki_err)?,
        )];
        if identity.role == Role::Manager {
            sans.push(SanType::DnsName(SERVER_NAME.try_into().map_err(pki_err)?));
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset(identity.not_before);
        params.not_after = offset(identity.not_after);
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(pki_err)?;
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(pki_err)?;
        Ok(cert.pem())
    }

    /// An identity valid from now (backdated an hour) for `lifetime`.
    pub fn identity(
        node_id: &str,
        role: Role,
        cluster_id: &str,
        lifetime: Duration,
    ) -> PeerIdentity {
        let now = unix_now();
        let backdate = BACKDATE.min(lifetime / 10).as_secs().max(1) as i64;
        PeerIdentity {
            node_id: node_id.to_string(),
            role,
            cluster_id: cluster_id.to_string(),
            not_before: now - backdate,
            not_after: now + lifetime.as_secs() as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_identity_the_ca_chose() {
        let ca = RootCa::generate("cluster1").unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        let wanted = RootCa::identity("node1", Role::Worker, "cluster1", DEFAULT_CERT_LIFETIME);
        let pem = ca.issue(&csr, &wanted).unwrap();
        let got = PeerIdentity::from_pem(&pem).unwrap();
        assert_eq!(got, wanted);

        // The CA reloads from PEM and still signs verifiable certificates.
        let again = RootCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.digest(), ca.digest());
        let manager = RootCa::identity("m1", Role::Manager, "cluster1", DEFAULT_CERT_LIFETIME);
        let pem = again.issue(&csr, &manager).unwrap();
        assert_eq!(PeerIdentity::from_pem(&pem).unwrap().role, Role::Manager);
    }

    #[test]
    fn a_csr_cannot_choose_its_subject() {
        let ca = RootCa::generate("c").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "evil");
        dn.push(DnType::OrganizationalUnitName, "manager");
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let pem = ca
            .issue(
                &csr,
                &RootCa::identity("n2", Role::Worker, "c", DEFAULT_CERT_LIFETIME),
            )
            .unwrap();
        let got = PeerIdentity::from_pem(&pem).unwrap();
        assert_eq!((got.node_id.as_str(), got.role), ("n2", Role::Worker));
    }

    #[test]
    fn garbage_requests_and_certificates_are_refused() {
        let ca = RootCa::generate("c").unwrap();
        let id = RootCa::identity("n", Role::Worker, "c", DEFAULT_CERT_LIFETIME);
        assert!(ca.issue("not a csr", &id).is_err());
        assert!(PeerIdentity::from_pem("nothing").is_err());
        // The CA's own certificate names no role.
        let err = PeerIdentity::from_pem(ca.cert_pem())
            .unwrap_err()
            .to_string();
        assert!(err.contains("role"), "{err}");
        assert_eq!(ca.digest().len(), 64);
    }
}
