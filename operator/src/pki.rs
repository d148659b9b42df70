//! The internal CA: one per ChatCluster, and a certificate per component it signs, naming the
//! component's [`Identity`] (a URI SAN) and the DNS names it is reached by. Both drivers use
//! it: the reconciler keeps the CA and the certificates in Secrets, the local runner in files.
//!
//! Issuing (randomness, signing) is apart from the decision to issue: [`renewal`] is pure and
//! says whether a certificate in hand still serves, so the drivers renew before expiry
//! without a restart (every reader reloads its files).

use std::time::{Duration, SystemTime};

use chatcluster_types::identity::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, string::Ia5String,
};

/// How long the CA is valid: far longer than any certificate it signs, so it never rotates
/// under a running cluster.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a component's certificate is valid by default.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Issued certificates are valid from a little before now, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(300);

/// A certificate could not be issued or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen failed to generate or sign.
    #[error("cannot {what}: {source}")]
    Generate {
        /// What was being done.
        what: &'static str,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// `render`'s stand-in, never a CA.
    #[error("a placeholder CA cannot sign")]
    Placeholder,
    /// A stored CA is not one.
    #[error("the stored CA is unusable: {0}")]
    BadCa(String),
}

/// The mapper of an rcgen failure while doing `what`.
pub fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

/// A CA certificate and its private key, PEM.
#[derive(Clone)]
pub struct Ca {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(<key redacted>)")
    }
}

/// A component's certificate, its key, and the CA that signed it (PEM each): the three files
/// of a TLS directory.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The CA's certificate.
    pub ca_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued(<key redacted>)")
    }
}

/// What a component's certificate must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Whose it is.
    pub identity: Identity,
    /// The names it serves under (servers) — none for a pure client.
    pub dns_names: Vec<String>,
    /// How long it is valid.
    pub lifetime: Duration,
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

impl Ca {
    /// A new CA for the cluster `namespace/name`.
    pub fn generate(namespace: &str, name: &str, now: SystemTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(generate("generate the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("ChatCluster {namespace}/{name} internal CA"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + CA_LIFETIME);
        let cert = params.self_signed(&key).map_err(generate("sign the CA"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A stand-in whose files all read `text` (what `render` shows for a generated Secret).
    pub fn placeholder(text: &str) -> Self {
        Self {
            cert_pem: text.into(),
            key_pem: text.into(),
        }
    }

    /// A CA kept from before; its key must be its certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadCa(e.to_string()))?;
        let cert = parse(cert_pem).ok_or_else(|| PkiError::BadCa("no certificate".into()))?;
        if cert.spki != key.subject_public_key_info() {
            return Err(PkiError::BadCa("the key is not the certificate's".into()));
        }
        let ca = Self {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        };
        ca.issuer()?;
        Ok(ca)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| PkiError::BadCa(e.to_string()))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(|e| PkiError::BadCa(e.to_string()))
    }

    /// A short fingerprint of the CA's certificate (SHA-256, 16 hex digits): what pods are
    /// marked with, so they roll when the CA is replaced.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.cert_pem.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The CA's dates: it is never renewed in place (it is replaced), so it has none due.
    pub fn dates(&self) -> Option<Dates> {
        Some(Dates {
            name: "ca".into(),
            renew_at: None,
            not_after: parse(&self.cert_pem)?.not_after,
        })
    }

    /// The CA's certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A fresh key and certificate for `leaf`, usable as a TLS server and client both (every
    /// component is one or the other, and chatd replicas are both to each other).
    pub fn issue(&self, leaf: &Leaf, now: SystemTime) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(generate("generate a certificate key"))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, leaf.identity.component.clone());
        // The identity's own DNS name first: every peer verifies a server by it.
        let server_name = leaf.identity.server_name();
        params.subject_alt_names = std::iter::once(&server_name)
            .chain(&leaf.dns_names)
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ia5String::try_from(name.as_str()).map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()
            .map_err(generate("name the certificate"))?;
        params.subject_alt_names.push(SanType::URI(
            Ia5String::try_from(leaf.identity.uri()).map_err(generate("name the certificate"))?,
        ));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + leaf.lifetime);
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(generate("sign a certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
        })
    }
}

/// Why a certificate in hand must be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renew {
    /// There is none, or it cannot be read.
    Missing,
    /// Another CA signed it (the CA was replaced, or the certificate planted).
    OtherCa,
    /// Its key is not the certificate's (a corrupted or mixed-up file).
    KeyMismatch,
    /// It names another identity or lacks a DNS name `leaf` needs.
    Names,
    /// It lives longer than `leaf` now allows (the lifetime was shortened, say after a
    /// compromise): replaced at once rather than at its old two thirds.
    Lifetime,
    /// Two thirds of its lifetime are gone.
    Due,
}

