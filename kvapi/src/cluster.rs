//! The cluster file: where every node of a cluster listens.
//!
//! `kvnode` reads it to learn its peers and `kvctl` reads it to find the nodes, so both agree by
//! construction. It is TOML with one `[[node]]` table per node:
//!
//! ```toml
//! [[node]]
//! id = 0
//! http = "127.0.0.1:8080"   # client API
//! raft = "127.0.0.1:6000"   # peer traffic
//! ```
//!
//! Loading validates the whole file and reports the first problem with the file's name, so an
//! operator never has to guess why a node refused to start.
//!
//! # Security
//!
//! `https://` in front of every `http` address means the client port speaks TLS; in front of
//! every `raft` address, that the peer port speaks mutual TLS. The scheme is taken off when the
//! file is read (the addresses stay `host:port` everywhere else, and so does the cluster's
//! fingerprint, so a running cluster can move to TLS without a new data directory) and kept as
//! [`ClusterFile::client_tls`] and [`ClusterFile::peer_tls`]. Two optional tables say where
//! the certificates are; relative paths are relative to the cluster file's directory, and
//! `{id}` in a path of `[tls]` stands for the id of the node reading it:
//!
//! ```toml
//! [tls]                              # read by kvnode
//! cert = "node{id}.pem"              # the client port's certificate and key
//! key = "node{id}.key"
//! client_ca = "ca.pem"               # optional: require client certificates from this CA
//! peer_cert = "node{id}-peer.pem"    # the peer port: mutual TLS with this CA
//! peer_key = "node{id}-peer.key"
//! peer_ca = "ca.pem"
//!
//! [client]                           # read by kvctl
//! cacert = "ca.pem"                  # the CA that signed the nodes' client-port certificates
//! cert = "client.pem"                # optional: kvctl's own certificate (for client_ca)
//! key = "client.key"
//! token_file = "kvctl.token"         # optional: a file holding kvctl's bearer token
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// One node's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddr {
    /// Unique id of the node.
    pub id: NodeId,
    /// Client HTTP address, `host:port`.
    pub http: String,
    /// Peer (Raft) address, `host:port`.
    pub raft: String,
}

/// A validated cluster description: at least one node, unique ids, unique addresses, nodes
/// sorted by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The nodes, sorted by id; their addresses are `host:port`, without a scheme.
    pub node: Vec<NodeAddr>,
    /// Where the nodes' certificates are (`[tls]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NodeTls>,
    /// How kvctl reaches a secured cluster (`[client]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientSecurity>,
    /// The `http` addresses were written `https://...`: the client port speaks TLS.
    #[serde(skip)]
    pub client_tls: bool,
    /// The `raft` addresses were written `https://...`: the peer port speaks mutual TLS.
    #[serde(skip)]
    pub peer_tls: bool,
}

/// The `[tls]` table: the certificate files of the nodes. `{id}` in a path is replaced by the
/// id of the node that reads it ([`NodeTls::for_node`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTls {
    /// Certificate chain (PEM) of the client port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of the client port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// CA (PEM) whose client certificates the client port requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Certificate chain (PEM) of the peer port, also presented as the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_cert: Option<PathBuf>,
    /// Private key (PEM) of the peer port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_key: Option<PathBuf>,
    /// CA (PEM) that signed every node's peer certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_ca: Option<PathBuf>,
}

impl NodeTls {
    /// The paths as node `id` reads them: `{id}` replaced.
    pub fn for_node(&self, id: NodeId) -> NodeTls {
        let one = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| PathBuf::from(p.to_string_lossy().replace("{id}", &id.to_string())))
        };
        NodeTls {
            cert: one(&self.cert),
            key: one(&self.key),
            client_ca: one(&self.client_ca),
            peer_cert: one(&self.peer_cert),
            peer_key: one(&self.peer_key),
            peer_ca: one(&self.peer_ca),
        }
    }
}

/// The `[client]` table: what kvctl needs to reach a secured cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSecurity {
    /// CA (PEM) that signed the nodes' client-port certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// kvctl's own certificate (PEM), for nodes that require client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The key of `cert` (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// A file whose first line is kvctl's bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// Make every relative path in `paths` relative to `base` instead of the working directory.
