//! `kvnode certs`: a development CA and every certificate a TLS cluster needs, with the right
//! names, so that TLS is one command away (`bin/cluster.sh start --tls`).
//!
//! For a cluster file it writes into one directory:
//!
//! | file | what | names |
//! |---|---|---|
//! | `ca.pem`, `ca.key` | the CA that signs everything below | |
//! | `node<ID>.pem`, `.key` | node ID's client-port certificate | the host of its `http` address |
//! | `node<ID>-peer.pem`, `.key` | node ID's peer certificate (server and client) | `node-<ID>.kv` and the host of its `raft` address |
//! | `client.pem`, `.key` | a client certificate for kvctl (for `--client-ca-file`) | `kvctl` |
//! | `cluster.toml` | the cluster file with `https://` addresses, `[tls]` and `[client]` | |
//!
//! A loopback host (`127.0.0.1`, `localhost`, `::1`) gets all three loopback names, so that
//! `curl --cacert DIR/ca.pem https://localhost:8080/keys/a` works for a node whose file says
//! `127.0.0.1:8080`. Keys are written readable by their owner only. An existing CA is never
//! overwritten (its certificates may be in use); remove the directory to start over. A node
//! added later (`kvnode --join`) gets its certificates from the same CA with `kvnode certs
//! --out DIR --add-node ID --http HOST:PORT --raft HOST:PORT` ([`add_node`]).
//!
//! This is a development CA: its key sits beside the certificates. A production cluster uses
//! certificates from its own CA with the same names.

use std::io::Write;
use std::path::{Path, PathBuf};

use kvapi::{ClientSecurity, ClusterFile, NodeAddr, NodeTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::tls::node_name;

/// Why certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The output directory already holds a CA.
    #[error("{} already exists: certificates signed by it may be in use; remove the directory (or pick another --out) to make a new CA", .0.display())]
    Exists(PathBuf),
    /// `--add-node` found no CA to sign with.
    #[error("{} holds no CA (ca.pem and ca.key): run `kvnode certs --cluster FILE --out DIR` first", .0.display())]
    NoCa(PathBuf),
    /// Writing a file failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// rcgen refused (a host name that is not a valid DNS name, say).
    #[error("cannot make the certificate for {what}: {source}")]
    Generate {
        /// Which certificate.
        what: String,
        /// The cause.
        source: rcgen::Error,
    },
}

/// What `kvnode certs` wrote.
#[derive(Debug)]
pub struct Written {
    /// Every file, in the order written.
    pub files: Vec<PathBuf>,
    /// The cluster file that uses them.
    pub cluster_file: PathBuf,
}

/// How long the certificates are valid.
const VALID_DAYS: i64 = 3650;

fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// The subject names for a certificate of a node listening on `addr`.
fn names_for(addr: &str, extra: Option<String>) -> Vec<String> {
    let host = host_of(addr).to_string();
    let mut names: Vec<String> = extra.into_iter().collect();
    if is_loopback(&host) {
        names.extend(["localhost".to_string(), "127.0.0.1".into(), "::1".into()]);
    }
    if !names.contains(&host) && host != "0.0.0.0" && host != "::" {
        names.push(host);
    }
    names
}

fn params(
    names: Vec<String>,
    common_name: &str,
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(names)?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.extended_key_usages = usages.to_vec();
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut p);
    Ok(p)
}

/// Valid from a day ago (clocks a little behind) for [`VALID_DAYS`].
fn validity(p: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(VALID_DAYS);
}

fn generate(
    what: &str,
    f: impl FnOnce() -> Result<(String, String), rcgen::Error>,
) -> Result<(String, String), CertsError> {
    f().map_err(|source| CertsError::Generate {
        what: what.to_string(),
        source,
    })
}

/// Write `text` to `path`; `secret`: readable by the owner only.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), CertsError> {
    let fail = |source| CertsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)
}