/// Whether `issued` still serves as `leaf`'s certificate under `ca` at `now`, and when not,
/// why. Renewing at two thirds of the lifetime leaves a third for a failed renewal to be
/// retried before anything expires.
pub fn renewal(issued: Option<&Issued>, ca: &Ca, leaf: &Leaf, now: SystemTime) -> Option<Renew> {
    let Some(issued) = issued else {
        return Some(Renew::Missing);
    };
    let Some(cert) = parse(&issued.cert_pem) else {
        return Some(Renew::Missing);
    };
    if issued.ca_pem != ca.cert_pem || !signed_by(&cert, &ca.cert_pem) {
        return Some(Renew::OtherCa);
    }
    let key_matches = KeyPair::from_pem(&issued.key_pem)
        .map(|key| key.subject_public_key_info() == cert.spki)
        .unwrap_or(false);
    if !key_matches {
        return Some(Renew::KeyMismatch);
    }
    if cert.identity.as_ref() != Some(&leaf.identity)
        || !cert.names.contains(&leaf.identity.server_name())
        || !leaf.dns_names.iter().all(|n| cert.names.contains(n))
    {
        return Some(Renew::Names);
    }
    // Issue times are whole seconds: a minute's slack.
    let longest = leaf.lifetime + BACKDATE + Duration::from_secs(60);
    if cert
        .not_after
        .duration_since(cert.not_before)
        .is_ok_and(|lived| lived > longest)
    {
        return Some(Renew::Lifetime);
    }
    match due_at(&cert) {
        Some(at) if now < at => None,
        _ => Some(Renew::Due),
    }
}

/// One certificate's dates, as monitoring shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dates {
    /// Which certificate: `ca`, or the component it names.
    pub name: String,
    /// When it falls due for renewal; none for the CA.
    pub renew_at: Option<SystemTime>,
    /// When it expires.
    pub not_after: SystemTime,
}

/// The dates of `leaf`'s certificate `issued`.
pub fn dates(leaf: &Leaf, issued: &Issued) -> Option<Dates> {
    let cert = parse(&issued.cert_pem)?;
    Some(Dates {
        name: leaf.identity.component.clone(),
        renew_at: due_at(&cert),
        not_after: cert.not_after,
    })
}

/// When the certificate `issued` expires (what a server reloading it will serve).
pub fn not_after(issued: &Issued) -> Option<SystemTime> {
    Some(parse(&issued.cert_pem)?.not_after)
}

/// Two thirds into a certificate's life, counted from when it was issued (its validity
/// starts [`BACKDATE`] earlier, for clocks a little behind).
fn due_at(cert: &Parsed) -> Option<SystemTime> {
    let issued = cert.not_before + BACKDATE;
    let lifetime = cert.not_after.duration_since(issued).ok()?;
    Some(issued + lifetime.mul_f64(2.0 / 3.0))
}

struct Parsed {
    der: Vec<u8>,
    /// The subject public key info, DER: what a matching key's public half is.
    spki: Vec<u8>,
    identity: Option<Identity>,
    names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
}

fn parse(pem: &str) -> Option<Parsed> {
    use x509_parser::extensions::GeneralName;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).ok()?))
    };
    let mut names = Vec::new();
    let mut identity = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => names.push(n.to_string()),
                GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b) {
                    Ok(v4) => names.push(std::net::Ipv4Addr::from(v4).to_string()),
                    Err(_) => {
                        if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            names.push(std::net::Ipv6Addr::from(v6).to_string());
                        }
                    }
                },
                GeneralName::URI(uri) => identity = identity.or_else(|| Identity::parse(uri)),
                _ => {}
            }
        }
    }
    Some(Parsed {
        identity,
        names,
        not_before: at(cert.validity().not_before)?,
        not_after: at(cert.validity().not_after)?,
        spki: cert.public_key().raw.to_vec(),
        der: pem.contents.clone(),
    })
}

