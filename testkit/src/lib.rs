//! Test harness: a cluster of real `kvnode` processes on ephemeral ports.
//!
//! Tests of the fourth tier run the built binaries exactly as a user would: separate processes,
//! real sockets, real data directories, SIGKILL and restart. The harness
//! - picks free loopback ports and writes a cluster file into a temporary directory,
//! - starts each node with its stderr in a log file,
//! - kills every child when the [`Cluster`] is dropped, and, when the test is failing
//!   (panicking), prints every node's log so the failure can be understood,
//! - waits by polling with deadlines, never by fixed sleeps.
//!
//! A cluster can also be secured ([`Secure`]): certificates made by the real `kvnode certs`,
//! TLS on both ports (optionally client certificates), and an auth file with one token per
//! role. The harness's own requests then speak TLS and carry the admin token, so every helper
//! works the same on either kind of cluster.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvapi::{ClusterFile, NodeAddr, NodeId, Role, Status};

pub mod sse;

pub use sse::{SseEvent, SseStream};

/// Path of the `kvnode` binary: `$KVNODE_BIN`, or the one next to the test executable's
/// directory (`target/<profile>/kvnode`), built (or brought up to date) with cargo once per
/// test process. `cargo test -p kvctl` does not build kvnode's binary by itself, and a stale
/// one would test yesterday's server.
pub fn kvnode_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("KVNODE_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps");
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "-p", "kvnode", "--bin", "kvnode"]);
        // `cargo test` gives the test process the variables of the package under test
        // (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...). Passed on, they make build scripts that
        // watch them (ring's) run again, and kvnode is rebuilt from there: half a minute for
        // every test binary. The nested build must see the environment a shell would.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let set_for_tests = name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&name.as_ref());
            if set_for_tests {
                build.env_remove(name.as_ref());
            }
        }
        if profile_dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build for kvnode");
        assert!(status.success(), "building kvnode failed");
        profile_dir.join("kvnode")
    })
    .clone()
}

/// Free loopback ports, never the same one twice in this process.
pub fn free_ports(n: usize) -> Vec<u16> {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        let mut g = given.lock().unwrap_or_else(|p| p.into_inner());
        if g.insert(port) {
            ports.push(port);
        }
        held.push(l);
    }
    ports
}

/// Poll `f` until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Election timing for tests: a 50 ms heartbeat and elections after 300-600 ms of silence, so
/// that a dead leader is replaced within a second.
pub const FAST_ELECTIONS: &[&str] = &[
    "--heartbeat-ms",
    "50",
    "--election-min-ms",
    "300",
    "--election-max-ms",
    "600",
];

/// How a test cluster is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Secure {
    /// Certificates from `kvnode certs`: HTTPS on the client port, mutual TLS between nodes.
    pub tls: bool,
    /// The client port also requires client certificates (needs `tls`).
    pub client_certs: bool,
    /// An auth file with one token per role; the cluster file names the admin token's file.
    pub tokens: bool,
    /// With `tls`: only the peer ports speak (mutual) TLS; the client ports speak plain HTTP.
    pub plain_client_port: bool,
}

impl Secure {
    /// TLS and tokens.
    pub fn all() -> Secure {
        Secure {
            tls: true,
            client_certs: false,
            tokens: true,
            plain_client_port: false,
        }
    }
}

/// The bearer tokens of a cluster with [`Secure::tokens`], in clear, one per role.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// May read.
    pub read: String,
    /// May read and write keys.
    pub write: String,
    /// May do anything.
    pub admin: String,
}