/// Write a CA and the certificates of every node of `cluster` into `out` (see the module
/// documentation).
pub fn write_all(cluster: &ClusterFile, out: &Path) -> Result<Written, CertsError> {
    let ca_path = out.join("ca.pem");
    if ca_path.exists() {
        return Err(CertsError::Exists(ca_path));
    }
    std::fs::create_dir_all(out).map_err(|source| CertsError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    let mut put = |name: String, text: &str, secret: bool| -> Result<(), CertsError> {
        let path = out.join(name);
        write_file(&path, text, secret)?;
        written.push(path);
        Ok(())
    };

    let ca_key = KeyPair::generate().map_err(|source| CertsError::Generate {
        what: "the CA".into(),
        source,
    })?;
    let ca_params = ca_params();
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| CertsError::Generate {
            what: "the CA".into(),
            source,
        })?;
    let issuer = Issuer::new(ca_params, ca_key);
    for node in &cluster.node {
        node_certs(node, &issuer, &mut put)?;
    }
    let (cert, key) = generate("kvctl", || {
        sign(
            &issuer,
            params(
                vec!["kvctl".into()],
                "kvctl",
                &[ExtendedKeyUsagePurpose::ClientAuth],
            )?,
        )
    })?;
    put("client.pem".into(), &cert, false)?;
    put("client.key".into(), &key, true)?;
    // The CA goes last: its presence says that the directory is complete.
    put("ca.key".into(), &ca_key_pem(&issuer), true)?;
    put("ca.pem".into(), &ca_cert.pem(), false)?;

    let mut secured = cluster.clone();
    secured.client_tls = true;
    secured.peer_tls = true;
    secured.tls = Some(NodeTls {
        cert: Some("node{id}.pem".into()),
        key: Some("node{id}.key".into()),
        client_ca: None,
        peer_cert: Some("node{id}-peer.pem".into()),
        peer_key: Some("node{id}-peer.key".into()),
        peer_ca: Some("ca.pem".into()),
    });
    secured.client = Some(ClientSecurity {
        cacert: Some("ca.pem".into()),
        cert: None,
        key: None,
        token_file: cluster.client.as_ref().and_then(|c| c.token_file.clone()),
    });
    let cluster_file = out.join("cluster.toml");
    let header = "# Written by `kvnode certs`: the cluster over TLS. Paths are relative to this file.\n\n";
    put(
        "cluster.toml".into(),
        &format!("{header}{}", secured.to_toml()),
        false,
    )?;
    Ok(Written {
        files: written,
        cluster_file,
    })
}

fn ca_key_pem(issuer: &Issuer<'_, KeyPair>) -> String {
    issuer.key().serialize_pem()
}

/// The development CA's parameters. They are the same every time, so the CA of a directory
/// can sign again from its key alone (see [`add_node`]).
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "kvnode development CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p);
    p
}

