//! Network namespaces: one per node, so that partitions cut real peer traffic.
//!
//! On loopback every node shares one network stack, and the only way to "partition" would be to
//! stop answering client requests, which tests nothing about Raft. Instead, as root, each node
//! runs in its own namespace with its own address, all wired to one bridge in the root
//! namespace:
//!
//! ```text
//!   root namespace (clients, harness)  10.213.R.254 on bridge kvc<pid><x>br
//!      |-- veth kvc<pid><x>h0 <-> kvc<pid><x>p0  in namespace kvc<pid><x>n0: 10.213.R.1
//!      |-- veth kvc<pid><x>h1 <-> kvc<pid><x>p1  in namespace kvc<pid><x>n1: 10.213.R.2
//!      ...
//! ```
//!
//! A node is started as `ip netns exec kvc<pid><x>n<i> kvnode ...` (which `exec`s kvnode, so
//! SIGKILL and SIGSTOP still reach the node itself), and listens on its namespace's address.
//! Cutting the link between nodes `a` and `b` adds `blackhole` routes for the other's address
//! inside both namespaces: peer RPCs and forwarded client requests between them are dropped in
//! both directions, while the harness's clients, which come from the bridge address, still reach
//! every node. Healing deletes the routes. Nothing outside the namespaces and links this harness
//! created is touched.
//!
//! Names carry the harness's pid and a per-process letter, so parallel runs never collide, and
//! [`Netns::create`] first deletes leftovers of crashed runs whose pid no longer exists. The
//! subnet's third octet is chosen among those no interface on the host uses yet.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Prefix of every namespace and link this module creates.
pub const PREFIX: &str = "kvc";

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip` could not be run at all: install iproute2.
    #[error("cannot run `ip {args}`: {source}")]
    Spawn {
        /// The arguments.
        args: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `ip` ran and refused; usually missing privileges (run as root) or a name clash.
    #[error("`ip {args}` failed: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What `ip` said.
        stderr: String,
    },
    /// Every 10.213.x.0/24 subnet is in use on this host.
    #[error("no free 10.213.x.0/24 subnet on this host")]
    NoSubnet,
}

/// True when this process can build network namespaces: it runs as root and iproute2's `ip`
/// works. Without either, partitions are skipped (with a message) instead of failing.
pub fn can_make_namespaces() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() == 0 };
    root && ip(&["-V"]).is_ok()
}

/// Run `ip` with `args` and return its stdout.
fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// One node's namespace.
#[derive(Debug, Clone)]
pub struct NodeNet {
    /// The namespace's name.
    pub namespace: String,
    /// The node's address inside it.
    pub addr: Ipv4Addr,
}

/// The namespaces, bridge and links of one cluster; removed on drop.
#[derive(Debug)]
pub struct Netns {
    tag: String,
    bridge: String,
    nodes: Vec<NodeNet>,
    cuts: BTreeSet<(usize, usize)>,
}

/// Serialises subnet choice and creation within this process.
static CREATE: Mutex<()> = Mutex::new(());
/// Distinguishes the clusters of one process.
static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Create `n` namespaces wired to a fresh bridge. Leftovers of dead earlier runs are
    /// removed first.
    pub fn create(n: usize) -> Result<Netns, NetnsError> {
        let _guard = CREATE.lock().unwrap_or_else(|p| p.into_inner());
        remove_leftovers();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let letter = (b'a' + (k % 26) as u8) as char;
        let tag = format!("{PREFIX}{}{letter}", std::process::id());
        let octet = free_octet()?;
        let mut net = Netns {
            bridge: format!("{tag}br"),
            tag,
            nodes: Vec::new(),
            cuts: BTreeSet::new(),
        };
        // From here on, a failure drops `net`, which removes whatever was created.
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.213.{octet}.254/24"),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for i in 0..n {
            let namespace = format!("{}n{i}", net.tag);
            let host = format!("{}h{i}", net.tag);
            let peer = format!("{}p{i}", net.tag);
            let addr = Ipv4Addr::new(10, 213, octet, i as u8 + 1);
            ip(&["netns", "add", &namespace])?;
            net.nodes.push(NodeNet {
                namespace: namespace.clone(),
                addr,
            });
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &host, "master", &net.bridge])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["link", "set", &peer, "netns", &namespace])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["-n", namespace.as_str()];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &format!("{addr}/24"), "dev", &peer])?;
            inside(&["link", "set", &peer, "up"])?;
            inside(&["link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// The nodes' namespaces, by node index.
    pub fn nodes(&self) -> &[NodeNet] {
        &self.nodes
    }

    /// The command prefix that runs a program inside node `i`'s namespace.
    pub fn launch_prefix(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.nodes[i].namespace.clone(),
        ]
    }

    /// Cut all traffic between nodes `a` and `b`, both directions. Cutting a cut link is a no-op.
    pub fn cut(&mut self, a: usize, b: usize) -> Result<(), NetnsError> {
        let pair = (a.min(b), a.max(b));
        if a == b || self.cuts.contains(&pair) {
            return Ok(());
        }
        self.route("add", a, b)?;
        self.cuts.insert(pair);
        self.route("add", b, a)
    }

    /// Restore traffic between `a` and `b`.
    pub fn mend(&mut self, a: usize, b: usize) -> Result<(), NetnsError> {
        let pair = (a.min(b), a.max(b));
        if !self.cuts.remove(&pair) {
            return Ok(());
        }
        // Both routes are attempted even if one fails, so that a heal is as complete as possible.
        let first = self.route("del", a, b);
        let second = self.route("del", b, a);
        first.and(second)
    }

    /// Cut every link between the two groups.
    pub fn split(&mut self, left: &[usize], right: &[usize]) -> Result<(), NetnsError> {
        for &a in left {
            for &b in right {
                self.cut(a, b)?;
            }
        }
        Ok(())
    }

    /// Restore every cut link.
    pub fn heal(&mut self) -> Result<(), NetnsError> {
        let mut result = Ok(());
        for (a, b) in self.cuts.clone() {
            if let Err(e) = self.mend(a, b) {
                result = Err(e);
            }
        }
        result
    }

    /// The links currently cut, as (lower, higher) node index pairs.
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        self.cuts.iter().copied().collect()
    }

    /// Add or delete, inside `from`'s namespace, the blackhole route to `to`'s address. A
    /// delete of a route that is already gone counts as done.
    fn route(&self, verb: &str, from: usize, to: usize) -> Result<(), NetnsError> {
        let target = format!("{}/32", self.nodes[to].addr);
        match ip(&[
            "-n",
            &self.nodes[from].namespace,
            "route",
            verb,
            "blackhole",
            &target,
        ]) {
            Err(NetnsError::Failed { stderr, .. }) if verb == "del" && stderr.contains("No such process") => {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end inside it and with it the pair.
        for node in &self.nodes {
            let _ = ip(&["netns", "del", &node.namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// The pid embedded in one of our names (`kvc<pid><letter>...`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].chars().next()?;
    if !after.is_ascii_lowercase() {
        return None;
    }
    digits.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Delete namespaces and links of earlier runs whose process is gone.
fn remove_leftovers() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if owner_pid(name).is_some_and(|pid| !pid_alive(pid)) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for line in list.lines() {
            // "12: kvc123abr: <...>" or "13: kvc123ah0@if2: <...>"
            let Some(name) = line.split(':').nth(1).map(str::trim) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if owner_pid(name).is_some_and(|pid| !pid_alive(pid)) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// A third octet for 10.213.x.0/24 that no address on the host uses; starts at a pid-derived
/// place so that concurrent processes rarely even race for the same one.
fn free_octet() -> Result<u8, NetnsError> {
    let used = ip(&["-o", "-4", "addr", "show"])?;
    let start = std::process::id() % 250;
    (0..250)
        .map(|i| ((start + i) % 250) as u8)
        .find(|o| !used.contains(&format!("10.213.{o}.")))
        .ok_or(NetnsError::NoSubnet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_names_carry_the_owner_pid() {
        assert_eq!(owner_pid("kvc1234an0"), Some(1234));
        assert_eq!(owner_pid("kvc99zbr"), Some(99));
        assert_eq!(owner_pid("kvc1234"), None);
        assert_eq!(owner_pid("kvcx"), None);
        assert_eq!(owner_pid("eth0"), None);
    }

    #[test]
    fn partitions_cut_peer_traffic_and_heal() {
        if !can_make_namespaces() {
            eprintln!("not root: skipping the network namespace test");
            return;
        }
        let mut net = Netns::create(3).expect("namespaces");
        let reachable = |net: &Netns, from: usize, to: usize| {
            let target = net.nodes()[to].addr.to_string();
            ip(&["-n", &net.nodes()[from].namespace, "route", "get", &target]).is_ok()
        };
        assert!(reachable(&net, 0, 1));
        net.split(&[0], &[1, 2]).expect("split");
        assert!(!reachable(&net, 0, 1) && !reachable(&net, 1, 0));
        assert!(!reachable(&net, 2, 0));
        assert!(reachable(&net, 1, 2), "the majority still talks");
        assert_eq!(net.cuts(), vec![(0, 1), (0, 2)]);
        net.heal().expect("heal");
        assert!(reachable(&net, 0, 1) && reachable(&net, 2, 0));
        let names: Vec<String> = net.nodes().iter().map(|n| n.namespace.clone()).collect();
        drop(net);
        let list = ip(&["netns", "list"]).expect("list");
        assert!(
            names.iter().all(|n| !list.contains(n.as_str())),
            "removed on drop: {list}"
        );
    }
}