/// Make a fresh random token.
pub fn new_token() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `token` in hex, as an auth file holds it.
pub fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An HTTP client for a test: trusts `ca` when given (and presents `identity`, a certificate
/// and key, when given); plain otherwise.
pub fn http_client(ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> reqwest::blocking::Client {
    use rustls_pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .no_proxy();
    if let Some(ca) = ca {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("read the CA") {
            roots.add(cert.expect("CA certificate")).expect("usable CA");
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
        let tls = match identity {
            Some((cert, key)) => {
                let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                    .expect("read the certificate")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certificate");
                let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
                tls.with_client_auth_cert(chain, key).expect("client identity")
            }
            None => tls.with_no_client_auth(),
        };
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder.build().expect("http client")
}

/// One node process.
pub struct NodeProc {
    /// The node's id.
    pub id: NodeId,
    child: Option<Child>,
    /// Its log file (stderr).
    pub log: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// True while SIGSTOPped.
    paused: bool,
    /// Client address.
    http: String,
    /// Peer address.
    raft: String,
    /// Program and arguments placed before the `kvnode` binary.
    prefix: Vec<String>,
    /// How it is started: from the cluster file, or joining through these client addresses.
    join: Option<Vec<String>>,
    /// Arguments for the next start only (e.g. `--force-new-cluster`).
    once: Vec<String>,
    /// Arguments of this node alone, at every start (a joining node's certificates).
    own: Vec<String>,
    /// Retired: removed from the cluster, no longer counted or restarted.
    retired: bool,
}

/// A cluster of real `kvnode` processes.
pub struct Cluster {
    dir: tempfile::TempDir,
    file: ClusterFile,
    cluster_path: PathBuf,
    nodes: Vec<NodeProc>,
    args: Vec<String>,
    http: reqwest::blocking::Client,
    secure: Secure,
    tokens: Option<Tokens>,
}

/// Where one node listens and how its process is started, for clusters that do not live on
/// loopback ports: e.g. a node inside a network namespace is started as
/// `ip netns exec NAME kvnode ...` and listens on the namespace's own address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLayout {
    /// Client HTTP address, `host:port`.
    pub http: String,
    /// Peer (Raft) address, `host:port`.
    pub raft: String,
    /// Program and arguments placed before the `kvnode` binary (empty: none). The wrapper must
    /// `exec` kvnode so that signals sent to the child reach the node itself.
    pub launch_prefix: Vec<String>,
}

/// What a request returned.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body parsed as JSON (`Null` when empty or not JSON).
    pub json: serde_json::Value,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// The machine-readable code of an error answer (`error.code`), or `<no error code>`.
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("<no error code>")
    }
}

impl Cluster {
    /// Start `n` nodes with default settings and wait for a leader.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// Start `n` nodes with extra `kvnode` arguments and wait for a leader.
    pub fn start_with(n: usize, args: &[&str]) -> Cluster {
        let c = Self::spawn(n, args);
        c.wait_for_leader(Duration::from_secs(30));
        c
    }

    /// Start `n` nodes without waiting for anything.
    pub fn spawn(n: usize, args: &[&str]) -> Cluster {
        let all: Vec<NodeId> = (0..n as NodeId).collect();
        Self::spawn_some(n, &all, args)
    }

    /// A cluster file of `n` nodes of which only those in `start` are started (the others
    /// can be started later with [`Cluster::restart`]); waits for nothing.
    pub fn spawn_some(n: usize, start: &[NodeId], args: &[&str]) -> Cluster {
        let layout: Vec<NodeLayout> = (0..n).map(|_| loopback_layout()).collect();
        Self::spawn_with_layout_some(&layout, start, args)
    }

    /// Lay out `n` nodes on free loopback ports (cluster file, data directory and log paths)
    /// without starting any, for tests that prepare the data directories first (e.g. with
    /// `kvnode restore`); start each with [`Cluster::restart`].
    pub fn prepare(n: usize, args: &[&str]) -> Cluster {
        let layout: Vec<NodeLayout> = (0..n).map(|_| loopback_layout()).collect();
        Self::spawn_with_layout_some(&layout, &[], args)
    }

    /// Start one node per entry of `layout` (node `i` gets id `i`) without waiting for
    /// anything: the addresses and launch prefixes are the caller's, everything else (data
    /// directories, logs, kill-on-drop) is as with [`Cluster::spawn`].
    pub fn spawn_with_layout(layout: &[NodeLayout], args: &[&str]) -> Cluster {
        Self::spawn_secure_with_layout(layout, args, Secure::default())
    }

    /// Start `n` secured nodes on loopback without waiting for anything.
    pub fn spawn_secure(n: usize, args: &[&str], secure: Secure) -> Cluster {
        let layout: Vec<NodeLayout> = (0..n).map(|_| loopback_layout()).collect();
        Self::spawn_secure_with_layout(&layout, args, secure)
    }

    /// Start `n` secured nodes and wait for a leader.
    pub fn start_secure(n: usize, args: &[&str], secure: Secure) -> Cluster {
        let c = Self::spawn_secure(n, args, secure);
        c.wait_for_leader(Duration::from_secs(30));
        c
    }

    /// [`Cluster::spawn_with_layout`], secured as `secure` says.
    pub fn spawn_secure_with_layout(layout: &[NodeLayout], args: &[&str], secure: Secure) -> Cluster {
        let all: Vec<NodeId> = (0..layout.len() as NodeId).collect();
        Self::spawn_secure_with_layout_some(layout, &all, args, secure)
    }

    /// [`Cluster::spawn_with_layout`], starting only the nodes in `start`.
    pub fn spawn_with_layout_some(layout: &[NodeLayout], start: &[NodeId], args: &[&str]) -> Cluster {
        Self::spawn_secure_with_layout_some(layout, start, args, Secure::default())
    }

    /// [`Cluster::spawn_secure_with_layout`], starting only the nodes in `start`.
    pub fn spawn_secure_with_layout_some(
        layout: &[NodeLayout],
        start: &[NodeId],
        args: &[&str],
        secure: Secure,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes: Vec<NodeAddr> = layout
            .iter()
            .enumerate()
            .map(|(i, l)| NodeAddr {
                id: i as NodeId,
                http: l.http.clone(),
                raft: l.raft.clone(),
            })
            .collect();
        let file = ClusterFile::from_nodes(nodes).expect("valid cluster");
        let mut cluster_path = dir.path().join("cluster.toml");
        std::fs::write(&cluster_path, file.to_toml()).expect("write cluster file");
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (file, tokens) = secure_files(dir.path(), &mut cluster_path, file, &mut args, secure);
        let certs = dir.path().join("certs");
        let http = match secure.tls {
            true => http_client(
                Some(&certs.join("ca.pem")),
                secure
                    .client_certs
                    .then(|| (certs.join("client.pem"), certs.join("client.key")))
                    .as_ref()
                    .map(|(c, k)| (c.as_path(), k.as_path())),
            ),
            false => http_client(None, None),
        };
        let mut c = Cluster {
            nodes: Vec::new(),
            file,
            cluster_path,
            args,
            dir,
            http,
            secure,
            tokens,
        };
        for (i, l) in layout.iter().enumerate() {
            let node = NodeProc {
                id: i as NodeId,
                child: None,
                log: c.dir.path().join(format!("node{i}.log")),
                data_dir: c.dir.path().join(format!("data{i}")),
                paused: false,
                http: l.http.clone(),
                raft: l.raft.clone(),
                prefix: l.launch_prefix.clone(),
                join: None,
                once: Vec::new(),
                own: Vec::new(),
                retired: false,
            };
            c.nodes.push(node);
            if start.contains(&(i as NodeId)) {
                c.launch(i as NodeId);
            }
        }
        c
    }

    /// Start a new node `id` (not in the cluster file) on loopback ports that joins the
    /// running cluster through the client addresses of the nodes `via` (`kvnode --join`).
    pub fn join(&mut self, id: NodeId, via: &[NodeId]) {
        self.join_with_layout(id, loopback_layout(), via);
    }

    /// [`Cluster::join`] with the caller's addresses and launch prefix.
    pub fn join_with_layout(&mut self, id: NodeId, layout: NodeLayout, via: &[NodeId]) {
        assert!(
            self.nodes.iter().all(|n| n.id != id),
            "node id {id} is taken in this test cluster"
        );
        // A bare address means HTTPS to a node with peer certificates: say when it is not.
        let join = via
            .iter()
            .map(|v| match self.secure.tls && self.secure.plain_client_port {
                true => format!("http://{}", self.http_addr(*v)),
                false => self.http_addr(*v),
            })
            .collect();
        let own = self.joining_security(id, &layout.http, &layout.raft);
        let node = NodeProc {
            id,
            child: None,
            log: self.dir.path().join(format!("node{id}.log")),
            data_dir: self.dir.path().join(format!("data{id}")),
            paused: false,
            http: layout.http,
            raft: layout.raft,
            prefix: layout.launch_prefix,
            join: Some(join),
            once: Vec::new(),
            own,
            retired: false,
        };
        self.nodes.push(node);
        self.launch(id);
    }

    /// What a node joining a secured cluster needs of its own: certificates from the
    /// cluster's CA (`kvnode certs --add-node`) and a token to ask the members who they are.
    fn joining_security(&self, id: NodeId, http: &str, raft: &str) -> Vec<String> {
        let mut args = Vec::new();
        if self.secure.tls {
            let certs = self.dir.path().join("certs");
            let out = Command::new(kvnode_bin())
                .args([
                    "certs",
                    "--add-node",
                    &id.to_string(),
                    "--http",
                    http,
                    "--raft",
                    raft,
                ])
                .arg("--out")
                .arg(&certs)
                .output()
                .expect("run kvnode certs --add-node");
            assert!(
                out.status.success(),
                "kvnode certs --add-node failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let file = |name: String| certs.join(name).display().to_string();
            if self.client_port_tls() {
                args.extend([
                    "--cert-file".to_string(),
                    file(format!("node{id}.pem")),
                    "--key-file".into(),
                    file(format!("node{id}.key")),
                ]);
            }
            args.extend([
                "--peer-cert-file".to_string(),
                file(format!("node{id}-peer.pem")),
                "--peer-key-file".into(),
                file(format!("node{id}-peer.key")),
                "--peer-ca-file".into(),
                file("ca.pem".into()),
            ]);
            if self.secure.client_certs && self.client_port_tls() {
                args.extend(["--client-ca-file".to_string(), file("ca.pem".into())]);
            }
        }
        if let Some(tokens) = &self.tokens {
            let path = self.dir.path().join(format!("join{id}.token"));
            std::fs::write(&path, format!("{}\n", tokens.read)).expect("write the join token");
            args.extend(["--join-token-file".to_string(), path.display().to_string()]);
        }
        args
    }

    /// Give node `id` these arguments at its next start only (e.g. `--force-new-cluster`).
    pub fn next_start_with(&mut self, id: NodeId, args: &[&str]) {
        self.node(id).once = args.iter().map(|s| s.to_string()).collect();
    }

    /// Kill node `id` and leave it out from now on (it was removed from the cluster): it is
    /// no longer counted by [`Cluster::leader_id`] and not restarted by anyone.
    pub fn retire(&mut self, id: NodeId) {
        self.kill(id);
        self.node(id).retired = true;
    }

    /// Ids of the nodes not retired.
    pub fn members(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|n| !n.retired).map(|n| n.id).collect()
    }

    fn node(&mut self, id: NodeId) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("known node id")
    }

    fn launch(&mut self, id: NodeId) {
        let bin = kvnode_bin();
        let cluster = self.cluster_path.clone();
        let args = self.args.clone();
        let node = self.node(id);
        let prefix = node.prefix.clone();
        let once = std::mem::take(&mut node.once);
        let own = node.own.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open log");
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        match &node.join {
            None => command.arg("--cluster").arg(&cluster),
            Some(join) => command
                .arg("--join")
                .arg(join.join(","))
                .args(["--http", &node.http, "--raft", &node.raft]),
        };
        let child = command
            .arg("--id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&args)
            .args(&own)
            .args(&once)
            .env(
                "RUST_LOG",
                std::env::var("KVNODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kvnode");
        node.child = Some(child);
        node.paused = false;
    }

    /// The directory holding the cluster file, logs and data directories.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster file.
    pub fn cluster_file(&self) -> &Path {
        &self.cluster_path
    }

    /// The cluster description.
    pub fn description(&self) -> &ClusterFile {
        &self.file
    }

    /// Ids of all nodes.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Ids of the nodes whose process runs (paused ones included).
    pub fn running(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.retired)
            .map(|n| n.id)
            .collect()
    }

    /// A node's client address, `host:port`.
    pub fn http_addr(&self, id: NodeId) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("known node")
            .http
            .clone()
    }

    /// A node's peer address, `host:port`.
    pub fn raft_addr(&self, id: NodeId) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("known node")
            .raft
            .clone()
    }

    /// A node's base URL.
    pub fn url(&self, id: NodeId) -> String {
        let scheme = if self.client_port_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr(id))
    }

    /// Whether the client ports speak TLS.
    pub fn client_port_tls(&self) -> bool {
        self.secure.tls && !self.secure.plain_client_port
    }

    /// How the cluster is secured.
    pub fn secure(&self) -> Secure {
        self.secure
    }

    /// The tokens, when the cluster has an auth file.
    pub fn tokens(&self) -> Option<&Tokens> {
        self.tokens.as_ref()
    }

    /// The directory of the certificates (`ca.pem`, `node<ID>.pem`, `client.pem`, ...), when
    /// the cluster speaks TLS.
    pub fn certs_dir(&self) -> Option<PathBuf> {
        self.secure.tls.then(|| self.dir.path().join("certs"))
    }

    /// The auth file, when there is one.
    pub fn auth_file(&self) -> Option<PathBuf> {
        self.secure.tokens.then(|| self.dir.path().join("auth.toml"))
    }

    /// The harness's HTTP client (trusts the cluster's CA).
    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// A node's data directory.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("known node")
            .data_dir
            .clone()
    }

    /// SIGKILL a node and reap it.
    pub fn kill(&mut self, id: NodeId) {
        let node = self.node(id);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM a node and wait for it to exit; returns its exit code.
    pub fn terminate(&mut self, id: NodeId) -> Option<i32> {
        let node = self.node(id);
        let mut child = node.child.take()?;
        // SAFETY: plain kill(2) on the pid of a child we own and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send signal `sig` (e.g. `libc::SIGHUP`) to a running node.
    pub fn signal(&self, id: NodeId, sig: i32) {
        let node = self.nodes.iter().find(|n| n.id == id).expect("known node");
        if let Some(child) = &node.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// SIGSTOP a node.
    pub fn pause(&mut self, id: NodeId) {
        let node = self.node(id);
        if let Some(child) = &node.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
            node.paused = true;
        }
    }

    /// SIGCONT a paused node.
    pub fn resume(&mut self, id: NodeId) {
        let node = self.node(id);
        if let Some(child) = &node.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            node.paused = false;
        }
    }

    /// Start a stopped node again with the same data directory.
    pub fn restart(&mut self, id: NodeId) {
        self.kill(id);
        self.launch(id);
    }

    /// True while node `id` is SIGSTOPped by [`Cluster::pause`].
    pub fn is_paused(&self, id: NodeId) -> bool {
        self.nodes.iter().any(|n| n.id == id && n.paused)
    }

    /// Remove a stopped node's data directory.
    pub fn wipe(&mut self, id: NodeId) {
        self.kill(id);
        let dir = self.data_dir(id);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The exit status of a node that stopped by itself, if it did within `timeout`.
    pub fn wait_exit(&mut self, id: NodeId, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let node = self.node(id);
        let child = node.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A node's log so far.
    pub fn log(&self, id: NodeId) -> String {
        let node = self.nodes.iter().find(|n| n.id == id).expect("known node");
        std::fs::read_to_string(&node.log).unwrap_or_default()
    }

    /// Send a request to node `id`. `None` when no answer came (connection refused, timeout).
    pub fn request(
        &self,
        id: NodeId,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Option<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.url(id), path));
        let own_auth = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let (Some(tokens), false) = (&self.tokens, own_auth) {
            req = req.bearer_auth(&tokens.admin);
        }
        // An empty Authorization value given by the test means: send none.
        for (k, v) in headers
            .iter()
            .filter(|(k, v)| !(k.eq_ignore_ascii_case("authorization") && v.is_empty()))
        {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().ok()?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Some(Reply {
            status,
            json,
            headers,
        })
    }

    /// PUT a JSON value through node `id`.
    pub fn put(&self, id: NodeId, key: &str, value: serde_json::Value) -> Option<Reply> {
        let body = serde_json::json!({"type": "PUT", "value": value}).to_string();
        self.request(id, "POST", &format!("/keys/{key}"), Some(&body), &[])
    }

    /// APPEND a JSON value through node `id`, optionally with an idempotency key.
    pub fn append(
        &self,
        id: NodeId,
        key: &str,
        value: serde_json::Value,
        idem: Option<&str>,
    ) -> Option<Reply> {
        let body = serde_json::json!({"type": "APPEND", "value": value}).to_string();
        let headers: Vec<(&str, &str)> = idem.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        self.request(id, "POST", &format!("/keys/{key}"), Some(&body), &headers)
    }

    /// GET a key's value through node `id` (linearizable). `Some(None)` when absent.
    pub fn get(&self, id: NodeId, key: &str) -> Option<Option<serde_json::Value>> {
        let r = self.request(id, "GET", &format!("/keys/{key}"), None, &[])?;
        match r.status {
            200 => Some(Some(r.json["value"].clone())),
            404 => Some(None),
            _ => None,
        }
    }

    /// Open `GET /watch?{query}` on node `id` (e.g. `key=a&after=3`), with extra headers; the
    /// stream stays open for at most a minute. `None` when the node does not answer.
    pub fn watch(&self, id: NodeId, query: &str, headers: &[(&str, &str)]) -> Option<SseStream> {
        SseStream::open(
            &format!("{}/watch?{query}", self.url(id)),
            headers,
            Duration::from_secs(60),
        )
    }

    /// A node's status, if it answers.
    pub fn status(&self, id: NodeId) -> Option<Status> {
        let r = self.request(id, "GET", "/admin/status", None, &[])?;
        serde_json::from_value(r.json).ok()
    }

    /// The leader, if a majority of its voters (running, unpaused, answering) agree on it, in
    /// the highest term any node reports.
    pub fn leader_id(&self) -> Option<NodeId> {
        let statuses: Vec<Status> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.paused && !n.retired)
            .filter_map(|n| self.status(n.id))
            .collect();
        let term = statuses.iter().map(|s| s.term).max()?;
        let leader = statuses
            .iter()
            .find(|s| s.role == Role::Leader && s.term == term)?;
        let voters = &leader.members;
        let agree = statuses
            .iter()
            .filter(|s| voters.iter().any(|v| v.id == s.id))
            .filter(|s| s.leader.as_ref().map(|l| l.id) == Some(leader.id) && s.term == leader.term)
            .count();
        (agree > voters.len() / 2).then_some(leader.id)
    }

    /// Wait until there is a leader a majority agrees on.
    pub fn wait_for_leader(&self, timeout: Duration) -> NodeId {
        poll(timeout, "a leader", || self.leader_id())
    }

    /// Wait until a leader other than `old` is agreed on.
    pub fn wait_for_new_leader(&self, old: NodeId, timeout: Duration) -> NodeId {
        poll(timeout, "a new leader", || self.leader_id().filter(|l| *l != old))
    }

    /// Wait until node `id` has applied at least `index`.
    pub fn wait_applied(&self, id: NodeId, index: u64, timeout: Duration) {
        poll(timeout, &format!("node {id} to apply index {index}"), || {
            self.status(id)
                .and_then(|s| s.last_applied)
                .filter(|a| *a >= index)
                .map(|_| ())
        })
    }

    /// The membership as the cluster's leader reports it (`GET /admin/members` through node
    /// `via`), if it answers.
    pub fn members_of(&self, via: NodeId) -> Option<kvapi::MembersResponse> {
        let r = self.request(via, "GET", "/admin/members", None, &[])?;
        (r.status == 200)
            .then(|| serde_json::from_value(r.json).ok())
            .flatten()
    }

    /// Wait until, by the leader reached through `via`, the voters are exactly `voters`, no
    /// change is in progress, and every learner is in `learners`.
    pub fn wait_for_members(&self, via: NodeId, voters: &[NodeId], learners: &[NodeId], timeout: Duration) {
        let mut want: Vec<NodeId> = voters.to_vec();
        want.sort_unstable();
        let mut want_learners: Vec<NodeId> = learners.to_vec();
        want_learners.sort_unstable();
        poll(
            timeout,
            &format!("voters {want:?} and learners {want_learners:?}"),
            || {
                let m = self.members_of(via)?;
                let of = |role| {
                    m.members
                        .iter()
                        .filter(|x| x.role == role)
                        .map(|x| x.id)
                        .collect::<Vec<_>>()
                };
                (!m.joint
                    && of(kvapi::MemberRole::Voter) == want
                    && of(kvapi::MemberRole::Learner) == want_learners)
                    .then_some(())
            },
        );
    }

    /// Print every node's log to stderr (the test harness shows it for failing tests).
    pub fn dump_logs(&self) {
        for n in &self.nodes {
            dump_log(&format!("node {}", n.id), &n.log);
        }
    }
}

