//! How kvctl checks whom it talks to and proves who it is: TLS and a bearer token.
//!
//! A cluster that speaks TLS is recognised by `https://` endpoints (in `--endpoints` or in the
//! cluster file) or by `--cacert`. The nodes' certificates are checked against `--cacert`
//! (else the system's roots); `--cert` and `--key` present a client certificate, for nodes
//! that require one. A node that runs with an auth file wants a token: `--token`, else
//! `$KVCTL_TOKEN`, else the file named by `token_file` in the cluster file's `[client]` table.
//!
//! A token is a secret: [`Token`] never shows it (its `Debug` prints a placeholder), kvctl
//! never prints it, and its diagnostics (`-v`) say only whether one is sent.
//!
//! When TLS fails, the message says which node and why, in the words an operator acts on:
//! a certificate not signed by the CA given, one that does not name the host, an expired one,
//! a node that refused kvctl's own certificate ([`describe_tls_failure`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{CertificateError, Error as TlsError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A bearer token, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

impl Token {
    /// A token as given; it must be one word of visible ASCII (it travels in a header).
    pub fn new(text: &str) -> Result<Token, SecurityError> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecurityError(
                "the token must be one word of visible ASCII characters".into(),
            ));
        }
        Ok(Token(text.to_string()))
    }

    /// The first line of a token file.
    pub fn from_file(path: &Path) -> Result<Token, SecurityError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SecurityError(format!("cannot read the token file {}: {e}", path.display())))?;
        Token::new(text.lines().next().unwrap_or_default())
            .map_err(|e| SecurityError(format!("token file {}: {}", path.display(), e.0)))
    }

    /// The `Authorization` header's value.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

/// A setting that cannot work; a usage error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecurityError(pub String);

/// What kvctl needs to reach a secured cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// Speak TLS to the nodes.
    pub https: bool,
    /// The CA that signed the nodes' certificates (else the system's roots).
    pub cacert: Option<PathBuf>,
    /// kvctl's certificate, for nodes that require client certificates.
    pub cert: Option<PathBuf>,
    /// The key of `cert`.
    pub key: Option<PathBuf>,
    /// The bearer token sent with every request.
    pub token: Option<Token>,
}

impl Security {
    /// The URL scheme.
    pub fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// The rustls configuration for `--cacert` (and `--cert`/`--key`), or `None` when the
    /// system's roots will do (or TLS is off).
    pub fn tls_config(&self) -> Result<Option<rustls::ClientConfig>, SecurityError> {
        if !self.https {
            return Ok(None);
        }
        let Some(cacert) = &self.cacert else {
            if self.cert.is_some() {
                return Err(SecurityError(
                    "--cert needs --cacert, the CA that signed the nodes' certificates".into(),
                ));
            }
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(cacert, "--cacert")? {
            roots.add(cert).map_err(|e| {
                SecurityError(format!(
                    "--cacert {}: not a usable CA certificate: {e}",
                    cacert.display()
                ))
            })?;
        }
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| SecurityError(format!("TLS setup failed: {e}")))?
                .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "--cert")?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| SecurityError(format!("--key {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| SecurityError(format!("--cert and --key do not fit together: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(SecurityError("--cert and --key go together".into())),
        };
        Ok(Some(config))
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| SecurityError(format!("{what} {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SecurityError(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(SecurityError(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// reqwest, built without a crypto provider of its own (its default would be aws-lc-rs, a C
/// library built with cmake), needs one installed before it builds any client, even one that
/// never speaks TLS: install `ring`. A provider already installed stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS error inside a failed request, if TLS is what failed.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a TlsError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<TlsError>() {
            return Some(tls);
        }
        // An io::Error hides what it wraps from `source()`.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<TlsError>())
        {
            return Some(inner);
        }
        cur = e.source();
    }
    None
}

/// What went wrong with TLS in `error`, said for the node at `address`; `None` when the
/// failure is not TLS's.
pub fn describe_tls_failure(error: &(dyn std::error::Error + 'static), address: &str) -> Option<String> {
    let Some(tls) = tls_error(error) else {
        return described_by_text(error, address);
    };
    let why = match tls {
        TlsError::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "its certificate is not signed by the CA kvctl trusts (unknown CA): give the cluster's CA with --cacert or in the cluster file's [client] cacert".to_string()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "its certificate does not name {} (name mismatch): use an address the certificate names, or a certificate that names this one",
                address.rsplit_once(':').map_or(address, |(h, _)| h)
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "its certificate has expired: renew it".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "its certificate is not valid yet: check the clocks".to_string()
            }
            CertificateError::Revoked => "its certificate has been revoked".to_string(),
            other => format!("its certificate is not acceptable ({other:?})"),
        },
        TlsError::AlertReceived(alert) => format!(
            "it refused the TLS handshake ({alert:?}): it may require a client certificate signed by its CA (--cert and --key)"
        ),
        TlsError::InvalidMessage(_) | TlsError::InappropriateMessage { .. } => {
            "it does not speak TLS: is it an http:// node?".to_string()
        }
        other => other.to_string(),
    };
    Some(format!("TLS with node {address} failed: {why}"))
}

/// The same judgement from the error chain's words, for when the rustls error reaches us only
/// as text (reqwest and hyper wrap it in errors of their own, which do not always expose it
/// as a source).
fn described_by_text(error: &(dyn std::error::Error + 'static), address: &str) -> Option<String> {
    let mut text = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cur {
        text.push_str(&e.to_string());
        text.push('\n');
        cur = e.source();
    }
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let why = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "its certificate is not signed by the CA kvctl trusts (unknown CA): give the cluster's CA with --cacert or in the cluster file's [client] cacert".to_string()
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        format!("its certificate does not name {host} (name mismatch): use an address the certificate names, or a certificate that names this one")
    } else if text.contains("certificate expired") || text.contains("Expired") {
        "its certificate has expired: renew it".to_string()
    } else if text.contains("received fatal alert") {
        "it refused the TLS handshake: it may require a client certificate signed by its CA (--cert and --key)".to_string()
    } else if text.contains("invalid peer certificate") {
        format!(
            "its certificate is not acceptable ({})",
            text.lines().last().unwrap_or_default()
        )
    } else {
        return None;
    };
    Some(format!("TLS with node {address} failed: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_shows() {
        let token = Token::new(" s3cret ").expect("token");
        assert_eq!(format!("{token:?}"), "Token(<hidden>)");
        let security = Security {
            token: Some(token.clone()),
            ..Security::default()
        };
        assert!(!format!("{security:?}").contains("s3cret"));
        assert_eq!(token.header_value(), "Bearer s3cret");
        assert!(Token::new("two words").is_err());
        assert!(Token::new("").is_err());
    }

    #[test]
    fn tls_failures_name_the_node_and_the_cause() {
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TlsError::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let said = describe_tls_failure(&wrapped, "h:1").expect("a TLS failure");
        assert!(said.contains("node h:1") && said.contains("unknown CA"), "{said}");
        let expired = TlsError::InvalidCertificate(CertificateError::Expired);
        assert!(describe_tls_failure(&expired, "h:1")
            .expect("tls")
            .contains("expired"));
        let name = TlsError::InvalidCertificate(CertificateError::NotValidForName);
        assert!(describe_tls_failure(&name, "db:1")
            .expect("tls")
            .contains("does not name db"));
        let as_text = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        assert!(describe_tls_failure(&as_text, "h:1")
            .expect("tls")
            .contains("unknown CA"));
        let other = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_tls_failure(&other, "h:1"), None);
    }
}
