//! TLS on both ports, with rustls and its `ring` provider.
//!
//! - **The client port** serves HTTPS with the node's certificate (`--cert-file`,
//!   `--key-file`); with `--client-ca-file` it also requires a client certificate signed by
//!   that CA.
//! - **The peer port** is mutual TLS (`--peer-cert-file`, `--peer-key-file`, `--peer-ca-file`):
//!   a connection without a certificate from the peer CA is refused at the handshake, both
//!   ways. The certificate is the credential: the identity headers every peer request carries
//!   (see `peer_client`) can be computed by anyone, a certificate cannot be made without the
//!   CA's key.
//!
//! # Which node a certificate names
//!
//! Every node's peer certificate carries the DNS name `node-<ID>.kv` ([`node_name`]) beside
//! its host names. On loopback every node has the same host, so a host name cannot tell nodes
//! apart; the node name can. It is checked both ways:
//!
//! - A node that connects to peer N (a Raft RPC, a forwarded request, the replication stream)
//!   accepts only a certificate valid for `node-N.kv` ([`PeerTls::client_config_for`]), so an
//!   address that now belongs to another node, or a node holding the wrong certificate, is
//!   refused before anything is sent.
//! - A node that accepts a peer connection reads the node its certificate names
//!   ([`node_named_by`]); a certificate that names no node is refused, and the Raft handlers
//!   refuse a request whose vote speaks for another node than the certificate names (see
//!   `peer_api`), so a node cannot pose as another one.
//!
//! `kvnode certs` (the `certs` module) writes certificates with these names.
//!
//! # Renewing certificates without a restart
//!
//! A node's own certificates (client port and peer port) are read again on SIGHUP
//! ([`LiveCert`], [`reload_on_sighup`]): every handshake from then on presents the new ones,
//! as server and as client; connections already open keep theirs. A file that does not load,
//! a key that does not match its certificate, or a peer certificate that names another node
//! is logged and the certificate in force stays. The CA files are read at startup only (a new
//! CA is rolled in with restarts, see docs/OPERATIONS.md).
//!
//! The provider is `ring`, named explicitly in every configuration here, because rustls's
//! default provider, aws-lc-rs, is a C library built with cmake. reqwest, built without a
//! provider of its own, also needs one installed process-wide before it builds any client,
//! even one that never speaks TLS ([`install_default_provider`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::types::NodeId;

/// The DNS name a node's peer certificate carries: `node-<ID>.kv`.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.kv")
}

/// The node a (chain-verified) certificate names, if it names exactly one.
pub fn node_named_by(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids = cert.valid_dns_names().filter_map(|name| {
        name.strip_prefix("node-")?
            .strip_suffix(".kv")?
            .parse::<NodeId>()
            .ok()
    });
    let id = ids.next()?;
    // Confirm with webpki's own name matching, and refuse a certificate naming two nodes.
    let name = ServerName::try_from(node_name(id)).ok()?;
    cert.verify_is_valid_for_subject_name(&name).ok()?;
    ids.next().is_none().then_some(id)
}

/// Install `ring` as the process-wide provider, for reqwest; a provider already installed
/// stays.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The crypto provider of every TLS configuration here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS could not be set up. Each message names the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{what} {}: {message}", path.display())]
    File {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material (a key that does not match its certificate, say).
    #[error("{what}: {source}")]
    Rustls {
        /// Which configuration.
        what: &'static str,
        /// The cause.
        source: rustls::Error,
    },
}

fn file_error(what: &'static str, path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Read a certificate chain (PEM).
pub fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Read a private key (PEM: PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(what, path, e))
}