fn sign(issuer: &Issuer<'_, KeyPair>, params: CertificateParams) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Node `node`'s client-port and peer certificates, signed by `issuer`, handed to `put`.
fn node_certs(
    node: &NodeAddr,
    issuer: &Issuer<'_, KeyPair>,
    put: &mut impl FnMut(String, &str, bool) -> Result<(), CertsError>,
) -> Result<(), CertsError> {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let id = node.id;
    let (cert, key) = generate(&format!("node {id}'s client port"), || {
        sign(
            issuer,
            params(
                names_for(&node.http, None),
                &format!("kvnode {id}"),
                &[ServerAuth],
            )?,
        )
    })?;
    put(format!("node{id}.pem"), &cert, false)?;
    put(format!("node{id}.key"), &key, true)?;
    let (cert, key) = generate(&format!("node {id}'s peer port"), || {
        sign(
            issuer,
            params(
                names_for(&node.raft, Some(node_name(id))),
                &node_name(id),
                &[ServerAuth, ClientAuth],
            )?,
        )
    })?;
    put(format!("node{id}-peer.pem"), &cert, false)?;
    put(format!("node{id}-peer.key"), &key, true)
}

/// Certificates for one more node (one that will `--join`), signed by the development CA
/// that `kvnode certs` wrote into `out` before: its four files, named as for the others.
pub fn add_node(out: &Path, node: &NodeAddr) -> Result<Vec<PathBuf>, CertsError> {
    let key_path = out.join("ca.key");
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| CertsError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    if !out.join("ca.pem").exists() {
        return Err(CertsError::NoCa(out.to_path_buf()));
    }
    let existing = out.join(format!("node{}-peer.pem", node.id));
    if existing.exists() {
        return Err(CertsError::Exists(existing));
    }
    let ca_key = KeyPair::from_pem(&read(&key_path)?).map_err(|source| CertsError::Generate {
        what: format!("the CA (its key {} does not load)", key_path.display()),
        source,
    })?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut written = Vec::new();
    node_certs(node, &issuer, &mut |name: String, text: &str, secret: bool| {
        let path = out.join(name);
        write_file(&path, text, secret)?;
        written.push(path);
        Ok(())
    })?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{load_certs, node_named_by};

    #[test]
    fn certificates_name_their_nodes_and_hosts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = ClusterFile::parse(
            "[[node]]\nid = 0\nhttp = \"127.0.0.1:8080\"\nraft = \"127.0.0.1:6000\"\n\
             [[node]]\nid = 7\nhttp = \"db.example:8081\"\nraft = \"10.0.0.7:6001\"\n",
            Path::new("c.toml"),
        )
        .expect("cluster");
        let written = write_all(&cluster, dir.path()).expect("written");
        assert!(written.files.iter().any(|f| f.ends_with("ca.pem")));
        let peer = load_certs(&dir.path().join("node7-peer.pem"), "peer").expect("pem");
        assert_eq!(node_named_by(&peer[0]), Some(7));
        let client_port = load_certs(&dir.path().join("node0.pem"), "cert").expect("pem");
        assert_eq!(
            node_named_by(&client_port[0]),
            None,
            "a client-port certificate names no node"
        );
        let text = std::fs::read_to_string(&written.cluster_file).expect("cluster file");
        let again = ClusterFile::parse(&text, &written.cluster_file).expect("valid cluster file");
        assert!(again.client_tls && again.peer_tls);
        let tls = again.tls.expect("[tls]").for_node(7);
        assert_eq!(tls.peer_cert, Some(dir.path().join("node7-peer.pem")));
        assert!(matches!(
            write_all(&cluster, dir.path()),
            Err(CertsError::Exists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("node0.key"))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "keys are private");
        }
    }

    #[test]
    fn a_node_added_later_is_signed_by_the_same_ca() {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = NodeAddr {
            id: 9,
            http: "127.0.0.1:8089".into(),
            raft: "127.0.0.1:6009".into(),
        };
        assert!(matches!(add_node(dir.path(), &node), Err(CertsError::NoCa(_))));
        let cluster = ClusterFile::parse(
            "[[node]]\nid = 0\nhttp = \"127.0.0.1:8080\"\nraft = \"127.0.0.1:6000\"\n",
            Path::new("c.toml"),
        )
        .expect("cluster");
        write_all(&cluster, dir.path()).expect("written");
        let files = add_node(dir.path(), &node).expect("added");
        assert_eq!(files.len(), 4, "{files:?}");
        let peer = load_certs(&dir.path().join("node9-peer.pem"), "peer").expect("pem");
        assert_eq!(node_named_by(&peer[0]), Some(9));
        // The CA of the directory vouches for it, as it does for the nodes written first.
        crate::tls::install_default_provider();
        let roots = crate::tls::load_roots(&dir.path().join("ca.pem"), "ca").expect("roots");
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crate::tls::provider())
                .build()
                .expect("verifier");
        let now = rustls_pki_types::UnixTime::now();
        for id in [0, 9] {
            let cert = load_certs(&dir.path().join(format!("node{id}-peer.pem")), "peer").expect("pem");
            verifier
                .verify_client_cert(&cert[0], &[], now)
                .unwrap_or_else(|e| panic!("node {id}'s certificate: {e}"));
        }
        assert!(matches!(add_node(dir.path(), &node), Err(CertsError::Exists(_))));
    }

    #[test]
    fn loopback_hosts_get_every_loopback_name() {
        assert_eq!(
            names_for("127.0.0.1:8080", None),
            ["localhost", "127.0.0.1", "::1"]
        );
        assert_eq!(names_for("[::1]:8080", Some("node-1.kv".into()))[0], "node-1.kv");
        assert_eq!(names_for("db.example:1", None), ["db.example"]);
    }
}