/// Two free loopback ports for a node.
fn loopback_layout() -> NodeLayout {
    let ports = free_ports(2);
    NodeLayout {
        http: format!("127.0.0.1:{}", ports[0]),
        raft: format!("127.0.0.1:{}", ports[1]),
        launch_prefix: Vec::new(),
    }
}

/// Secure a cluster whose plain cluster file is at `cluster_path`: certificates by `kvnode
/// certs` (the cluster file becomes the one it writes), client certificates, an auth file.
fn secure_files(
    dir: &Path,
    cluster_path: &mut PathBuf,
    file: ClusterFile,
    args: &mut Vec<String>,
    secure: Secure,
) -> (ClusterFile, Option<Tokens>) {
    let mut file = file;
    let tokens = secure.tokens.then(|| Tokens {
        read: new_token(),
        write: new_token(),
        admin: new_token(),
    });
    if secure.tls {
        let certs = dir.join("certs");
        let out = Command::new(kvnode_bin())
            .arg("certs")
            .arg("--cluster")
            .arg(&*cluster_path)
            .arg("--out")
            .arg(&certs)
            .output()
            .expect("run kvnode certs");
        assert!(
            out.status.success(),
            "kvnode certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        *cluster_path = certs.join("cluster.toml");
        file = ClusterFile::load(cluster_path).expect("the cluster file kvnode certs wrote");
        if secure.plain_client_port {
            file.client_tls = false;
            if let Some(tls) = file.tls.as_mut() {
                tls.cert = None;
                tls.key = None;
            }
        }
        if secure.client_certs {
            if let Some(tls) = file.tls.as_mut() {
                tls.client_ca = Some(certs.join("ca.pem"));
            }
            if let Some(client) = file.client.as_mut() {
                client.cert = Some(certs.join("client.pem"));
                client.key = Some(certs.join("client.key"));
            }
        }
    }
    if let Some(tokens) = &tokens {
        let auth = dir.join("auth.toml");
        let text: String = [
            ("reader", "read", &tokens.read),
            ("writer", "write", &tokens.write),
            ("ops", "admin", &tokens.admin),
        ]
        .iter()
        .map(|(name, role, token)| {
            format!(
                "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n\n",
                sha256_hex(token)
            )
        })
        .collect();
        std::fs::write(&auth, text).expect("write the auth file");
        let token_file = dir.join("admin.token");
        std::fs::write(&token_file, format!("{}\n", tokens.admin)).expect("write the token file");
        file.client.get_or_insert_with(Default::default).token_file = Some(token_file);
        args.push("--auth-file".into());
        args.push(auth.display().to_string());
    }
    if secure.tls || secure.tokens {
        *cluster_path = dir.join("secure-cluster.toml");
        std::fs::write(&*cluster_path, file.to_toml()).expect("write the cluster file");
    }
    (file, tokens)
}

/// Print the last 300 lines of a process's log to stderr, under a header naming it.
fn dump_log(name: &str, log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(300)..];
    eprintln!("===== {name} log ({}) =====", log.display());
    for l in tail {
        eprintln!("{l}");
    }
}

/// A process a test started itself (outside a [`Cluster`]): killed when the guard is dropped,
/// and its log printed when the test is failing.
pub struct ChildGuard {
    /// The process.
    pub child: Child,
    name: String,
    log: PathBuf,
}

impl ChildGuard {
    /// Guard `child`, whose output goes to `log`; `name` heads the printed log.
    pub fn new(name: impl Into<String>, child: Child, log: impl Into<PathBuf>) -> ChildGuard {
        ChildGuard {
            child,
            name: name.into(),
            log: log.into(),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            dump_log(&self.name, &self.log);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