fn signed_by(cert: &Parsed, ca_pem: &str) -> bool {
    let Ok((_, ca)) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()) else {
        return false;
    };
    let (Ok((_, ca)), Ok((_, leaf))) = (
        x509_parser::parse_x509_certificate(&ca.contents),
        x509_parser::parse_x509_certificate(&cert.der),
    ) else {
        return false;
    };
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatcluster_types::identity::component;

    fn leaf(component: &str, lifetime: Duration) -> Leaf {
        Leaf {
            identity: Identity::new("chat", "demo", component),
            dns_names: vec!["demo-xds.chat.svc".into(), "127.0.0.1".into()],
            lifetime,
        }
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn an_issued_certificate_serves_until_two_thirds_of_its_life() {
        let now = SystemTime::now();
        let ca = Ca::generate("chat", "demo", now).unwrap();
        let want = leaf(component::XDS, 30 * DAY);
        let issued = ca.issue(&want, now).unwrap();
        assert_eq!(renewal(Some(&issued), &ca, &want, now), None);
        assert_eq!(renewal(Some(&issued), &ca, &want, now + 19 * DAY), None);
        assert_eq!(
            renewal(Some(&issued), &ca, &want, now + 21 * DAY),
            Some(Renew::Due)
        );
        let at = dates(&want, &issued).unwrap().renew_at.unwrap();
        assert!(at > now + 19 * DAY && at < now + 21 * DAY);
    }

    #[test]
    fn a_certificate_of_another_ca_or_identity_is_replaced() {
        let now = SystemTime::now();
        let ca = Ca::generate("chat", "demo", now).unwrap();
        let other = Ca::generate("chat", "demo", now).unwrap();
        let want = leaf(component::XDS, 30 * DAY);
        let planted = other.issue(&want, now).unwrap();
        assert_eq!(
            renewal(Some(&planted), &ca, &want, now),
            Some(Renew::OtherCa)
        );
        // The right CA's file beside a foreign certificate is still a foreign certificate.
        let forged = Issued {
            ca_pem: ca.cert_pem().into(),
            ..planted
        };
        assert_eq!(
            renewal(Some(&forged), &ca, &want, now),
            Some(Renew::OtherCa)
        );
        let envoy = ca.issue(&leaf(component::INGRESS, 30 * DAY), now).unwrap();
        assert_eq!(renewal(Some(&envoy), &ca, &want, now), Some(Renew::Names));
        let more = Leaf {
            dns_names: vec!["demo-xds-2.chat.svc".into()],
            ..want.clone()
        };
        let issued = ca.issue(&want, now).unwrap();
        assert_eq!(renewal(Some(&issued), &ca, &more, now), Some(Renew::Names));
        assert_eq!(renewal(None, &ca, &want, now), Some(Renew::Missing));
        let garbage = Issued {
            cert_pem: "not a certificate".into(),
            ..issued
        };
        assert_eq!(
            renewal(Some(&garbage), &ca, &want, now),
            Some(Renew::Missing)
        );
    }

    #[test]
    fn a_stored_ca_round_trips_and_a_broken_one_is_refused() {
        let now = SystemTime::now();
        let ca = Ca::generate("chat", "demo", now).unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let want = leaf(component::INGRESS, DAY);
        let issued = again.issue(&want, now).unwrap();
        assert_eq!(renewal(Some(&issued), &ca, &want, now), None);
        assert!(Ca::from_pem(ca.cert_pem(), "garbage").is_err());
        assert!(Ca::from_pem("garbage", ca.key_pem()).is_err());
        // Another CA's key beside this certificate: refused, not a CA signing nothing valid.
        let other = Ca::generate("chat", "demo", now).unwrap();
        assert!(Ca::from_pem(ca.cert_pem(), other.key_pem()).is_err());
    }

    #[test]
    fn a_shortened_lifetime_replaces_longer_certificates_at_once() {
        let now = SystemTime::now();
        let ca = Ca::generate("chat", "demo", now).unwrap();
        let long = leaf(component::XDS, 30 * DAY);
        let issued = ca.issue(&long, now).unwrap();
        let short = Leaf {
            lifetime: DAY,
            ..long.clone()
        };
        assert_eq!(
            renewal(Some(&issued), &ca, &short, now),
            Some(Renew::Lifetime)
        );
        // A longer lifetime asked for keeps the current one until it is due.
        let longer = Leaf {
            lifetime: 60 * DAY,
            ..long
        };
        assert_eq!(renewal(Some(&issued), &ca, &longer, now), None);
        let fresh = ca.issue(&short, now).unwrap();
        assert_eq!(renewal(Some(&fresh), &ca, &short, now), None);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_replaced() {
        let now = SystemTime::now();
        let ca = Ca::generate("chat", "demo", now).unwrap();
        let want = leaf(component::XDS, 30 * DAY);
        let (a, b) = (ca.issue(&want, now).unwrap(), ca.issue(&want, now).unwrap());
        let mixed = Issued {
            key_pem: b.key_pem,
            ..a
        };
        assert_eq!(
            renewal(Some(&mixed), &ca, &want, now),
            Some(Renew::KeyMismatch)
        );
    }

    #[test]
    fn a_short_life_is_renewed_two_thirds_after_issue_not_after_the_backdate() {
        let now = SystemTime::now();
        let ca = Ca::generate("chat", "demo", now).unwrap();
        let hour = Duration::from_secs(3600);
        let want = leaf(component::XDS, hour);
        let issued = ca.issue(&want, now).unwrap();
        let at = dates(&want, &issued).unwrap().renew_at.unwrap();
        let expected = now + hour.mul_f64(2.0 / 3.0);
        let off = at.duration_since(expected).unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(2), "{off:?}");
    }
}
