//! `api_description.yml` and the running server must agree: every documented route answers,
//! every undocumented method on a documented path is 405, unknown paths are 404, success bodies
//! carry the documented required fields, and the documented error codes are exactly the
//! server's.

use std::collections::BTreeSet;
use std::time::Duration;

use testkit::Cluster;
use yaml_rust2::{Yaml, YamlLoader};

fn spec() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../api_description.yml");
    let text = std::fs::read_to_string(path).expect("read api_description.yml");
    YamlLoader::load_from_str(&text).expect("valid YAML").remove(0)
}

/// Follow a `$ref` like `#/components/schemas/X` inside the spec.
fn resolve<'a>(spec: &'a Yaml, node: &'a Yaml) -> &'a Yaml {
    match node["$ref"].as_str() {
        Some(r) => {
            let mut cur = spec;
            for part in r.trim_start_matches("#/").split('/') {
                cur = &cur[part];
            }
            resolve(spec, cur)
        }
        None => node,
    }
}

const METHODS: &[&str] = &["get", "post", "put", "delete", "patch"];

/// The body sent with `method` on `path` (the same for documented and undocumented methods).
fn request_body(path: &str, method: &str) -> Option<&'static str> {
    match (path, method) {
        ("/admin/members", "post") => Some(r#"{"id":1,"http":"127.0.0.1:1","raft":"127.0.0.1:2"}"#),
        ("/admin/members/{id}", "put") => Some(r#"{"http":"127.0.0.1:3","raft":"127.0.0.1:4"}"#),
        ("/admin/leader/transfer", "post") => Some("{}"),
        (_, "post") => Some(r#"{"type":"APPEND","value":2}"#),
        _ => None,
    }
}

/// What a one-node cluster answers to the requests of `request_body`, in the description's
/// order: status and error code.
fn expected_answer(path: &str, method: &str) -> (u16, Option<&'static str>) {
    match (path, method) {
        // Learner 1 never started, and was removed just before.
        ("/admin/members/{id}/promote", "post") => (404, Some("member_not_found")),
        // The only voter has nobody to hand leadership to.
        ("/admin/leader/transfer", "post") => (409, Some("member_conflict")),
        _ => (200, None),
    }
}

#[test]
fn the_description_and_the_server_agree() {
    let spec = spec();
    assert_eq!(spec["openapi"].as_str(), Some("3.1.0"));
    let c = Cluster::start(1);
    c.wait_for_leader(Duration::from_secs(20));
    assert_eq!(
        c.put(0, "spec-key", serde_json::json!([1]))
            .expect("answer")
            .status,
        200
    );

    let paths = spec["paths"].as_hash().expect("paths");
    assert!(!paths.is_empty());
    // Operations run in the order of the description, on a one-node cluster: node 1 is added
    // as a learner (it never starts), moved, removed, then promoted (404 by then).
    for (path, item) in paths {
        let path = path.as_str().expect("path string");
        let concrete = path.replace("{key}", "spec-key").replace("{id}", "1");
        for method in METHODS {
            let op = &item[*method];
            let r = c
                .request(
                    0,
                    &method.to_uppercase(),
                    &concrete,
                    request_body(path, method),
                    &[],
                )
                .expect("answer");
            if op.is_badvalue() {
                assert_eq!(
                    r.status, 405,
                    "{method} {path} is undocumented and must be 405: {:?}",
                    r.json
                );
                assert_eq!(r.json["error"]["code"], "method_not_allowed");
                continue;
            }
            let responses = op["responses"].as_hash().expect("responses");
            let documented: BTreeSet<u16> = responses
                .keys()
                .filter_map(|k| k.as_str().and_then(|s| s.parse().ok()))
                .collect();
            assert!(
                documented.contains(&r.status),
                "{method} {path} answered {} which is not documented ({documented:?})",
                r.status
            );
            let expected = expected_answer(path, method);
            assert_eq!(
                (r.status, r.json["error"]["code"].as_str()),
                expected,
                "{method} {path}: {:?}",
                r.json
            );
            if r.status != 200 {
                continue;
            }
            let ok = resolve(&spec, &responses[&Yaml::String("200".into())]);
            let schema = resolve(&spec, &ok["content"]["application/json"]["schema"]);
            for field in schema["required"].as_vec().expect("required fields") {
                let field = field.as_str().expect("field name");
                assert!(
                    r.json.get(field).is_some(),
                    "{method} {path}: missing {field} in {:?}",
                    r.json
                );
            }
        }
    }

    let r = c
        .request(0, "GET", "/undocumented/route", None, &[])
        .expect("answer");
    assert_eq!(
        (r.status, r.json["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Error codes: the documented enum is exactly the server's set, with matching statuses
    // where the description names them.
    let documented: BTreeSet<String> = spec["components"]["schemas"]["ErrorBody"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_vec()
        .expect("code enum")
        .iter()
        .map(|y| y.as_str().expect("code").to_string())
        .collect();
    let server: BTreeSet<String> = kvapi::ErrorCode::ALL
        .iter()
        .map(|c| {
            serde_json::to_value(c)
                .expect("code")
                .as_str()
                .expect("str")
                .to_string()
        })
        .collect();
    assert_eq!(documented, server);
}