fn anchor(base: &Path, paths: &mut [&mut Option<PathBuf>]) {
    for p in paths.iter_mut() {
        if let Some(path) = p.as_mut() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
}

/// Why a cluster file could not be used. Each variant says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    /// The file could not be read.
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("cluster file {path} is malformed: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The file parses but describes an impossible cluster.
    #[error("cluster file {path} is inconsistent: {message}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ClusterFile {
    /// Read and validate a cluster file.
    pub fn load(path: &Path) -> Result<Self, ClusterFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate cluster file text. `path` names the file in messages, and relative
    /// certificate paths are taken relative to its directory.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ClusterFileError> {
        let mut file: ClusterFile = toml::from_str(text).map_err(|e| ClusterFileError::Malformed {
            path: path.to_path_buf(),
            message: e.message().trim().to_string(),
        })?;
        file.node.sort_by_key(|n| n.id);
        let inconsistent = |message| ClusterFileError::Inconsistent {
            path: path.to_path_buf(),
            message,
        };
        file.client_tls = take_schemes(&mut file.node, |n| &mut n.http, "http").map_err(inconsistent)?;
        file.peer_tls = take_schemes(&mut file.node, |n| &mut n.raft, "raft").map_err(inconsistent)?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(t) = file.tls.as_mut() {
            anchor(
                base,
                &mut [
                    &mut t.cert,
                    &mut t.key,
                    &mut t.client_ca,
                    &mut t.peer_cert,
                    &mut t.peer_key,
                    &mut t.peer_ca,
                ],
            );
        }
        if let Some(c) = file.client.as_mut() {
            anchor(
                base,
                &mut [&mut c.cacert, &mut c.cert, &mut c.key, &mut c.token_file],
            );
        }
        file.validate().map_err(inconsistent)?;
        Ok(file)
    }

    /// Build a cluster description from nodes, validating it.
    pub fn from_nodes(mut nodes: Vec<NodeAddr>) -> Result<Self, String> {
        nodes.sort_by_key(|n| n.id);
        let file = ClusterFile {
            node: nodes,
            tls: None,
            client: None,
            client_tls: false,
            peer_tls: false,
        };
        file.validate()?;
        Ok(file)
    }

    /// Render as TOML in the documented layout (paths as they are held: absolute after
    /// [`ClusterFile::load`]).
    pub fn to_toml(&self) -> String {
        let scheme = |tls: bool| if tls { "https://" } else { "" };
        let mut out = String::new();
        for n in &self.node {
            out.push_str(&format!(
                "[[node]]\nid = {}\nhttp = \"{}{}\"\nraft = \"{}{}\"\n\n",
                n.id,
                scheme(self.client_tls),
                n.http,
                scheme(self.peer_tls),
                n.raft
            ));
        }
        // Plain tables of optional strings: rendering them cannot fail.
        if let Some(tls) = &self.tls {
            out.push_str(&format!("[tls]\n{}\n", toml::to_string(tls).unwrap_or_default()));
        }
        if let Some(client) = &self.client {
            out.push_str(&format!(
                "[client]\n{}\n",
                toml::to_string(client).unwrap_or_default()
            ));
        }
        out
    }

    /// The node with this id.
    pub fn get(&self, id: NodeId) -> Option<&NodeAddr> {
        self.node.iter().find(|n| n.id == id)
    }

    fn validate(&self) -> Result<(), String> {
        if self.node.is_empty() {
            return Err("it lists no [[node]] tables".into());
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for n in &self.node {
            if !ids.insert(n.id) {
                return Err(format!("node id {} appears twice", n.id));
            }
            for (what, addr) in [("http", &n.http), ("raft", &n.raft)] {
                check_host_port(addr).map_err(|e| format!("node {}: {what} address {addr:?} {e}", n.id))?;
                if !addrs.insert(addr.as_str()) {
                    return Err(format!("address {addr} is used twice"));
                }
            }
        }
        Ok(())
    }
}

/// Take `https://` (or `http://`) off one address of every node; true when they said https.
/// Every node must say the same: a cluster whose port speaks TLS on some nodes only is a
/// mistake.
fn take_schemes(
    nodes: &mut [NodeAddr],
    field: impl Fn(&mut NodeAddr) -> &mut String,
    what: &str,
) -> Result<bool, String> {
    let mut seen = HashSet::new();
    for n in nodes.iter_mut() {
        let id = n.id;
        let addr = field(n);
        let tls = if let Some(rest) = addr.strip_prefix("https://") {
            *addr = rest.to_string();
            true
        } else {
            if let Some(rest) = addr.strip_prefix("http://") {
                *addr = rest.to_string();
            }
            false
        };
        if addr.contains("://") {
            return Err(format!(
                "node {id}: {what} address {addr:?} has a scheme other than http:// or https://"
            ));
        }
        *addr = addr.trim_end_matches('/').to_string();
        seen.insert(tls);
    }
    if seen.len() > 1 {
        return Err(format!(
            "some {what} addresses say https:// and some do not: TLS is all or nothing"
        ));
    }
    Ok(seen.contains(&true))
}

/// Check that `addr` looks like `host:port` with a non-zero port.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| "is not of the form host:port".to_string())?;
    if host.is_empty() {
        return Err("has no host".into());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("has no valid port (1-65535)".into()),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterFile, ClusterFileError> {
        ClusterFile::parse(text, Path::new("c.toml"))
    }

    #[test]
    fn parses_and_sorts_nodes() {
        let f = parse(
            "[[node]]\nid = 1\nhttp = \"127.0.0.1:8081\"\nraft = \"127.0.0.1:6001\"\n\
             [[node]]\nid = 0\nhttp = \"127.0.0.1:8080\"\nraft = \"127.0.0.1:6000\"\n",
        )
        .expect("valid file");
        assert_eq!(f.node[0].id, 0);
        assert_eq!(f.get(1).map(|n| n.http.as_str()), Some("127.0.0.1:8081"));
        assert_eq!(parse(&f.to_toml()).expect("round trip"), f);
    }

    #[test]
    fn rejects_duplicates_bad_addresses_and_garbage() {
        let dup = "[[node]]\nid = 0\nhttp = \"h:1\"\nraft = \"h:2\"\n\
                   [[node]]\nid = 0\nhttp = \"h:3\"\nraft = \"h:4\"\n";
        let err = parse(dup).expect_err("duplicate id").to_string();
        assert!(err.contains("node id 0 appears twice"), "{err}");

        let same_addr = "[[node]]\nid = 0\nhttp = \"h:1\"\nraft = \"h:1\"\n";
        assert!(parse(same_addr)
            .expect_err("same")
            .to_string()
            .contains("used twice"));

        let bad_port = "[[node]]\nid = 0\nhttp = \"h:99999\"\nraft = \"h:1\"\n";
        assert!(parse(bad_port)
            .expect_err("port")
            .to_string()
            .contains("valid port"));

        assert!(matches!(
            parse("node = 3"),
            Err(ClusterFileError::Malformed { .. })
        ));
        assert!(matches!(parse(""), Err(ClusterFileError::Malformed { .. })));
        let unknown = "[[node]]\nid = 0\nhttp = \"h:1\"\nraft = \"h:2\"\nport = 3\n";
        assert!(matches!(parse(unknown), Err(ClusterFileError::Malformed { .. })));
    }

    #[test]
    fn https_addresses_and_certificate_paths() {
        let text = "[[node]]\nid = 0\nhttp = \"https://h:1\"\nraft = \"https://h:2\"\n\
                    [[node]]\nid = 1\nhttp = \"https://h:3\"\nraft = \"https://h:4\"\n\
                    [tls]\ncert = \"node{id}.pem\"\npeer_ca = \"/etc/kv/ca.pem\"\n\
                    [client]\ncacert = \"ca.pem\"\ntoken_file = \"t\"\n";
        let f = ClusterFile::parse(text, Path::new("/srv/kv/cluster.toml")).expect("valid");
        assert!(f.client_tls && f.peer_tls);
        assert_eq!(f.node[1].http, "h:3", "addresses lose their scheme");
        let tls = f.tls.as_ref().expect("[tls]").for_node(1);
        assert_eq!(tls.cert, Some(PathBuf::from("/srv/kv/node1.pem")));
        assert_eq!(tls.peer_ca, Some(PathBuf::from("/etc/kv/ca.pem")));
        let client = f.client.as_ref().expect("[client]");
        assert_eq!(client.token_file, Some(PathBuf::from("/srv/kv/t")));
        let again = ClusterFile::parse(&f.to_toml(), Path::new("/x/c.toml")).expect("round trip");
        assert_eq!(again, f);

        let mixed = "[[node]]\nid = 0\nhttp = \"https://h:1\"\nraft = \"h:2\"\n\
                     [[node]]\nid = 1\nhttp = \"h:3\"\nraft = \"h:4\"\n";
        let err = parse(mixed).expect_err("mixed").to_string();
        assert!(err.contains("all or nothing"), "{err}");
        let plain = parse("[[node]]\nid = 0\nhttp = \"h:1\"\nraft = \"h:2\"\n").expect("plain");
        assert!(!plain.client_tls && !plain.peer_tls && plain.tls.is_none());
        let typo = "[[node]]\nid = 0\nhttp = \"h:1\"\nraft = \"h:2\"\n[tls]\ncertfile = \"x\"\n";
        assert!(matches!(parse(typo), Err(ClusterFileError::Malformed { .. })));
    }
}
