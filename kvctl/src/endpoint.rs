//! Where the nodes are, and how requests address them.
//!
//! An [`Endpoint`] is one node's client HTTP address, optionally with the node id the cluster
//! file gives it. Endpoints come from a cluster file (ids known) or from `--endpoints` (ids
//! learned later from the nodes' status). An `https://` endpoint means the cluster speaks TLS
//! (see [`crate::security`]); the scheme is the cluster's, so endpoints that mix `http://` and
//! `https://` are refused up front instead of failing obscurely on some node.
//!
//! Keys travel in the URL path. Every byte outside the RFC 3986 unreserved set is
//! percent-encoded, `/` included, so a key such as `a/b?c` reaches the server unchanged.

use kvapi::{ClusterFile, NodeId};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but the unreserved characters `A-Z a-z 0-9 - . _ ~`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One node's client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The node's id, when the cluster file says it.
    pub id: Option<NodeId>,
    /// `host:port`, as shown to the operator.
    pub address: String,
}

/// Why an endpoint string cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint {input:?}: {reason}")]
pub struct EndpointError {
    /// What the user wrote.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The local cluster that `bin/cluster.sh` and `bin/create_server*.sh` start (the nodes of
/// `bin/cluster.toml`): what kvctl talks to when no cluster file is given or found, as etcdctl
/// talks to `127.0.0.1:2379`.
pub const LOCAL_DEFAULT: [(NodeId, &str); 3] = [
    (0, "127.0.0.1:8080"),
    (1, "127.0.0.1:8081"),
    (2, "127.0.0.1:8082"),
];

impl Endpoint {
    /// The nodes of [`LOCAL_DEFAULT`].
    pub fn local_default() -> Vec<Endpoint> {
        LOCAL_DEFAULT
            .iter()
            .map(|(id, address)| Endpoint {
                id: Some(*id),
                address: address.to_string(),
            })
            .collect()
    }

    /// All nodes of a cluster file, in id order.
    pub fn from_cluster_file(file: &ClusterFile) -> Vec<Endpoint> {
        file.node
            .iter()
            .map(|n| Endpoint {
                id: Some(n.id),
                address: n.http.clone(),
            })
            .collect()
    }

    /// Parse `host:port`, `http://host:port[/]` or `https://host:port[/]`.
    pub fn parse(input: &str) -> Result<Endpoint, EndpointError> {
        Self::parse_with_scheme(input).map(|(e, _)| e)
    }

    /// [`Endpoint::parse`], also saying whether the endpoint said `https://`.
    pub fn parse_with_scheme(input: &str) -> Result<(Endpoint, bool), EndpointError> {
        let fail = |reason: &str| EndpointError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = input.trim();
        let (rest, https) = if let Some(rest) = trimmed.strip_prefix("http://") {
            (rest, false)
        } else if let Some(rest) = trimmed.strip_prefix("https://") {
            (rest, true)
        } else if trimmed.contains("://") {
            return Err(fail("only http:// and https:// URLs are supported"));
        } else {
            (trimmed, false)
        };
        let address = rest.trim_end_matches('/');
        if address.contains('/') {
            return Err(fail("give only the scheme, host and port, without a path"));
        }
        kvapi::cluster::check_host_port(address).map_err(|e| fail(&e))?;
        Ok((
            Endpoint {
                id: None,
                address: address.to_string(),
            },
            https,
        ))
    }

    /// Parse a comma-separated list, ignoring empty items; at least one endpoint is required.
    pub fn parse_list(input: &str) -> Result<Vec<Endpoint>, EndpointError> {
        Self::parse_list_with_scheme(input).map(|(list, _)| list)
    }

    /// [`Endpoint::parse_list`], also saying whether the endpoints said `https://` (all of
    /// them, or none).
    pub fn parse_list_with_scheme(input: &str) -> Result<(Vec<Endpoint>, bool), EndpointError> {
        let parsed = input
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Endpoint::parse_with_scheme)
            .collect::<Result<Vec<_>, _>>()?;
        let fail = |reason: &str| EndpointError {
            input: input.to_string(),
            reason: reason.into(),
        };
        if parsed.is_empty() {
            return Err(fail("no endpoints given"));
        }
        let https = parsed[0].1;
        if parsed.iter().any(|(_, h)| *h != https) {
            return Err(fail(
                "some endpoints say https:// and some do not; a cluster speaks TLS on every node or on none",
            ));
        }
        Ok((parsed.into_iter().map(|(e, _)| e).collect(), https))
    }

    /// The base URL, `http://host:port`.
    pub fn base_url(&self) -> String {
        base_url(&self.address)
    }
}

/// `http://host:port` for a `host:port` address.
pub fn base_url(address: &str) -> String {
    format!("http://{address}")
}

/// The URL path for one key: `/keys/` followed by the percent-encoded key.
pub fn key_path(key: &str) -> String {
    format!("/keys/{}", encode_component(key))
}

/// Percent-encode everything but the unreserved characters.
pub fn encode_component(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bare_and_http_endpoints() {
        let e = Endpoint::parse("127.0.0.1:8080").expect("bare");
        assert_eq!(e.address, "127.0.0.1:8080");
        assert_eq!(e.base_url(), "http://127.0.0.1:8080");
        let e = Endpoint::parse(" http://localhost:9/ ").expect("url");
        assert_eq!(e.address, "localhost:9");
        assert_eq!(e.id, None);
    }

    #[test]
    fn refuses_endpoints_that_cannot_work() {
        for bad in ["ftp://h:1", "h", "h:0", "h:70000", "http://h:1/keys"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(Endpoint::parse_list(" , ").is_err());
        let (list, https) = Endpoint::parse_list_with_scheme("https://a:1,https://b:2/").expect("tls");
        assert!(https);
        assert_eq!(list[1].address, "b:2");
        let err = Endpoint::parse_list("https://a:1,b:2").expect_err("mixed");
        assert!(err.to_string().contains("every node or on none"), "{err}");
        let list = Endpoint::parse_list("a:1,,http://b:2").expect("list");
        assert_eq!(list.len(), 2);
    }

    /// The fallback is the cluster the repository's scripts start, not a copy that drifted.
    #[test]
    fn the_local_default_is_bin_cluster_toml() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bin/cluster.toml");
        let file = ClusterFile::load(&path).expect("bin/cluster.toml");
        assert_eq!(Endpoint::from_cluster_file(&file), Endpoint::local_default());
    }

    #[test]
    fn keys_are_percent_encoded_except_unreserved() {
        assert_eq!(key_path("plain-key_1.~"), "/keys/plain-key_1.~");
        assert_eq!(key_path("a/b c?d#e%"), "/keys/a%2Fb%20c%3Fd%23e%25");
        assert_eq!(key_path("é"), "/keys/%C3%A9");
    }
}
