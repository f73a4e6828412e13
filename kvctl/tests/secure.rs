//! kvctl against a secured cluster: TLS with certificates from `kvnode certs`, client
//! certificates, bearer tokens. The whole flow (every command, a piped REPL script and an
//! interactive REPL in a pseudo-terminal) through the cluster file alone; then each refusal,
//! which must name the node and the cause, end at once rather than after the timeout, and
//! never show the token.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rexpect::session::{spawn_with_options, Options};
use serde_json::Value;
use testkit::{free_ports, kvnode_bin, poll, ChildGuard, Cluster, Secure};

/// What one kvctl run produced.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn kvctl(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.args(args)
        .env_remove("KVCTL_CLUSTER")
        .env_remove("KVCTL_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn kvctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("kvctl ran");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

#[track_caller]
fn ok(run: Run) -> String {
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
}

#[test]
fn the_whole_kvctl_flow_over_tls_with_client_certificates_and_a_token() {
    let c = Cluster::start_secure(
        3,
        &[],
        Secure {
            tls: true,
            client_certs: true,
            tokens: true,
            plain_client_port: false,
        },
    );
    let file = c.cluster_file().to_str().expect("utf-8").to_string();
    let cl = |args: &[&str]| {
        let mut all = vec!["--cluster", file.as_str()];
        all.extend_from_slice(args);
        kvctl(&all, &[], "")
    };
    assert!(ok(cl(&["put", "a", r#"["cat","dog"]"#])).starts_with("OK (index "));
    assert!(ok(cl(&["append", "a", "mouse"])).starts_with("OK (index "));
    assert_eq!(ok(cl(&["get", "a"])).trim_end(), r#"["cat","dog","mouse"]"#);
    assert_eq!(
        ok(cl(&["--consistency", "stale", "get", "a"])).trim_end(),
        r#"["cat","dog","mouse"]"#
    );
    assert!(ok(cl(&["keys"])).contains("1 key"));
    let status = ok(cl(&["status"]));
    assert!(status.contains("Quorum: yes (3 of 3 voters answer"), "{status}");
    assert!(ok(cl(&["leader"])).contains("leads (term"));
    // A watch speaks TLS and sends the token like every other command: the two changes
    // since the beginning, then it stops.
    let watched = ok(cl(&["-o", "json", "watch", "a", "--after", "0", "--count", "2"]));
    let kinds: Vec<String> = watched
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")["kind"].to_string())
        .collect();
    assert_eq!(kinds, [r#""put""#, r#""append""#], "{watched}");
    assert!(ok(cl(&["delete", "a"])).starts_with("OK (index "));
    let bench = cl(&[
        "bench",
        "--clients",
        "2",
        "--duration",
        "1s",
        "--workload",
        "append",
        "--target",
        "all",
    ]);
    assert_eq!(bench.code, 0, "{bench:?}");

    // The REPL, piped.
    let script = "put r 1\nappend l x\nget l\nstatus\n";
    let piped = kvctl(&["--cluster", &file, "repl"], &[], script);
    assert_eq!(piped.code, 0, "{piped:?}");
    assert!(piped.stdout.contains(r#"["x"]"#), "{piped:?}");

    // The REPL in a terminal: its prompt asks the leader over TLS, with the token.
    let dir = tempfile::tempdir().expect("dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.arg("--cluster")
        .arg(&file)
        .arg("repl")
        .env("KVCTL_HISTORY", dir.path().join("history"))
        .env("TERM", "xterm")
        .env_remove("RUST_LOG")
        .env_remove("KVCTL_CLUSTER")
        .env_remove("KVCTL_TOKEN");
    let options = Options::new()
        .timeout_ms(Some(30_000))
        .strip_ansi_escape_codes(true);
    let mut repl = spawn_with_options(cmd, options).expect("kvctl repl in a pty");
    repl.exp_regex(r"kv\[leader=\d+ term=\d+\]> ")
        .expect("a prompt naming the leader");
    repl.send("put t 42\r").expect("type");
    repl.flush().expect("flush");
    repl.exp_regex(r"OK \(index \d+\)").expect("the write");
    repl.send("get t\r").expect("type");
    repl.flush().expect("flush");
    repl.exp_string("42").expect("the read");
    repl.send("--token x get t\r").expect("type");
    repl.flush().expect("flush");
    repl.exp_string("chosen when the REPL starts")
        .expect("the token is fixed per session");
    repl.send("exit\r").expect("type");
    repl.flush().expect("flush");
    repl.exp_eof().expect("the REPL ends");
}

#[test]
fn refusals_name_the_node_and_the_cause_at_once_and_never_show_the_token() {
    let c = Cluster::start_secure(3, &[], Secure::all());
    let tokens = c.tokens().expect("tokens").clone();
    let certs = c.certs_dir().expect("certs");
    let ca = certs.join("ca.pem");
    let ca = ca.to_str().expect("utf-8");
    let http = c.http_addr(0);
    let endpoint = format!("https://{http}");
    let secrets = [&tokens.read, &tokens.write, &tokens.admin];
    let never_shows = |run: &Run| {
        for s in secrets {
            assert!(
                !run.stdout.contains(s.as_str()) && !run.stderr.contains(s.as_str()),
                "{run:?}"
            );
        }
    };
    let quick = |run: &Run| assert!(run.took < Duration::from_secs(5), "took {:?}: {run:?}", run.took);

    // With the CA and a token from the environment: fine.
    let fine = kvctl(
        &["--endpoints", &endpoint, "--cacert", ca, "-vv", "put", "k", "1"],
        &[("KVCTL_TOKEN", &tokens.write)],
        "",
    );
    assert_eq!(fine.code, 0, "{fine:?}");
    never_shows(&fine);

    // No CA: the system's roots do not know the cluster's.
    let unknown = kvctl(
        &["--endpoints", &endpoint, "get", "k"],
        &[("KVCTL_TOKEN", &tokens.read)],
        "",
    );
    assert_eq!(unknown.code, 5, "{unknown:?}");
    assert!(
        unknown.stderr.contains(&format!("TLS with node {http} failed")),
        "{unknown:?}"
    );
    assert!(unknown.stderr.contains("unknown CA"), "{unknown:?}");
    assert_eq!(
        unknown.stderr.lines().count(),
        1,
        "kvctl's own message alone, not also the TLS library's log: {unknown:?}"
    );
    quick(&unknown);

    // No token; a token without the role; a token that is not one.
    let none = kvctl(&["--endpoints", &endpoint, "--cacert", ca, "get", "k"], &[], "");
    assert_eq!(none.code, 5, "{none:?}");
    assert!(
        none.stderr.contains("unauthenticated") && none.stderr.contains("--token"),
        "{none:?}"
    );
    quick(&none);
    let weak = kvctl(
        &[
            "--endpoints",
            &endpoint,
            "--cacert",
            ca,
            "-o",
            "json",
            "put",
            "k",
            "2",
        ],
        &[("KVCTL_TOKEN", &tokens.read)],
        "",
    );
    assert_eq!(weak.code, 5, "{weak:?}");
    let error: Value = serde_json::from_str(weak.stderr.trim()).expect("one JSON error");
    assert_eq!(error["error"]["code"], "forbidden", "{weak:?}");
    never_shows(&weak);
    let wrong = kvctl(
        &[
            "--endpoints",
            &endpoint,
            "--cacert",
            ca,
            "--token",
            "not-a-token",
            "get",
            "k",
        ],
        &[],
        "",
    );
    assert_eq!(wrong.code, 5, "{wrong:?}");
    assert!(!wrong.stderr.contains("not-a-token"), "{wrong:?}");

    // Plain HTTP to a TLS cluster.
    let plain = kvctl(
        &["--endpoints", &http, "--timeout", "2s", "get", "k"],
        &[("KVCTL_TOKEN", &tokens.read)],
        "",
    );
    assert_ne!(plain.code, 0, "{plain:?}");
}

/// What kvctl says to a node serving a certificate for `names`, valid from `from` to `to`
/// (years), signed by a CA kvctl trusts.
fn kvctl_against_a_node_serving(names: &[&str], from: i32, to: i32) -> Run {
    let dir = tempfile::tempdir().expect("dir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf = rcgen::CertificateParams::new(names).expect("params");
    leaf.not_before = rcgen::date_time_ymd(from, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(to, 1, 1);
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let ca_path = write("ca.pem", ca_cert.pem());
    let cert_path = write("node.pem", cert.pem());
    let key_path = write("node.key", key.serialize_pem());

    let ports = free_ports(2);
    let http = format!("127.0.0.1:{}", ports[0]);
    let child = Command::new(kvnode_bin())
        .arg(ports[0].to_string())
        .arg(format!("127.0.0.1:{}", ports[1]))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--cert-file")
        .arg(&cert_path)
        .arg("--key-file")
        .arg(&key_path)
        .stderr(std::fs::File::create(dir.path().join("node.log")).expect("log"))
        .spawn()
        .expect("spawn kvnode");
    let _node = ChildGuard::new("node", child, dir.path().join("node.log"));
    poll(Duration::from_secs(30), "the node to listen", || {
        std::net::TcpStream::connect(&http).ok().map(|_| ())
    });
    kvctl(
        &[
            "--endpoints",
            &format!("https://{http}"),
            "--cacert",
            path(&ca_path),
            "get",
            "k",
        ],
        &[],
        "",
    )
}

#[test]
fn an_expired_certificate_is_called_expired() {
    let run = kvctl_against_a_node_serving(&["127.0.0.1"], 2020, 2021);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("expired"), "{run:?}");
}

#[test]
fn a_certificate_for_another_name_is_called_a_name_mismatch() {
    // Valid and signed by the trusted CA, but for another host than the one dialled.
    let run = kvctl_against_a_node_serving(&["db.example"], 2020, 2100);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr.contains("name mismatch") && run.stderr.contains("does not name 127.0.0.1"),
        "{run:?}"
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
