//! Issue 12 with real processes and real certificates: TLS on both ports and the refusals at
//! the handshake, the check of which node a peer certificate names, tokens with roles and
//! their reload on SIGHUP, slow clients, the overload cap, listen addresses apart from the
//! advertised ones, and junk thrown at every endpoint changing nothing.
//!
//! Raw exchanges go over `std::net::TcpStream` (with rustls on top where TLS is wanted), so a
//! test can send what no HTTP client would: a forged length, half a header, a body that never
//! ends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use testkit::{free_ports, kvnode_bin, poll, ChildGuard, Cluster, Secure};

use kvnode::types::{NodeId, TypeConfig, Vote};
use kvnode::wire::{self, route, CLUSTER_HEADER, TARGET_HEADER};

/// A certificate and its key, in DER.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn load_identity(cert: &Path, key: &Path) -> Identity {
    Identity {
        chain: CertificateDer::pem_file_iter(cert)
            .expect("read cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert"),
        key: PrivateKeyDer::from_pem_file(key).expect("key"),
    }
}

/// A CA of nobody's, and a certificate it signed with `names`.
fn rogue_identity(names: &[&str]) -> (CertificateDer<'static>, Identity) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut leaf = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    (
        ca_cert.der().clone(),
        Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).expect("der key"),
        },
    )
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("cert")).expect("root");
    }
    roots
}

fn client_config(roots: rustls::RootCertStore, identity: Option<Identity>) -> Arc<rustls::ClientConfig> {
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    Arc::new(match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key).expect("identity"),
        None => builder.with_no_client_auth(),
    })
}

