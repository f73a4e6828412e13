//! `api_description.yml` and the running server must agree: every documented route answers,
//! every undocumented method on a documented path is 405, unknown paths are 404, success bodies
//! carry the documented required fields, and the documented error codes are exactly the
//! server's. For conditional writes and the watch stream: the documented headers are sent
//! (`ETag`, `Cache-Control`), the documented 412 and 410 bodies carry their documented fields,
//! and every event of the stream carries the required fields of its documented schema.

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
    // A history of 4 changes, so that a watch from the beginning is soon refused as compacted.
    let c = Cluster::start_with(1, &["--watch-history-changes", "4"]);
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
            let ok = resolve(&spec, &responses[&Yaml::String("200".into())]);
            if !ok["content"]["text/event-stream"].is_badvalue() {
                // A watch needs a query to say what to watch; without one it is a 400.
                assert_eq!(r.status, 400, "{method} {path}: {:?}", r.json);
                check_stream(&spec, &c, &concrete, ok, &documented);
                continue;
            }
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
            assert_eq!(r.status, 200, "{method} {path}: {:?}", r.json);
            assert!(
                r.headers.contains_key("x-request-id"),
                "{method} {path}: every answer carries X-Request-Id"
            );
            let content = ok["content"].as_hash().expect("content");
            let media = content
                .keys()
                .next()
                .and_then(Yaml::as_str)
                .expect("a media type");
            let served = r
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(
                served.starts_with(media),
                "{method} {path}: documented {media}, served {served}"
            );
            if media != "application/json" {
                continue;
            }
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

    check_versions_and_conditions(&spec, &c);

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