/// Read CA certificates (PEM) into a root store.
pub fn load_roots(path: &Path, what: &'static str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, what)? {
        roots
            .add(cert)
            .map_err(|e| file_error(what, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn rustls_error(what: &'static str) -> impl Fn(rustls::Error) -> TlsError {
    move |source| TlsError::Rustls { what, source }
}

/// The files of the client port's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPortFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// The files of the peer port's mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFiles {
    /// This node's certificate chain, presented as server and as client.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signed every node's peer certificate.
    pub ca: PathBuf,
}

/// The client port's server configuration, and its certificate for [`reload_on_sighup`].
pub fn client_port_config(files: &ClientPortFiles) -> Result<(Arc<ServerConfig>, Arc<LiveCert>), TlsError> {
    let cert = Arc::new(LiveCert::load(
        &files.cert,
        &files.key,
        ("--cert-file", "--key-file"),
        false,
    )?);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error("client port TLS"))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = load_roots(ca, "--client-ca-file")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| file_error("--client-ca-file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), cert))
}

/// A node's own certificate and key, replaced on SIGHUP ([`LiveCert::reload`]): what every
/// new handshake presents, as server and (on the peer port) as client.
#[derive(Debug)]
pub struct LiveCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    /// The flags that name the two files, for messages.
    flags: (&'static str, &'static str),
    /// A peer certificate: it must name a node, the same one on every reload.
    names_node: Option<NodeId>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl LiveCert {
    /// Read the files; `peer`: the certificate must name a node (see the module documentation).
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        flags: (&'static str, &'static str),
        peer: bool,
    ) -> Result<LiveCert, TlsError> {
        let current = Self::read(cert_path, key_path, flags)?;
        let names_node = match peer {
            false => None,
            true => Some(node_named_by(&current.cert[0]).ok_or_else(|| {
                file_error(
                    flags.0,
                    cert_path,
                    "names no node: a peer certificate must carry the DNS name node-<ID>.kv (kvnode certs writes such certificates)",
                )
            })?),
        };
        Ok(LiveCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            flags,
            names_node,
            current: RwLock::new(Arc::new(current)),
        })
    }

    fn read(
        cert_path: &Path,
        key_path: &Path,
        flags: (&'static str, &'static str),
    ) -> Result<CertifiedKey, TlsError> {
        let certs = load_certs(cert_path, flags.0)?;
        let key = load_key(key_path, flags.1)?;
        CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
            file_error(
                flags.1,
                key_path,
                format!("does not go with the certificate in {}: {e}", cert_path.display()),
            )
        })
    }

    /// Read the files again and present them from now on. On an error the certificate in
    /// force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Self::read(&self.cert_path, &self.key_path, self.flags)?;
        if let Some(id) = self.names_node {
            let named = node_named_by(&fresh.cert[0]);
            if named != Some(id) {
                let named = named.map_or("no node".to_string(), |n| format!("node {n}"));
                return Err(file_error(
                    self.flags.0,
                    &self.cert_path,
                    format!("names {named}, but this is node {id}: a renewed peer certificate must name the same node"),
                ));
            }
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The certificate in force.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The certificate file, for messages.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for LiveCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Read the node's own certificates again on every SIGHUP, for as long as the node runs.
#[cfg(unix)]
pub fn reload_on_sighup(certs: Vec<Arc<LiveCert>>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    if certs.is_empty() {
        return Ok(());
    }
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            for cert in &certs {
                match cert.reload() {
                    Ok(()) => {
                        tracing::info!(file = %cert.cert_path().display(), "certificate re-read on SIGHUP")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "certificate not re-read on SIGHUP; the one in force stays")
                    }
                }
            }
        }
    });
    Ok(())
}

/// SIGHUP does not exist here; certificates are read at startup only.
#[cfg(not(unix))]
pub fn reload_on_sighup(_certs: Vec<Arc<LiveCert>>) -> std::io::Result<()> {
    Ok(())
}

/// The peer port's mutual TLS, loaded once: the server side, and the client side per target.
#[derive(Debug)]
pub struct PeerTls {
    server: Arc<ServerConfig>,
    roots: Arc<RootCertStore>,
    cert: Arc<LiveCert>,
}

impl PeerTls {
    /// Load the files and check that they make a working configuration.
    pub fn load(files: &PeerFiles) -> Result<Self, TlsError> {
        let cert = Arc::new(LiveCert::load(
            &files.cert,
            &files.key,
            ("--peer-cert-file", "--peer-key-file"),
            true,
        )?);
        let roots = load_roots(&files.ca, "--peer-ca-file")?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| file_error("--peer-ca-file", &files.ca, e))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error("peer TLS"))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert.clone());
        let tls = PeerTls {
            server: Arc::new(server),
            roots,
            cert,
        };
        tls.client_config_for(0)?;
        Ok(tls)
    }

    /// The node this node's own certificate names.
    pub fn own_node(&self) -> Option<NodeId> {
        self.cert.names_node
    }

    /// This node's peer certificate, for [`reload_on_sighup`].
    pub fn cert(&self) -> Arc<LiveCert> {
        self.cert.clone()
    }

    /// The server side.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The client side for another node's client port (a `--join` node asking a member who
    /// the members are): the usual check of the host name against the peer CA, and this
    /// node's peer certificate for a port that asks for one.
    pub fn client_api_config(&self) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(self.roots.clone())
                    .with_client_cert_resolver(self.cert.clone())
            });
        // `load` built a client configuration with the same provider already.
        Arc::new(config.expect("the peer TLS files were checked when loaded"))
    }

    /// The client side for connections to node `target`: presents this node's certificate and
    /// accepts only a certificate from the peer CA that names `target`.
    pub fn client_config_for(&self, target: NodeId) -> Result<Arc<ClientConfig>, TlsError> {
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Rustls {
                    what: "peer TLS",
                    source: rustls::Error::General(e.to_string()),
                })?;
        let name = ServerName::try_from(node_name(target)).map_err(|e| TlsError::Rustls {
            what: "peer TLS",
            source: rustls::Error::General(e.to_string()),
        })?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error("peer TLS"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NamesNode { inner, name }))
            .with_client_cert_resolver(self.cert.clone());
        Ok(Arc::new(config))
    }
}

/// Verifies a peer's certificate with webpki against the peer CA, for the node's name instead
/// of the host the connection was made to (see the module documentation).
#[derive(Debug)]
struct NamesNode {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamesNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