/// A connection that speaks plain TCP or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn open(addr: &str, tls: Option<(Arc<rustls::ClientConfig>, &str)>) -> Conn {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        tcp.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        match tls {
            None => Conn::Plain(tcp),
            Some((config, name)) => {
                let name = ServerName::try_from(name.to_string()).expect("name");
                let conn = rustls::ClientConnection::new(config, name).expect("client");
                Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        }
    }

    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.as_mut(),
        }
    }

    /// Send `bytes` and read what comes back until the peer closes or goes quiet. Errors
    /// (a refused handshake, a reset) end the reading; what was read so far is returned.
    fn exchange(&mut self, bytes: &[u8]) -> String {
        let s = self.stream();
        if s.write_all(bytes).and_then(|_| s.flush()).is_err() {
            return String::new();
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            // One answer is enough: the connection may stay open.
            if let Some(end) = find(&out, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if out.len() >= end + 4 + len {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status code of a raw answer, if there was an HTTP answer at all.
fn status_of(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn request(method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn peer_addr(c: &Cluster, id: NodeId) -> String {
    c.description().get(id).expect("node").raft.clone()
}

fn certs(c: &Cluster) -> PathBuf {
    c.certs_dir().expect("a TLS cluster")
}

/// What must not change: each node's term and applied index, and every key's value.
fn state(c: &Cluster, keys: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for id in c.ids() {
        let s = c.status(id).expect("status");
        out.push(format!("node {id}: term {} applied {:?}", s.term, s.last_applied));
    }
    for k in keys {
        out.push(format!("{k} = {:?}", c.get(0, k)));
    }
    out
}

#[test]
fn tls_on_both_ports_and_refusals_at_the_handshake() {
    let c = Cluster::start_secure(
        3,
        &[],
        Secure {
            tls: true,
            ..Secure::default()
        },
    );
    // Every node serves HTTPS and forwards over mutual TLS; replication runs over the TLS
    // stream (the follower's read sees the write).
    let leader = c.leader_id().expect("leader");
    let follower = c.ids().into_iter().find(|i| *i != leader).expect("follower");
    assert_eq!(c.put(follower, "a", json!(["cat"])).expect("answer").status, 200);
    assert_eq!(
        c.append(leader, "a", json!("dog"), None).expect("answer").status,
        200
    );
    for id in c.ids() {
        assert_eq!(c.get(id, "a"), Some(Some(json!(["cat", "dog"]))), "node {id}");
    }

    let dir = certs(&c);
    let ca = dir.join("ca.pem");
    let http = c.http_addr(0);
    // Plain HTTP to an HTTPS port gets no answer.
    let plain = Conn::open(&http, None).exchange(&request("GET", "/keys/a", &[], b""));
    assert_eq!(status_of(&plain), None, "{plain}");
    // A client that trusts another CA refuses the node.
    let (rogue_ca, _) = rogue_identity(&["localhost"]);
    let mut other = rustls::RootCertStore::empty();
    other.add(rogue_ca).expect("root");
    let refused = Conn::open(&http, Some((client_config(other, None), "localhost"))).exchange(&request(
        "GET",
        "/keys/a",
        &[],
        b"",
    ));
    assert_eq!(status_of(&refused), None);
    // And curl's view: the CA from kvnode certs, the name localhost.
    let ok = Conn::open(&http, Some((client_config(roots(&ca), None), "localhost"))).exchange(&request(
        "GET",
        "/keys/a",
        &[],
        b"",
    ));
    assert_eq!(status_of(&ok), Some(200), "{ok}");

    // The peer port: every credential but a node's own certificate is refused.
    let peer = peer_addr(&c, 0);
    let probe = |conn: Conn| {
        let mut conn = conn;
        let headers = [
            (TARGET_HEADER, "0".to_string()),
            (CLUSTER_HEADER, cluster_id(&c.data_dir(0))),
        ];
        conn.exchange(&request("POST", route::PROBE, &headers, &wire::encode(&())))
    };
    let tls = |identity| Some((client_config(roots(&ca), identity), "node-0.kv"));
    let cases: Vec<(&str, Conn)> = vec![
        ("plain TCP", Conn::open(&peer, None)),
        ("TLS without a client certificate", Conn::open(&peer, tls(None))),
        (
            "the CA's client certificate, which names no node",
            Conn::open(
                &peer,
                tls(Some(load_identity(
                    &dir.join("client.pem"),
                    &dir.join("client.key"),
                ))),
            ),
        ),
        (
            "a certificate of another CA naming node 1",
            Conn::open(&peer, tls(Some(rogue_identity(&["node-1.kv"]).1))),
        ),
    ];
    for (what, conn) in cases {
        let answer = probe(conn);
        assert_eq!(status_of(&answer), None, "{what} must be refused: {answer}");
    }
    let node1 = load_identity(&dir.join("node1-peer.pem"), &dir.join("node1-peer.key"));
    let answer = probe(Conn::open(&peer, tls(Some(node1))));
    assert_eq!(
        status_of(&answer),
        Some(200),
        "a node's own certificate is let in: {answer}"
    );
}

/// The id of the cluster whose node keeps its data in `data_dir` (sent in every peer request's
/// cluster header), once the node has joined it.
fn cluster_id(data_dir: &Path) -> String {
    poll(
        Duration::from_secs(30),
        "the node to record its cluster id",
        || {
            let text = std::fs::read(data_dir.join("node.json")).ok()?;
            let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
            (json["joined"] == true).then(|| json["cluster"].as_str().map(str::to_string))?
        },
    )
}

fn files_of(c: &Cluster, id: NodeId) -> kvnode::tls::PeerFiles {
    let dir = certs(c);
    kvnode::tls::PeerFiles {
        cert: dir.join(format!("node{id}-peer.pem")),
        key: dir.join(format!("node{id}-peer.key")),
        ca: dir.join("ca.pem"),
    }
}

#[test]
fn a_peer_must_present_a_certificate_naming_the_node_it_is() {
    use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
    let c = Cluster::start_secure(
        3,
        &[],
        Secure {
            tls: true,
            ..Secure::default()
        },
    );
    let fingerprint = cluster_id(&c.data_dir(0));
    let tls = Arc::new(kvnode::tls::PeerTls::load(&files_of(&c, 0)).expect("node 0's files"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let node1 = peer_addr(&c, 1);
    runtime.block_on(async {
        let peers = kvnode::peer_client::PeerClient::new(Some(fingerprint.clone()), Some(tls.clone()))
            .expect("client");
        let probe = |target: NodeId| {
            let peers = peers.clone();
            let node1 = node1.clone();
            async move {
                peers
                    .post::<_, wire::ProbeReply>(&node1, target, route::PROBE, &(), Duration::from_secs(2))
                    .await
            }
        };
        // Node 1 at node 1's address: accepted.
        assert_eq!(probe(1).await.expect("node 1 answers").node_id, 1);
        // Node 1's address taken for node 2's (a stale address, a node holding the wrong
        // certificate): refused before anything is sent.
        let err = probe(2).await.expect_err("node 1 is not node 2").to_string();
        assert!(err.to_lowercase().contains("valid for"), "{err}");

        // The replication stream checks the same.
        let info = |raft: &str| kvnode::types::NodeInfo {
            raft: raft.to_string(),
            ..Default::default()
        };
        let mut network = kvnode::peer_client::PeerNetwork::new(peers.clone());
        let option = RPCOption::new(Duration::from_secs(2));
        let mut wrong = network.new_client(2, &info(&node1)).await;
        let refused = wrong
            .stream_append(futures_util::stream::empty(), option.clone())
            .await;
        let err = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.to_lowercase().contains("valid for"), "{err}");
        let mut right = network.new_client(1, &info(&node1)).await;
        assert!(right
            .stream_append(futures_util::stream::empty(), option)
            .await
            .is_ok());
    });

    // The other way: a peer whose certificate names node 1 cannot speak for node 2.
    let before = c.status(0).expect("status").term;
    let dir = certs(&c);
    let config = client_config(
        roots(&dir.join("ca.pem")),
        Some(load_identity(
            &dir.join("node1-peer.pem"),
            &dir.join("node1-peer.key"),
        )),
    );
    let vote = openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(before + 1_000_000, 2), None);
    let headers = [
        (TARGET_HEADER, "0".to_string()),
        (CLUSTER_HEADER, fingerprint),
        ("content-type", "application/msgpack".to_string()),
    ];
    for path in [route::VOTE, route::PRE_VOTE] {
        let answer = Conn::open(&peer_addr(&c, 0), Some((config.clone(), "node-0.kv"))).exchange(&request(
            "POST",
            path,
            &headers,
            &wire::encode(&vote),
        ));
        assert_eq!(status_of(&answer), Some(403), "{path}: {answer}");
        assert!(answer.contains("names node 1"), "{answer}");
    }
    let (append, _) = wire::encode_append(
        &openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(before + 1_000_000, 2),
            prev_log_id: None,
            leader_commit: None,
            entries: Vec::new(),
        },
        1 << 20,
    );
    let answer = Conn::open(&peer_addr(&c, 0), Some((config, "node-0.kv"))).exchange(&request(
        "POST",
        route::APPEND,
        &headers,
        &append,
    ));
    assert_eq!(status_of(&answer), Some(403), "{answer}");
    assert_eq!(c.status(0).expect("status").term, before, "the term did not move");
}

fn write_auth(path: &Path, tokens: &[(&str, &str, &str)]) {
    let text: String = tokens
        .iter()
        .map(|(name, role, token)| {
            format!(
                "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
                testkit::sha256_hex(token)
            )
        })
        .collect();
    std::fs::write(path, text).expect("write the auth file");
}

#[test]
fn tokens_with_roles_and_a_reload_on_sighup() {
    let c = Cluster::start_secure(
        3,
        &[],
        Secure {
            tokens: true,
            ..Secure::default()
        },
    );
    let tokens = c.tokens().expect("tokens").clone();
    let leader = c.leader_id().expect("leader");
    let follower = c.ids().into_iter().find(|i| *i != leader).expect("follower");
    let body = r#"{"type":"PUT","value":1}"#;
    let as_ = |id: NodeId, method: &str, path: &str, token: &str| {
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("Bearer {token}")
        };
        let body = (method == "POST").then_some(body);
        c.request(id, method, path, body, &[("authorization", auth.as_str())])
            .expect("an answer")
    };

    let none = as_(follower, "GET", "/keys/k", "");
    assert_eq!(
        (none.status, none.json["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    assert_eq!(none.headers["www-authenticate"], r#"Bearer realm="kvnode""#);
    let bad = as_(follower, "POST", "/keys/k", "not-a-token");
    assert_eq!(bad.status, 401);
    assert!(bad.headers["www-authenticate"]
        .to_str()
        .expect("ascii")
        .contains("invalid_token"));

    let read = as_(follower, "POST", "/keys/k", &tokens.read);
    assert_eq!(
        (read.status, read.json["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert!(read.json["error"]["message"]
        .as_str()
        .expect("message")
        .contains("needs write"));
    assert_eq!(
        as_(follower, "GET", "/keys/k", &tokens.read).status,
        404,
        "read may read"
    );
    assert_eq!(as_(follower, "GET", "/admin/status", &tokens.read).status, 200);
    // A write through a follower is forwarded and applied.
    assert_eq!(as_(follower, "POST", "/keys/k", &tokens.write).status, 200);
    assert_eq!(as_(leader, "GET", "/keys/k", &tokens.read).json["value"], 1);
    // Changing something under /admin is the admin's: the token is checked first, so write
    // hears 403, and admin the 400 of a member addition without a body.
    assert_eq!(as_(leader, "POST", "/admin/members", &tokens.write).status, 403);
    assert_eq!(as_(leader, "POST", "/admin/members", &tokens.admin).status, 400);
    assert_eq!(as_(leader, "GET", "/admin/members", &tokens.read).status, 200);
    assert_eq!(as_(leader, "GET", "/admin/snapshot", &tokens.write).status, 403);
    assert_eq!(as_(leader, "GET", "/metrics", "").status, 401);
    assert_eq!(as_(leader, "GET", "/metrics", &tokens.read).status, 200);
    // Health and readiness checks are open.
    assert_eq!(as_(leader, "GET", "/health", "").status, 200);
    assert_eq!(as_(follower, "GET", "/ready", "").status, 200);

    // SIGHUP: a new file takes over on every node; the old tokens stop working.
    let fresh = testkit::new_token();
    write_auth(
        &c.auth_file().expect("auth file"),
        &[("new-ops", "admin", &fresh)],
    );
    for id in c.ids() {
        c.signal(id, libc::SIGHUP);
    }
    for id in c.ids() {
        poll(Duration::from_secs(10), "the new token to work", || {
            (as_(id, "GET", "/keys/k", &fresh).status == 200).then_some(())
        });
        assert_eq!(as_(id, "GET", "/keys/k", &tokens.admin).status, 401, "node {id}");
    }
    // A broken file on SIGHUP leaves the tokens in force.
    std::fs::write(c.auth_file().expect("auth file"), "[[token]]\nname = \"x\"\n").expect("write");
    c.signal(leader, libc::SIGHUP);
    poll(Duration::from_secs(10), "the refusal to be logged", || {
        c.log(leader).contains("not re-read on SIGHUP").then_some(())
    });
    assert_eq!(as_(leader, "GET", "/keys/k", &fresh).status, 200);

    // No token ever reaches a log.
    for id in c.ids() {
        let log = c.log(id);
        for secret in [
            &tokens.read,
            &tokens.write,
            &tokens.admin,
            &fresh,
            &"not-a-token".to_string(),
        ] {
            assert!(!log.contains(secret.as_str()), "node {id} logged a token");
        }
    }
}

/// Start one node by hand with extra arguments; returns its guard and its two addresses.
fn one_node(dir: &Path, extra: &[&str]) -> (ChildGuard, String, String) {
    let ports = free_ports(2);
    let (http, raft) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let cluster = dir.join("one.toml");
    std::fs::write(
        &cluster,
        format!("[[node]]\nid = 0\nhttp = \"{http}\"\nraft = \"{raft}\"\n"),
    )
    .expect("file");
    let log = dir.join("node.log");
    let child = std::process::Command::new(kvnode_bin())
        .arg("--cluster")
        .arg(&cluster)
        .args(["--id", "0", "--data-dir"])
        .arg(dir.join("data"))
        .args(extra)
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let guard = ChildGuard::new("node 0", child, &log);
    let client = testkit::http_client(None, None);
    poll(Duration::from_secs(30), "the node to lead", || {
        let r = client.get(format!("http://{http}/admin/status")).send().ok()?;
        let s: serde_json::Value = serde_json::from_str(&r.text().ok()?).ok()?;
        (s["role"] == "leader").then_some(())
    });
    (guard, http, raft)
}

/// Trickle header lines until the server closes; how long it took.
fn slowloris_headers(addr: &str) -> Duration {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let _ = tcp.write_all(b"GET /keys/a HTTP/1.1\r\nhost: x\r\n");
    let mut buf = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(20) {
        if tcp.write_all(b"x-slow: 1\r\n").is_err() {
            break;
        }
        match tcp.read(&mut buf) {
            Ok(_) => break,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            }
            Err(_) => break,
        }
    }
    started.elapsed()
}

/// Send headers promising a body, then trickle it; the answer, and how long it took.
fn slowloris_body(addr: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let _ = tcp.write_all(b"POST /keys/slow HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(20) {
        if tcp.write_all(b" ").is_err() {
            break;
        }
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if find(&got, b"\r\n\r\n").is_some() {
                    break;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            }
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
}

#[test]
fn slow_clients_are_cut_off_and_do_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().expect("dir");
    let (node, http, raft) = one_node(
        dir.path(),
        &["--header-timeout-ms", "500", "--body-timeout-ms", "1000"],
    );
    for (what, addr) in [("client", &http), ("peer", &raft)] {
        let took = slowloris_headers(addr);
        assert!(
            took < Duration::from_secs(4),
            "{what} port: a header slowloris lasted {took:?}"
        );
    }
    let (answer, took) = slowloris_body(&http);
    assert!(
        took < Duration::from_secs(4),
        "a body slowloris lasted {took:?}: {answer}"
    );
    assert!(answer.contains("did not arrive within 1000 ms"), "{answer}");
    let client = testkit::http_client(None, None);
    let slow = client
        .get(format!("http://{http}/keys/slow"))
        .send()
        .expect("answer");
    assert_eq!(slow.status(), 404, "the cut-off write changed nothing");
    drop(node);

    // With long timeouts, slow clients still do not hold up a shutdown.
    let dir = tempfile::tempdir().expect("dir");
    let (mut node, http, raft) = one_node(
        dir.path(),
        &["--header-timeout-ms", "60000", "--body-timeout-ms", "60000"],
    );
    // On each port, one client stuck in its headers and one stuck in its body.
    let mut slow = Vec::new();
    let fingerprint = cluster_id(&dir.path().join("data"));
    let stuck_bodies = [
        "POST /keys/slow HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{".to_string(),
        format!(
            "POST {} HTTP/1.1\r\nhost: x\r\n{TARGET_HEADER}: 0\r\n{CLUSTER_HEADER}: {fingerprint}\r\n\
             content-length: 1000\r\n\r\n\x01",
            route::APPEND
        ),
    ];
    for (addr, stuck_body) in [&http, &raft].into_iter().zip(stuck_bodies) {
        let mut headers = TcpStream::connect(addr).expect("connect");
        headers
            .write_all(b"GET /keys/a HTTP/1.1\r\nhost: x\r\nx-slow: 1\r\n")
            .expect("write");
        let mut body = TcpStream::connect(addr).expect("connect");
        body.write_all(stuck_body.as_bytes()).expect("write");
        slow.extend([headers, body]);
        // Connections are accepted in order: once a later one is answered, both slow ones
        // are being served.
        let answer = Conn::open(addr, None).exchange(&request("GET", "/health", &[], b""));
        assert!(status_of(&answer).is_some(), "{addr}: {answer}");
    }
    let started = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(node.child.id() as i32, libc::SIGTERM) };
    let status = poll(Duration::from_secs(30), "the node to exit", || {
        node.child.try_wait().ok().flatten()
    });
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    // The grace for requests in flight is the write timeout plus a second (6 s); slow clients
    // must not stretch a shutdown to their 60 s timeouts.
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    drop(slow);
}

#[test]
fn past_the_cap_a_node_answers_503_overloaded_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let (_node, http, _) = one_node(
        dir.path(),
        &["--max-client-requests", "2", "--body-timeout-ms", "20000"],
    );
    // Two requests in progress: headers sent, bodies not yet.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut tcp = TcpStream::connect(&http).expect("connect");
            tcp.write_all(b"POST /keys/held HTTP/1.1\r\nhost: x\r\ncontent-length: 24\r\n\r\n{\"type\":")
                .expect("write");
            tcp
        })
        .collect();
    let client = testkit::http_client(None, None);
    let busy = poll(Duration::from_secs(10), "the cap to be reached", || {
        let r = client.get(format!("http://{http}/keys/held")).send().ok()?;
        (r.status() == 503).then_some(r)
    });
    assert_eq!(busy.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_str(&busy.text().expect("body")).expect("json");
    assert_eq!(body["error"]["code"], "overloaded");
    // The requests in progress finish; then there is room again.
    for tcp in &mut held {
        tcp.write_all(b"\"PUT\",\"value\":7}").expect("finish the body");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        let n = tcp.read(&mut buf).expect("answer");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    drop(held);
    let r = client
        .get(format!("http://{http}/keys/held"))
        .send()
        .expect("answer");
    assert_eq!(r.status(), 200);
}

#[test]
fn a_node_listens_apart_from_the_addresses_it_advertises() {
    let dir = tempfile::tempdir().expect("dir");
    let ports = free_ports(2);
    let (listen_http, listen_raft) = (format!("0.0.0.0:{}", ports[0]), format!("0.0.0.0:{}", ports[1]));
    let (node, http, _) = {
        let cluster = dir.path().join("one.toml");
        let (http, raft) = (
            format!("127.0.0.1:{}", ports[0]),
            format!("127.0.0.1:{}", ports[1]),
        );
        std::fs::write(
            &cluster,
            format!("[[node]]\nid = 0\nhttp = \"{http}\"\nraft = \"{raft}\"\n"),
        )
        .expect("file");
        let log = dir.path().join("node.log");
        let child = std::process::Command::new(kvnode_bin())
            .arg("--cluster")
            .arg(&cluster)
            .args(["--id", "0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client", &listen_http, "--listen-peer", &listen_raft])
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn");
        (ChildGuard::new("node 0", child, &log), http, raft)
    };
    // 127.0.0.2 reaches a socket bound to 0.0.0.0, not one bound to 127.0.0.1.
    let other = format!("127.0.0.2:{}", ports[0]);
    let client = testkit::http_client(None, None);
    let status: serde_json::Value = poll(Duration::from_secs(30), "a leader's answer at 127.0.0.2", || {
        let text = client
            .get(format!("http://{other}/admin/status"))
            .send()
            .ok()?
            .text()
            .ok()?;
        let status: serde_json::Value = serde_json::from_str(&text).ok()?;
        // Before the cluster forms, a node knows no members yet.
        (status["role"] == "leader").then_some(status)
    });
    assert_eq!(
        status["members"][0]["http"], http,
        "it advertises the cluster file's address"
    );
    assert!(
        TcpStream::connect(format!("127.0.0.2:{}", ports[1])).is_ok(),
        "the peer port too"
    );
    drop(node);
}

/// Random bytes, a truncation of `valid`, and nothing.
fn junk_bodies(rng: &mut rand::rngs::StdRng, valid: &[u8]) -> Vec<Vec<u8>> {
    let random: Vec<u8> = (0..rng.gen_range(1..4096)).map(|_| rng.gen()).collect();
    let cut = valid[..rng.gen_range(0..valid.len().max(1))].to_vec();
    vec![random, cut, Vec::new(), vec![0xff; 16]]
}

/// Headers that promise far more than is sent, then the connection ends.
fn huge_declared(method: &str, path: &str, headers: &[(&str, String)]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: 1099511627776\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n0123456789");
    out.into_bytes()
}

const PEER_ROUTES: &[&str] = &[
    route::APPEND,
    route::STREAM,
    route::VOTE,
    route::PRE_VOTE,
    route::SNAPSHOT,
    route::TRANSFER_LEADER,
    route::PROBE,
    route::ADOPT,
    route::ADMIT,
    route::FORWARD_ADMIN,
    route::FORWARD_WRITE,
    route::FORWARD_READ_INDEX,
];

#[test]
fn junk_thrown_at_every_endpoint_changes_nothing() {
    let seed: u64 = rand::random();
    eprintln!("junk seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Bodies that never finish are given up on after 2 s rather than 30.
    let c = Cluster::start_secure(3, &["--body-timeout-ms", "2000"], Secure::all());
    let tokens = c.tokens().expect("tokens").clone();
    assert_eq!(c.put(0, "x", json!([1, 2])).expect("answer").status, 200);
    assert_eq!(c.put(1, "y", json!("kept")).expect("answer").status, 200);
    let keys = ["x", "y", "k"];
    let leader = c.wait_for_leader(Duration::from_secs(10));
    for id in c.ids() {
        c.wait_applied(
            id,
            c.status(leader).and_then(|s| s.last_applied).unwrap_or(0),
            Duration::from_secs(10),
        );
    }
    let before = state(&c, &keys);
    let dir = certs(&c);
    let ca = roots(&dir.join("ca.pem"));
    let fingerprint = cluster_id(&c.data_dir(0));
    let vote = openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(1_000_000_000_000, 1), None);
    let valid_vote = wire::encode(&vote);
    let mut answers = 0usize;

    // The client port: without a token, with a bad one, or with a read token, nothing that
    // writes gets through; bodies are junk, lengths are lies, headers are forged.
    let client_routes = [
        "/keys/k",
        "/keys/x",
        "/keys",
        "/keys/",
        "/watch",
        "/admin/status",
        "/admin/members",
        "/admin/members/1",
        "/admin/members/1/promote",
        "/admin/leader/transfer",
        "/admin/snapshot",
        "/metrics",
        "/raft/vote",
    ];
    // Every node serves the client port with the same code: the junk goes to one follower
    // and the leader, one junk body and one lying length per combination.
    let follower = c.ids().into_iter().find(|id| *id != leader).expect("a follower");
    for id in [follower, leader] {
        for path in client_routes {
            for method in ["GET", "POST", "PUT", "DELETE"] {
                for auth in ["", "Bearer garbage", &format!("Bearer {}", tokens.read)] {
                    let mut headers = vec![
                        (TARGET_HEADER, id.to_string()),
                        (CLUSTER_HEADER, fingerprint.clone()),
                        ("idempotency-key", "not-a-uuid".to_string()),
                    ];
                    if !auth.is_empty() {
                        headers.push(("authorization", auth.to_string()));
                    }
                    let bodies = junk_bodies(&mut rng, br#"{"type":"PUT","value":["x"]}"#);
                    let body = &bodies[rng.gen_range(0..bodies.len())];
                    let sends = [
                        request(method, path, &headers, body),
                        huge_declared(method, path, &headers),
                    ];
                    for bytes in sends {
                        let answer = Conn::open(
                            &c.http_addr(id),
                            Some((client_config(ca.clone(), None), "localhost")),
                        )
                        .exchange(&bytes);
                        if let Some(status) = status_of(&answer) {
                            answers += 1;
                            if method != "GET" {
                                assert!(
                                    !(200..300).contains(&status),
                                    "{method} {path} with {auth:?} answered {status}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    // The peer port: strangers are refused at the handshake whatever they send; a real node's
    // certificate with junk bodies gets errors.
    let stranger_sets: Vec<(&str, Option<Identity>)> = vec![
        ("no certificate", None),
        (
            "a client certificate",
            Some(load_identity(&dir.join("client.pem"), &dir.join("client.key"))),
        ),
        (
            "another CA's node certificate",
            Some(rogue_identity(&["node-1.kv", "127.0.0.1"]).1),
        ),
    ];
    let node1 = || load_identity(&dir.join("node1-peer.pem"), &dir.join("node1-peer.key"));
    for id in c.ids() {
        let addr = peer_addr(&c, id);
        let name = format!("node-{id}.kv");
        let headers = vec![
            (TARGET_HEADER, id.to_string()),
            (CLUSTER_HEADER, fingerprint.clone()),
            ("connection", "upgrade".to_string()),
            ("upgrade", wire::stream::PROTOCOL.to_string()),
        ];
        for path in PEER_ROUTES {
            let mut sends: Vec<Vec<u8>> = junk_bodies(&mut rng, &valid_vote)
                .iter()
                .map(|b| request("POST", path, &headers, b))
                .collect();
            if id == 0 {
                sends.push(huge_declared("POST", path, &headers));
            }
            for (i, bytes) in sends.iter().enumerate() {
                // Strangers are refused at the handshake, before a byte of the request is
                // read: one body each is enough to show it.
                let plain = Conn::open(&addr, None).exchange(bytes);
                assert_eq!(status_of(&plain), None, "plain {path}: {plain}");
                for (what, identity) in stranger_sets.iter().filter(|_| i == 0) {
                    let identity = identity.as_ref().map(|i| Identity {
                        chain: i.chain.clone(),
                        key: i.key.clone_key(),
                    });
                    let answer =
                        Conn::open(&addr, Some((client_config(ca.clone(), identity), &name))).exchange(bytes);
                    assert_eq!(status_of(&answer), None, "{what} at {path}: {answer}");
                }
                let answer = Conn::open(&addr, Some((client_config(ca.clone(), Some(node1())), &name)))
                    .exchange(bytes);
                if let Some(status) = status_of(&answer) {
                    answers += 1;
                    let upgraded = *path == route::STREAM && status == 101;
                    // A probe and a read index change nothing whatever the body.
                    let harmless = [route::PROBE, route::FORWARD_READ_INDEX].contains(path);
                    assert!(
                        upgraded || harmless || !(200..300).contains(&status),
                        "node 1's certificate with junk at {path} answered {status}: {answer}"
                    );
                }
            }
        }
        // A replication stream whose first frame claims 4 GiB, and one of random frames.
        for frame in [
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            (0..512).map(|_| rng.gen()).collect::<Vec<u8>>(),
        ] {
            let mut upgrade = request("POST", route::STREAM, &headers, b"");
            upgrade.extend_from_slice(&frame);
            let _ =
                Conn::open(&addr, Some((client_config(ca.clone(), Some(node1())), &name))).exchange(&upgrade);
        }
    }
    assert!(
        answers > 100,
        "the junk must have been answered, not only dropped ({answers})"
    );
    for id in c.ids() {
        assert!(c.status(id).is_some(), "node {id} still answers");
    }
    assert_eq!(state(&c, &keys), before, "junk changed the cluster (seed {seed})");
    assert_eq!(
        c.put(2, "k", json!("after")).expect("answer").status,
        200,
        "and it still works"
    );
}

#[test]
fn forged_identity_headers_and_junk_on_a_plain_peer_port_change_nothing() {
    // Without TLS anyone can compute the identity headers (README, "Running it securely");
    // what they send must still be validated: undecodable, truncated and oversized bodies are
    // refused, and a forwarded write obeys the client's limits.
    let seed: u64 = rand::random();
    eprintln!("junk seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let c = Cluster::start_with(3, &["--max-value-bytes", "1000", "--body-timeout-ms", "2000"]);
    assert_eq!(c.put(0, "x", json!([1])).expect("answer").status, 200);
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let applied = c.status(leader).and_then(|s| s.last_applied).unwrap_or(0);
    for id in c.ids() {
        c.wait_applied(id, applied, Duration::from_secs(10));
    }
    let keys = ["x", "big", "k"];
    let before = state(&c, &keys);
    let fingerprint = cluster_id(&c.data_dir(0));
    let vote = openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(1_000_000_000_000, 1), None);
    let valid_vote = wire::encode(&vote);
    for id in c.ids() {
        let headers = vec![
            (TARGET_HEADER, id.to_string()),
            (CLUSTER_HEADER, fingerprint.clone()),
        ];
        for path in PEER_ROUTES
            .iter()
            .filter(|p| **p != route::PROBE && **p != route::FORWARD_READ_INDEX)
        {
            let mut sends: Vec<Vec<u8>> = junk_bodies(&mut rng, &valid_vote)
                .iter()
                .map(|b| request("POST", path, &headers, b))
                .collect();
            if id == 0 {
                sends.push(huge_declared("POST", path, &headers));
            }
            for bytes in sends {
                let answer = Conn::open(&peer_addr(&c, id), None).exchange(&bytes);
                if let Some(status) = status_of(&answer) {
                    assert!(
                        !(200..300).contains(&status),
                        "{path} answered {status}: {answer}"
                    );
                }
            }
        }
        // A body declared past the peer limit is refused with 413 before it is read.
        let mut huge = request("POST", route::APPEND, &headers, b"");
        let head = String::from_utf8(huge.clone()).expect("ascii");
        huge = head
            .replace(
                "content-length: 0",
                &format!("content-length: {}", 16 * 1024 * 1024),
            )
            .into_bytes();
        huge.extend_from_slice(&[0u8; 4096]);
        let answer = Conn::open(&peer_addr(&c, id), None).exchange(&huge);
        assert_eq!(
            status_of(&answer),
            Some(413),
            "{}",
            &answer[..answer.len().min(200)]
        );
    }
    // The forward path is no way around the value limit: the leader checks again.
    let big = kvnode::types::Op {
        key: "big".into(),
        cmd: kvnode::types::Command::Put(json!("v".repeat(5000))),
        idem: None,
        cond: None,
    };
    let forward = wire::ForwardWrite { op: big, size: 1 };
    let headers = [
        (TARGET_HEADER, leader.to_string()),
        (CLUSTER_HEADER, fingerprint.clone()),
    ];
    let answer = Conn::open(&peer_addr(&c, leader), None).exchange(&request(
        "POST",
        route::FORWARD_WRITE,
        &headers,
        &wire::encode(&forward),
    ));
    assert!(status_of(&answer).is_some_and(|s| s >= 400), "{answer}");
    let empty_key = wire::ForwardWrite {
        op: kvnode::types::Op {
            key: String::new(),
            cmd: kvnode::types::Command::Delete,
            idem: None,
            cond: None,
        },
        size: 0,
    };
    let answer = Conn::open(&peer_addr(&c, leader), None).exchange(&request(
        "POST",
        route::FORWARD_WRITE,
        &headers,
        &wire::encode(&empty_key),
    ));
    assert!(status_of(&answer).is_some_and(|s| s >= 400), "{answer}");

    for id in c.ids() {
        assert!(c.status(id).is_some(), "node {id} still answers");
    }
    assert_eq!(state(&c, &keys), before, "junk changed the cluster (seed {seed})");
    assert_eq!(c.put(1, "k", json!("after")).expect("answer").status, 200);
}

/// A TLS cluster with tokens grows like any other: a node with certificates from the same CA
/// (`kvnode certs --add-node`) and a read token (`--join-token-file`) joins, is promoted by an
/// admin, and replicates; a member change needs the admin role.
#[test]
fn a_secured_cluster_admits_a_node_with_certificates_from_its_ca() {
    let mut c = Cluster::start_secure(3, &[], Secure::all());
    let tokens = c.tokens().expect("tokens").clone();
    assert_eq!(c.put(0, "k", json!("before")).expect("answer").status, 200);
    c.join(3, &[0, 1]);
    c.wait_for_members(0, &[0, 1, 2], &[3], Duration::from_secs(30));
    let promote = |token: &str| {
        c.request(
            1,
            "POST",
            "/admin/members/3/promote",
            None,
            &[("authorization", &format!("Bearer {token}"))],
        )
        .expect("answer")
    };
    assert_eq!(
        promote(&tokens.write).status,
        403,
        "member changes are the admin's"
    );
    poll(Duration::from_secs(30), "node 3 to be promoted", || {
        (promote(&tokens.admin).status == 200).then_some(())
    });
    promoted_node_3_holds_and_forwards(&c);
}

/// Node 3, once promoted, holds the "before" value of key k, and a write through it is
/// forwarded to the leader over mutual TLS and applied.
fn promoted_node_3_holds_and_forwards(c: &Cluster) {
    c.wait_for_members(0, &[0, 1, 2, 3], &[], Duration::from_secs(30));
    poll(Duration::from_secs(20), "node 3 to hold the data", || {
        let r = c.request(3, "GET", "/keys/k?consistency=stale", None, &[])?;
        (r.json["value"] == json!("before")).then_some(())
    });
    // It speaks mutual TLS with the others: a write through it is forwarded and applied.
    assert_eq!(c.put(3, "k", json!("after")).expect("answer").status, 200);
    assert_eq!(c.get(2, "k").expect("answer"), Some(json!("after")));
}

/// Mutual TLS between the nodes and plain HTTP for clients is a setup of its own: a node that
/// joins such a cluster asks a member's client port over plain HTTP when its address says
/// `http://` (a bare address would mean HTTPS to a node with peer certificates), then speaks
/// mutual TLS with the others.
#[test]
fn a_node_joins_a_cluster_whose_peers_alone_speak_tls() {
    let mut c = Cluster::start_secure(
        3,
        &[],
        Secure {
            tls: true,
            plain_client_port: true,
            ..Secure::default()
        },
    );
    assert!(c.url(0).starts_with("http://"), "{}", c.url(0));
    assert_eq!(c.put(0, "k", json!("before")).expect("answer").status, 200);
    c.join(3, &[0]);
    c.wait_for_members(0, &[0, 1, 2], &[3], Duration::from_secs(30));
    poll(Duration::from_secs(30), "node 3 to be promoted", || {
        let r = c.request(1, "POST", "/admin/members/3/promote", None, &[])?;
        (r.status == 200).then_some(())
    });
    promoted_node_3_holds_and_forwards(&c);
}

/// The certificate the TLS port at `addr` presents to a client that trusts `ca` and expects
/// `name` (presenting `identity` where the port asks for one), or `None` if the handshake fails.
fn presented_cert(
    addr: &str,
    name: &str,
    ca: &Path,
    identity: Option<Identity>,
) -> Option<CertificateDer<'static>> {
    let server = ServerName::try_from(name.to_string()).expect("name");
    let mut conn = rustls::ClientConnection::new(client_config(roots(ca), identity), server).ok()?;
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    conn.peer_certificates()?.first().map(|c| c.clone().into_owned())
}

/// Certificates are renewed without a restart: new files and a SIGHUP, and every handshake
/// from then on presents them, on the client port and on the peer port (where the other nodes
/// still accept the renewed certificate). Files that do not load leave the old ones in force.
#[test]
fn a_node_renews_its_certificates_on_sighup() {
    let mut c = Cluster::start_secure(
        3,
        &[],
        Secure {
            tls: true,
            ..Secure::default()
        },
    );
    let dir = certs(&c);
    let ca = dir.join("ca.pem");
    let (http, peer) = (c.http_addr(0), peer_addr(&c, 0));
    let node1 = || {
        Some(load_identity(
            &dir.join("node1-peer.pem"),
            &dir.join("node1-peer.key"),
        ))
    };
    let client_cert = || presented_cert(&http, "localhost", &ca, None);
    let peer_cert = || presented_cert(&peer, "node-0.kv", &ca, node1());
    let (old_client, old_peer) = (
        client_cert().expect("a handshake"),
        peer_cert().expect("a handshake"),
    );
    let pem = |name: &str| CertificateDer::from_pem_file(dir.join(name)).expect("a certificate");
    assert_eq!(old_client, pem("node0.pem"));
    assert_eq!(old_peer, pem("node0-peer.pem"));

    // Broken files: the node says so and keeps presenting the old certificates.
    let keep = |name: &str| std::fs::read(dir.join(name)).expect("read");
    let (client_pem, peer_key) = (keep("node0.pem"), keep("node0-peer.key"));
    std::fs::write(dir.join("node0.pem"), "not a certificate").expect("write");
    std::fs::write(dir.join("node0-peer.key"), keep("node1-peer.key")).expect("write");
    let from = c.log(0).len();
    c.signal(0, libc::SIGHUP);
    poll(Duration::from_secs(10), "two refusals in the log", || {
        (c.log(0)[from..]
            .matches("certificate not re-read on SIGHUP")
            .count()
            == 2)
            .then_some(())
    });
    assert!(
        c.log(0)[from..].contains("does not go with the certificate"),
        "{}",
        &c.log(0)[from..]
    );
    assert_eq!(client_cert(), Some(old_client.clone()));
    assert_eq!(peer_cert(), Some(old_peer.clone()));
    std::fs::write(dir.join("node0.pem"), client_pem).expect("write");
    std::fs::write(dir.join("node0-peer.key"), peer_key).expect("write");

    // New certificates from the same CA (kvnode certs --add-node, in a directory of their own).
    let renewed = tempfile::tempdir().expect("temp dir");
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(dir.join(f), renewed.path().join(f)).expect("copy the CA");
    }
    let out = std::process::Command::new(kvnode_bin())
        .args([
            "certs",
            "--add-node",
            "0",
            "--http",
            &http,
            "--raft",
            &peer,
            "--out",
        ])
        .arg(renewed.path())
        .output()
        .expect("kvnode certs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["node0.pem", "node0.key", "node0-peer.pem", "node0-peer.key"] {
        std::fs::copy(renewed.path().join(f), dir.join(f)).expect("install the renewed files");
    }
    let (new_client, new_peer) = (pem("node0.pem"), pem("node0-peer.pem"));
    assert_ne!(new_client, old_client);
    c.signal(0, libc::SIGHUP);
    poll(Duration::from_secs(10), "the renewed certificates", || {
        (client_cert() == Some(new_client.clone()) && peer_cert() == Some(new_peer.clone())).then_some(())
    });
    // The other nodes accept the renewed peer certificate both ways, on new connections:
    // restart node 1 and stop node 2, so that nothing commits unless nodes 0 and 1 talk, and
    // write through each of them (one forwards to the other, which replicates back).
    c.kill(1);
    c.restart(1);
    c.kill(2);
    for (via, value) in [(0, 1), (1, 2)] {
        poll(
            Duration::from_secs(30),
            "a write through a two-node majority",
            || {
                let r = c.put(via, "renewed", json!(value))?;
                (r.status == 200).then_some(())
            },
        );
    }
    for id in [0, 1] {
        assert_eq!(c.get(id, "renewed"), Some(Some(json!(2))), "node {id}");
    }
}