/// The required fields of the schema at `schema` (after resolving references).
fn required<'a>(spec: &'a Yaml, schema: &'a Yaml) -> Vec<&'a str> {
    resolve(spec, schema)["required"]
        .as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

/// The headers a documented response (after resolving references) names.
fn documented_headers(spec: &Yaml, response: &Yaml) -> Vec<String> {
    resolve(spec, response)["headers"]
        .as_hash()
        .map(|h| h.keys().filter_map(Yaml::as_str).map(str::to_lowercase).collect())
        .unwrap_or_default()
}

/// `GET /keys/{key}` sends the documented `ETag`, a failed condition answers the documented
/// 412 with its fields and header, and the schema's error fields are the ones sent.
fn check_versions_and_conditions(spec: &Yaml, c: &Cluster) {
    let key_path = &spec["paths"]["/keys/{key}"];
    assert_eq!(
        c.put(0, "spec-key", serde_json::json!([4]))
            .expect("answer")
            .status,
        200
    );
    let r = c.request(0, "GET", "/keys/spec-key", None, &[]).expect("answer");
    assert_eq!(r.status, 200, "{:?}", r.json);
    for header in documented_headers(spec, &key_path["get"]["responses"]["200"]) {
        assert!(
            r.headers.contains_key(header.as_str()),
            "GET lacks documented {header}"
        );
    }
    let mod_index = r.json["mod_index"].as_u64().expect("mod_index");
    assert_eq!(
        r.headers.get("etag").and_then(|v| v.to_str().ok()),
        Some(format!("\"{mod_index}\"").as_str())
    );
    let stale = format!("\"{}\"", mod_index - 1);
    let body = r#"{"type":"PUT","value":0}"#;
    for (method, body) in [("POST", Some(body)), ("DELETE", None)] {
        let r = c
            .request(0, method, "/keys/spec-key", body, &[("If-Match", stale.as_str())])
            .expect("answer");
        let documented = &key_path[method.to_lowercase().as_str()]["responses"]["412"];
        assert!(!documented.is_badvalue(), "{method} documents 412");
        assert_eq!(r.status, 412, "{method}: {:?}", r.json);
        assert_eq!(r.json["error"]["code"], "precondition_failed");
        assert_eq!(r.json["error"]["exists"], true);
        assert_eq!(r.json["error"]["mod_index"], mod_index);
        for header in documented_headers(spec, documented) {
            assert!(
                r.headers.contains_key(header.as_str()),
                "412 lacks documented {header}"
            );
        }
    }
    let r = c
        .request(
            0,
            "POST",
            "/keys/spec-absent",
            Some(body),
            &[("If-Match", "\"1\"")],
        )
        .expect("answer");
    assert_eq!(
        (r.status, &r.json["error"]["exists"]),
        (412, &serde_json::json!(false))
    );
    assert!(r.json["error"].get("mod_index").is_none(), "{:?}", r.json);
    let r = c
        .request(0, "POST", "/keys/spec-absent", Some(body), &[("If-Match", "*")])
        .expect("answer");
    assert_eq!(
        r.status, 400,
        "If-Match: * is documented as refused: {:?}",
        r.json
    );
    // Every field the server put into an error is documented.
    let error_fields = &spec["components"]["schemas"]["ErrorBody"]["properties"]["error"]["properties"];
    for field in r.json["error"].as_object().into_iter().flat_map(|o| o.keys()) {
        assert!(
            !error_fields[field.as_str()].is_badvalue(),
            "undocumented error field {field}"
        );
    }
}

/// The watch stream: its documented 200 header and content type, the required fields of every
/// event's documented schema, and the documented 410 with `oldest_index`.
fn check_stream(spec: &Yaml, c: &Cluster, path: &str, ok: &Yaml, documented: &BTreeSet<u16>) {
    let events = &ok["content"]["text/event-stream"]["x-events"];
    let written = c.put(0, "spec-key", serde_json::json!([3])).expect("answer");
    let index = written.json["index"].as_u64().expect("index");
    let stream = c
        .watch(
            0,
            &format!("key=spec-key&after={}&heartbeat_ms=100", index - 1),
            &[],
        )
        .expect("answer");
    assert_eq!(stream.status, 200, "{path}: {:?}", stream.body);
    assert!(documented.contains(&200));
    for header in documented_headers(spec, ok) {
        assert!(
            stream.headers.contains_key(header.as_str()),
            "{path} lacks documented {header}"
        );
    }
    let first = stream.next(Duration::from_secs(10)).expect("a first event");
    assert_eq!(first.event.as_deref(), Some("heartbeat"), "{first:?}");
    let change = stream.next(Duration::from_secs(10)).expect("the last change");
    assert_eq!(change.event, None, "{change:?}");
    let beat = stream.next(Duration::from_secs(10)).expect("a heartbeat");
    for (event, name) in [(&first, "heartbeat"), (&change, "message"), (&beat, "heartbeat")] {
        let data = event.json();
        for field in required(spec, &events[name]) {
            assert!(data.get(field).is_some(), "{name} event lacks {field}: {event:?}");
        }
        assert_eq!(
            event.id.as_deref(),
            Some(data["index"].to_string().as_str()),
            "{event:?}"
        );
    }
    // The history holds 4 changes: after 10 writes, a watch from the start is refused.
    for i in 0..10 {
        assert_eq!(
            c.put(0, "spec-churn", serde_json::json!(i))
                .expect("answer")
                .status,
            200
        );
    }
    let refused = c.watch(0, "prefix=&after=0", &[]).expect("answer");
    assert_eq!(refused.status, 410);
    assert!(documented.contains(&410));
    let body = refused.body.expect("an error body");
    assert_eq!(body["error"]["code"], "compacted", "{body}");
    let oldest = body["error"]["oldest_index"].as_u64().expect("oldest_index");
    let served = c
        .watch(0, &format!("prefix=&after={}", oldest - 1), &[])
        .expect("answer");
    assert_eq!(
        served.status, 200,
        "oldest_index - 1 is served: {:?}",
        served.body
    );
    let bad = c.watch(0, "key=a&prefix=b", &[]).expect("answer");
    assert_eq!(bad.status, 400);
    assert!(
        !events["error"].is_badvalue(),
        "the closing error event is documented"
    );
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
        let concrete = path.replace("{key}", "spec-key").replace("{id}", "1");
        for method in METHODS {
            let op = &item[*method];
            if op.is_badvalue() {
                continue;
            }
            let responses = op["responses"].as_hash().expect("responses");
            // `security: []` marks an operation open to anyone (health and readiness checks).
            if op["security"].as_vec().is_some_and(|s| s.is_empty()) {
                let r = c
                    .request(
                        0,
                        &method.to_uppercase(),
                        &concrete,
                        None,
                        &[("authorization", "")],
                    )
                    .expect("answer");
                assert!(
                    r.status == 200 || r.status == 503,
                    "{method} {path} is documented as open but answered {}",
                    r.status
                );
                continue;
            }
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
