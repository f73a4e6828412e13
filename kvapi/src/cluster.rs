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
    /// The nodes, sorted by id.
    pub node: Vec<NodeAddr>,
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

    /// Parse and validate cluster file text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ClusterFileError> {
        let mut file: ClusterFile = toml::from_str(text).map_err(|e| ClusterFileError::Malformed {
            path: path.to_path_buf(),
            message: e.message().trim().to_string(),
        })?;
        file.node.sort_by_key(|n| n.id);
        file.validate()
            .map_err(|message| ClusterFileError::Inconsistent {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(file)
    }

    /// Build a cluster description from nodes, validating it.
    pub fn from_nodes(mut nodes: Vec<NodeAddr>) -> Result<Self, String> {
        nodes.sort_by_key(|n| n.id);
        let file = ClusterFile { node: nodes };
        file.validate()?;
        Ok(file)
    }

    /// Render as TOML in the documented layout.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for n in &self.node {
            out.push_str(&format!(
                "[[node]]\nid = {}\nhttp = \"{}\"\nraft = \"{}\"\n\n",
                n.id, n.http, n.raft
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
}
