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
    for (path, item) in paths {
        let path = path.as_str().expect("path string");
        let concrete = path.replace("{key}", "spec-key");
        for method in METHODS {
            let op = &item[*method];
            let body = (*method == "post").then_some(r#"{"type":"APPEND","value":2}"#);
            let r = c
                .request(0, &method.to_uppercase(), &concrete, body, &[])
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
            assert_eq!(r.status, 200, "{method} {path}: {:?}", r.json);
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

/// With an auth file, every documented operation is refused 401 without a token (with the
/// challenge header), and the description documents that answer, and 403, for each.
#[test]
fn the_description_documents_the_answers_of_a_node_with_tokens() {
    let spec = spec();
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"].as_str(),
        Some("bearer")
    );
    let c = Cluster::start_secure(
        1,
        &[],
        testkit::Secure {
            tokens: true,
            ..testkit::Secure::default()
        },
    );
    let paths = spec["paths"].as_hash().expect("paths");
    for (path, item) in paths {
        let path = path.as_str().expect("path string");
        let concrete = path.replace("{key}", "spec-key");
        for method in METHODS {
            let op = &item[*method];
            if op.is_badvalue() {
                continue;
            }
            let responses = op["responses"].as_hash().expect("responses");
            for status in ["401", "403"] {
                assert!(
                    responses.contains_key(&Yaml::String(status.into())),
                    "{method} {path} does not document {status}"
                );
            }
            let r = c
                .request(
                    0,
                    &method.to_uppercase(),
                    &concrete,
                    None,
                    &[("authorization", "")],
                )
                .expect("answer");
            assert_eq!(r.status, 401, "{method} {path}: {:?}", r.json);
            assert_eq!(r.json["error"]["code"], "unauthenticated");
            assert!(r.headers.contains_key("www-authenticate"));
        }
    }
}
