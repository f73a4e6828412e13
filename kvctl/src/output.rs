//! Rendering of results, into any `io::Write` so tests can read what a user would see.
//!
//! Three formats, one purpose each:
//!
//! - **table** (the default) is for people: aligned tables with headers, a summary under the
//!   status table, and `OK` lines for writes.
//! - **json** is for programs: one JSON document per command, with the server's field names.
//!   It is indented when stdout is a terminal (so it stays readable when a person looks) and
//!   compact otherwise (one line per document, friendly to `jq` and `grep`).
//! - **plain** is for shell scripts: bare values, one per line, no headers, nothing to strip.
//!
//! Values read with `get` are JSON in both table and plain form: a string prints with its
//! quotes, so what is printed can be fed back to `kvctl put` unchanged and `"42"` is never
//! confused with `42`.

use std::io::{self, Write};

use comfy_table::{presets, Cell, CellAlignment, Table};
use kvapi::{GetResponse, KeysResponse, MemberRole, MembersResponse, TransferLeaderResponse, WatchEvent};
use serde::Serialize;

use crate::client::{LeaderInfo, WriteOutcome};
use crate::survey::{format_response_time, NodeRow, Survey};

/// The output format chosen with `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// For people.
    #[default]
    Table,
    /// For programs.
    Json,
    /// For shell scripts.
    Plain,
}

/// How to render: the format, and whether JSON is indented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// The format.
    pub format: Format,
    /// Indent JSON (stdout is a terminal).
    pub pretty: bool,
}

/// Write `value` as JSON followed by a newline.
pub fn write_json(w: &mut impl Write, value: &impl Serialize, pretty: bool) -> io::Result<()> {
    if pretty {
        serde_json::to_writer_pretty(&mut *w, value)?;
    } else {
        serde_json::to_writer(&mut *w, value)?;
    }
    writeln!(w)
}

/// The JSON form of a write's result.
#[derive(Serialize)]
struct WriteJson<'a> {
    key: &'a str,
    index: u64,
    /// True when an earlier attempt of this write had already been applied.
    replayed: bool,
}

/// Render the result of `put`, `append` or `delete`.
pub fn write_outcome(w: &mut impl Write, style: Style, outcome: &WriteOutcome) -> io::Result<()> {
    let r = &outcome.response;
    match style.format {
        Format::Table => {
            if outcome.replayed {
                writeln!(
                    w,
                    "OK (index {}; an earlier attempt had already applied it)",
                    r.index
                )
            } else {
                writeln!(w, "OK (index {})", r.index)
            }
        }
        Format::Json => write_json(
            w,
            &WriteJson {
                key: &r.key,
                index: r.index,
                replayed: outcome.replayed,
            },
            style.pretty,
        ),
        Format::Plain => writeln!(w, "{}", r.index),
    }
}

/// Render the result of `get`: the value as JSON, or with `-o json` the whole answer.
pub fn value(w: &mut impl Write, style: Style, response: &GetResponse) -> io::Result<()> {
    match style.format {
        Format::Table | Format::Plain => write_json(w, &response.value, style.pretty),
        Format::Json => write_json(w, response, style.pretty),
    }
}

/// Render the result of `keys`.
pub fn keys(w: &mut impl Write, style: Style, response: &KeysResponse) -> io::Result<()> {
    match style.format {
        Format::Plain => {
            for key in &response.keys {
                writeln!(w, "{key}")?;
            }
            Ok(())
        }
        Format::Json => write_json(w, response, style.pretty),
        Format::Table => {
            if !response.keys.is_empty() {
                let mut table = new_table();
                table.set_header(vec!["KEY"]);
                for key in &response.keys {
                    table.add_row(vec![key.as_str()]);
                }
                writeln!(w, "{table}")?;
            }
            let n = response.keys.len();
            let noun = if n == 1 { "key" } else { "keys" };
            if response.truncated {
                writeln!(w, "{n} {noun} shown; more match (raise --limit)")
            } else {
                writeln!(w, "{n} {noun}")
            }
        }
    }
}

/// The first line of `watch` in table form, above the events.
pub fn watch_header(w: &mut impl Write, style: Style) -> io::Result<()> {
    match style.format {
        Format::Table => writeln!(w, "{:>8}  {:<6}  KEY  VALUE", "INDEX", "KIND"),
        Format::Json | Format::Plain => Ok(()),
    }
}

/// Render one change seen by `watch`: a row (table), one compact JSON object per line, the
/// server's own shape (json, for `jq` and scripts), or tab-separated index, kind, key and
/// value (plain; a delete has an empty value). Values are compact JSON in every form.
pub fn watch_event(w: &mut impl Write, style: Style, event: &WatchEvent) -> io::Result<()> {
    let value = || {
        event
            .value
            .as_ref()
            .map(|v| serde_json::to_string(v).unwrap_or_default())
            .unwrap_or_default()
    };
    match style.format {
        Format::Table => {
            let value = if event.value.is_some() {
                value()
            } else {
                "-".into()
            };
            writeln!(
                w,
                "{:>8}  {:<6}  {}  {value}",
                event.index,
                event.kind.as_str(),
                event.key
            )
        }
        Format::Json => write_json(w, event, false),
        Format::Plain => writeln!(
            w,
            "{}\t{}\t{}\t{}",
            event.index,
            event.kind.as_str(),
            event.key,
            value()
        ),
    }
}

/// Render the result of `leader`.
pub fn leader(w: &mut impl Write, style: Style, leader: &LeaderInfo) -> io::Result<()> {
    match style.format {
        Format::Table => writeln!(
            w,
            "node {} at {} leads (term {})",
            leader.id, leader.address, leader.term
        ),
        Format::Json => write_json(w, leader, style.pretty),
        Format::Plain => writeln!(w, "{}\t{}", leader.id, leader.address),
    }
}

/// Render `member list`, and the membership after a change (`done` says what changed). JSON is
/// the list of members; with `-o json` a change is its resulting list too.
pub fn members(w: &mut impl Write, style: Style, m: &MembersResponse, done: Option<&str>) -> io::Result<()> {
    match style.format {
        Format::Json => write_json(w, &m.members, style.pretty),
        Format::Plain => {
            for x in &m.members {
                let fields = [
                    x.id.to_string(),
                    x.role.as_str().to_string(),
                    x.http.clone(),
                    x.raft.clone(),
                    opt(x.matched_index),
                    opt(x.lag),
                ];
                writeln!(w, "{}", fields.join("\t"))?;
            }
            Ok(())
        }
        Format::Table => {
            if let Some(done) = done {
                writeln!(w, "{done}")?;
            }
            let mut table = new_table();
            table.set_header(vec!["ID", "ROLE", "HTTP", "RAFT", "MATCHED", "LAG", "NOTE"]);
            for x in &m.members {
                let role = match (x.role, x.id == m.leader) {
                    (MemberRole::Voter, true) => "voter (leader)",
                    (role, _) => role.as_str(),
                };
                let note = if x.promote_when_caught_up {
                    "lost its data: promoted back once caught up"
                } else {
                    ""
                };
                table.add_row(vec![
                    Cell::new(x.id),
                    Cell::new(role),
                    Cell::new(if x.http.is_empty() { "-" } else { &x.http }),
                    Cell::new(&x.raft),
                    Cell::new(opt(x.matched_index)).set_alignment(CellAlignment::Right),
                    Cell::new(x.lag.map_or("unknown".to_string(), |l| l.to_string()))
                        .set_alignment(CellAlignment::Right),
                    Cell::new(note),
                ]);
            }
            writeln!(w, "{table}")?;
            let voters = m.members.iter().filter(|x| x.role == MemberRole::Voter).count();
            let learners = m.members.len() - voters;
            writeln!(
                w,
                "Cluster {}: {voters} {}, {learners} {}; leader node {}, term {}{}",
                m.cluster_id,
                if voters == 1 { "voter" } else { "voters" },
                if learners == 1 { "learner" } else { "learners" },
                m.leader,
                m.term,
                if m.joint {
                    "; a change is in progress (joint consensus)"
                } else {
                    ""
                }
            )
        }
    }
}

/// Render the result of `leader transfer`.
pub fn transferred(w: &mut impl Write, style: Style, t: &TransferLeaderResponse) -> io::Result<()> {
    match style.format {
        Format::Json => write_json(w, t, style.pretty),
        Format::Plain => writeln!(w, "{}\t{}", t.leader, t.http.as_deref().unwrap_or("-")),
        Format::Table if t.leader == t.previous => {
            writeln!(w, "node {} already leads (term {})", t.leader, t.term)
        }
        Format::Table => writeln!(
            w,
            "node {} leads now{} (term {}), instead of node {}",
            t.leader,
            t.http.as_deref().map(|h| format!(" at {h}")).unwrap_or_default(),
            t.term,
            t.previous
        ),
    }
}

/// Render the result of `status`: the node table and the summary under it.
pub fn status(w: &mut impl Write, style: Style, survey: &Survey) -> io::Result<()> {
    match style.format {
        Format::Json => write_json(w, survey, style.pretty),
        Format::Plain => {
            for n in &survey.nodes {
                let fields = [
                    opt(n.id),
                    n.address.clone(),
                    role_plain(n),
                    opt(n.term),
                    opt(n.last_log_index),
                    opt(n.commit_index),
                    opt(n.last_applied),
                    lag_text(survey, n),
                    format!("{:.1}", n.response_ms),
                    problem(n).unwrap_or_else(|| "-".into()),
                ];
                writeln!(w, "{}", fields.join("\t"))?;
            }
            Ok(())
        }
        Format::Table => {
            let mut table = new_table();
            table.set_header(vec![
                "ID", "ADDRESS", "ROLE", "TERM", "LAST LOG", "COMMIT", "APPLIED", "LAG", "RTT", "ERROR",
            ]);
            for n in &survey.nodes {
                table.add_row(vec![
                    Cell::new(opt(n.id)),
                    Cell::new(&n.address),
                    Cell::new(role_table(n)),
                    Cell::new(opt(n.term)).set_alignment(CellAlignment::Right),
                    Cell::new(opt(n.last_log_index)).set_alignment(CellAlignment::Right),
                    Cell::new(opt(n.commit_index)).set_alignment(CellAlignment::Right),
                    Cell::new(opt(n.last_applied)).set_alignment(CellAlignment::Right),
                    Cell::new(lag_text(survey, n)).set_alignment(CellAlignment::Right),
                    Cell::new(format_response_time(n.response_ms)).set_alignment(CellAlignment::Right),
                    Cell::new(problem(n).unwrap_or_default()),
                ]);
            }
            writeln!(w, "{table}")?;
            writeln!(w, "{}", survey.leader_line())?;
            writeln!(w, "{}", survey.quorum_line())?;
            writeln!(w, "{}", survey.tolerance_line())?;
            for line in survey.membership_lines() {
                writeln!(w, "{line}")?;
            }
            Ok(())
        }
    }
}

/// The LAG column: entries behind the leader; `unknown` when the leader does not know the
/// node's progress (it has not heard from it in its term); `-` when there is no leader to
/// measure it.
fn lag_text(survey: &Survey, n: &NodeRow) -> String {
    match (n.lag, survey.leader) {
        (Some(lag), _) => lag.to_string(),
        (None, Some(_)) => "unknown".into(),
        (None, None) => "-".into(),
    }
}

/// The ERROR column: why the node did not answer, or, for a node that answers but says it
/// cannot serve yet, `not ready: REASON`.
fn problem(n: &NodeRow) -> Option<String> {
    if let Some(e) = &n.error {
        return Some(e.clone());
    }
    match (n.ready, n.not_ready_reason) {
        (Some(false), Some(reason)) => Some(format!("not ready: {}", reason.name())),
        (Some(false), None) => Some("not ready".into()),
        _ => None,
    }
}

/// Render what `snapshot save` wrote.
pub fn snapshot_saved(
    w: &mut impl Write,
    style: Style,
    file: &std::path::Path,
    saved: &crate::snapshot::Saved,
) -> io::Result<()> {
    let s = &saved.summary;
    match style.format {
        Format::Json => write_json(w, saved, style.pretty),
        Format::Plain => writeln!(w, "{}\t{}", opt(s.index), file.display()),
        Format::Table => writeln!(
            w,
            "Saved {} from node {} ({}): index {}, {} keys, {} bytes, checksum {}, verified",
            file.display(),
            saved.node,
            saved.address,
            opt(s.index),
            s.keys,
            s.size,
            s.checksum
        ),
    }
}

/// Render `snapshot status`.
pub fn snapshot_status(
    w: &mut impl Write,
    style: Style,
    file: &std::path::Path,
    s: &kvapi::snapshot::Summary,
) -> io::Result<()> {
    match style.format {
        Format::Json => write_json(
            w,
            &serde_json::json!({
                "file": file.display().to_string(),
                "index": s.index,
                "term": s.term,
                "keys": s.keys,
                "idempotency_records": s.idempotency_records,
                "members": s.members,
                "size": s.size,
                "checksum": s.checksum,
                "verified": true,
            }),
            style.pretty,
        ),
        Format::Plain => writeln!(
            w,
            "{}\t{}\t{}\t{}\tverified",
            opt(s.index),
            s.keys,
            s.size,
            s.checksum
        ),
        Format::Table => {
            let mut table = new_table();
            table.set_header(vec!["INDEX", "TERM", "KEYS", "SIZE", "CHECKSUM", "VERIFIED"]);
            table.add_row(vec![
                Cell::new(opt(s.index)).set_alignment(CellAlignment::Right),
                Cell::new(opt(s.term)).set_alignment(CellAlignment::Right),
                Cell::new(s.keys).set_alignment(CellAlignment::Right),
                Cell::new(s.size).set_alignment(CellAlignment::Right),
                Cell::new(format!("crc32 {}", s.checksum)),
                Cell::new("yes"),
            ]);
            writeln!(w, "{table}")
        }
    }
}

fn new_table() -> Table {
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    table
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The role with the leader marked; a node that claims to lead but is not the surveyed leader
/// (an older term) is marked stale.
fn role_table(n: &NodeRow) -> String {
    match n.role {
        None => "down".into(),
        Some(kvapi::Role::Leader) if n.is_leader => "* leader".into(),
        Some(kvapi::Role::Leader) => "leader (stale term)".into(),
        Some(role) => role.as_str().into(),
    }
}

fn role_plain(n: &NodeRow) -> String {
    match n.role {
        None => "down".into(),
        Some(role) => role.as_str().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survey::tests::{healthy, report, status as node_status};
    use kvapi::{Consistency, Role, WriteResponse};
    use serde_json::json;

    fn render(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).expect("rendering into memory cannot fail");
        String::from_utf8(out).expect("utf-8")
    }

    const TABLE: Style = Style {
        format: Format::Table,
        pretty: false,
    };
    const JSON: Style = Style {
        format: Format::Json,
        pretty: false,
    };
    const PRETTY: Style = Style {
        format: Format::Json,
        pretty: true,
    };
    const PLAIN: Style = Style {
        format: Format::Plain,
        pretty: false,
    };

    fn get_response() -> GetResponse {
        GetResponse {
            key: "pets".into(),
            value: json!(["cat", "dog"]),
            consistency: Consistency::Linearizable,
            served_by: 1,
            applied_index: Some(7),
            create_index: 3,
            mod_index: 6,
            version: 2,
        }
    }

    #[test]
    fn get_prints_the_value_as_json() {
        let r = get_response();
        assert_eq!(render(|w| value(w, TABLE, &r)), "[\"cat\",\"dog\"]\n");
        assert_eq!(render(|w| value(w, PLAIN, &r)), "[\"cat\",\"dog\"]\n");
        let pretty = Style {
            format: Format::Plain,
            pretty: true,
        };
        assert_eq!(render(|w| value(w, pretty, &r)), "[\n  \"cat\",\n  \"dog\"\n]\n");
        let full = render(|w| value(w, JSON, &r));
        let parsed: serde_json::Value = serde_json::from_str(&full).expect("json");
        assert_eq!(
            parsed,
            json!({"key":"pets","value":["cat","dog"],"consistency":"linearizable",
                   "served_by":1,"applied_index":7,"create_index":3,"mod_index":6,"version":2})
        );
        assert_eq!(full.lines().count(), 1, "compact json is one line");
        assert!(render(|w| value(w, PRETTY, &r)).lines().count() > 1);
    }

    #[test]
    fn strings_keep_their_quotes() {
        let mut r = get_response();
        r.value = json!("Kyle Chard");
        assert_eq!(render(|w| value(w, PLAIN, &r)), "\"Kyle Chard\"\n");
    }

    #[test]
    fn writes_render_in_each_format() {
        let mut outcome = WriteOutcome {
            response: WriteResponse {
                key: "k".into(),
                index: 17,
            },
            replayed: false,
            idempotency_key: "id".into(),
            attempts: 1,
        };
        assert_eq!(render(|w| write_outcome(w, TABLE, &outcome)), "OK (index 17)\n");
        assert_eq!(render(|w| write_outcome(w, PLAIN, &outcome)), "17\n");
        assert_eq!(
            render(|w| write_outcome(w, JSON, &outcome)),
            "{\"key\":\"k\",\"index\":17,\"replayed\":false}\n"
        );
        outcome.replayed = true;
        assert!(render(|w| write_outcome(w, TABLE, &outcome)).contains("earlier attempt"));
    }

    #[test]
    fn keys_render_in_each_format() {
        let r = KeysResponse {
            keys: vec!["a".into(), "b/c".into()],
            truncated: false,
            consistency: Consistency::Linearizable,
            applied_index: Some(3),
        };
        assert_eq!(render(|w| keys(w, PLAIN, &r)), "a\nb/c\n");
        let table = render(|w| keys(w, TABLE, &r));
        assert!(table.contains("KEY") && table.contains("b/c"), "{table}");
        assert!(table.ends_with("2 keys\n"), "{table}");
        let parsed: KeysResponse = serde_json::from_str(&render(|w| keys(w, JSON, &r))).expect("json");
        assert_eq!(parsed, r);

        let empty = KeysResponse {
            keys: vec![],
            truncated: false,
            ..r.clone()
        };
        assert_eq!(render(|w| keys(w, PLAIN, &empty)), "");
        assert_eq!(render(|w| keys(w, TABLE, &empty)), "0 keys\n");
        let truncated = KeysResponse { truncated: true, ..r };
        assert!(render(|w| keys(w, TABLE, &truncated)).contains("raise --limit"));
    }

    #[test]
    fn watch_events_render_in_each_format() {
        let put = WatchEvent {
            index: 12,
            kind: kvapi::ChangeKind::Put,
            key: "config".into(),
            value: Some(json!({"level": "debug"})),
        };
        let gone = WatchEvent {
            index: 13,
            kind: kvapi::ChangeKind::Delete,
            key: "config".into(),
            value: None,
        };
        let both = |style| {
            render(|w| {
                watch_header(w, style)?;
                watch_event(w, style, &put)?;
                watch_event(w, style, &gone)
            })
        };
        assert_eq!(
            both(TABLE),
            "   INDEX  KIND    KEY  VALUE\n      12  put     config  {\"level\":\"debug\"}\n      13  delete  config  -\n"
        );
        assert_eq!(
            both(PRETTY),
            "{\"index\":12,\"kind\":\"put\",\"key\":\"config\",\"value\":{\"level\":\"debug\"}}\n\
             {\"index\":13,\"kind\":\"delete\",\"key\":\"config\"}\n",
            "one object per line even on a terminal"
        );
        assert_eq!(
            both(PLAIN),
            "12\tput\tconfig\t{\"level\":\"debug\"}\n13\tdelete\tconfig\t\n"
        );
    }

    #[test]
    fn leader_renders_in_each_format() {
        let l = LeaderInfo {
            id: 2,
            address: "127.0.0.1:8082".into(),
            term: 5,
        };
        assert_eq!(
            render(|w| leader(w, TABLE, &l)),
            "node 2 at 127.0.0.1:8082 leads (term 5)\n"
        );
        assert_eq!(render(|w| leader(w, PLAIN, &l)), "2\t127.0.0.1:8082\n");
        assert_eq!(
            render(|w| leader(w, JSON, &l)),
            "{\"id\":2,\"address\":\"127.0.0.1:8082\",\"term\":5}\n"
        );
    }

    #[test]
    fn status_table_has_every_node_the_marked_leader_and_a_summary() {
        let mut reports = healthy();
        reports[2] = report(2, Err("connection refused"));
        let survey = Survey::from_reports(&reports);
        let out = render(|w| status(w, TABLE, &survey));
        for header in [
            "ID", "ADDRESS", "ROLE", "TERM", "LAST LOG", "COMMIT", "APPLIED", "LAG",
        ] {
            assert!(out.contains(header), "missing {header}:\n{out}");
        }
        assert!(out.contains("* leader"), "{out}");
        assert!(out.contains("connection refused"), "{out}");
        assert!(out.contains("down"), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        let n = lines.len();
        assert_eq!(lines[n - 3], "Leader: node 0 (127.0.0.1:8000), term 3");
        assert_eq!(lines[n - 2], "Quorum: yes (2 of 3 voters answer, 2 needed)");
        assert!(lines[n - 1].starts_with("Fault tolerance: none"));
        let row = |id: &str| {
            lines
                .iter()
                .find(|l| l.contains(&format!("127.0.0.1:800{id}")))
                .copied()
                .unwrap_or_default()
        };
        assert!(row("0").contains("* leader") && row("1").contains("follower"));
    }

    #[test]
    fn a_node_that_answers_but_is_not_ready_is_marked() {
        let readiness = |node, ready, reason| {
            Some(Ok(kvapi::ops::Readiness {
                node,
                ready,
                reason,
                message: None,
                leader: Some(0),
                leader_commit: Some(10),
                applied_index: Some(3),
            }))
        };
        let mut reports = healthy();
        reports[0].ready = readiness(0, true, None);
        reports[1].ready = readiness(1, false, Some(kvapi::ops::NotReadyReason::CatchingUp));
        reports[2].ready = Some(Err("HTTP 404: no route".into()));
        let survey = Survey::from_reports(&reports);
        assert_eq!(
            survey.nodes.iter().map(|n| n.ready).collect::<Vec<_>>(),
            vec![Some(true), Some(false), None]
        );
        let out = render(|w| status(w, TABLE, &survey));
        let row = |id: &str| {
            out.lines()
                .find(|l| l.contains(&format!("127.0.0.1:800{id}")))
                .unwrap_or_default()
                .to_string()
        };
        assert!(row("1").contains("not ready: catching_up"), "{out}");
        assert!(
            !row("0").contains("not ready") && !row("2").contains("not ready"),
            "{out}"
        );
        assert!(
            out.contains("Quorum: yes (3 of 3"),
            "a node catching up still votes:\n{out}"
        );
        let plain = render(|w| status(w, PLAIN, &survey));
        assert!(
            plain
                .lines()
                .nth(1)
                .unwrap_or_default()
                .ends_with("not ready: catching_up"),
            "{plain}"
        );
    }

    #[test]
    fn status_plain_is_one_tab_separated_line_per_node() {
        let survey = Survey::from_reports(&healthy());
        let out = render(|w| status(w, PLAIN, &survey));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        let fields: Vec<&str> = lines[1].split('\t').collect();
        assert_eq!(
            &fields[..8],
            &["1", "127.0.0.1:8001", "follower", "3", "10", "10", "10", "1"]
        );
        assert_eq!(fields[9], "-");
    }

    #[test]
    fn an_unknown_lag_says_so_and_no_leader_shows_none() {
        let mut leader = node_status(0, Role::Leader, 3, Some(0));
        if let Some(followers) = leader.followers.as_mut() {
            followers[1].matched_index = None;
            followers[1].lag = None;
        }
        let survey = Survey::from_reports(&[
            report(0, Ok(leader)),
            report(1, Ok(node_status(1, Role::Follower, 3, Some(0)))),
            report(2, Err("connection refused")),
        ]);
        let plain = render(|w| status(w, PLAIN, &survey));
        let lags: Vec<&str> = plain
            .lines()
            .map(|l| l.split('\t').nth(7).unwrap_or(""))
            .collect();
        assert_eq!(lags, ["0", "1", "unknown"], "{plain}");
        let table = render(|w| status(w, TABLE, &survey));
        let row = table
            .lines()
            .find(|l| l.contains("127.0.0.1:8002"))
            .unwrap_or_default();
        assert!(row.contains("unknown"), "{table}");
        let json: serde_json::Value =
            serde_json::from_str(&render(|w| status(w, JSON, &survey))).expect("json");
        assert_eq!(json["nodes"][2]["lag"], serde_json::Value::Null);

        let leaderless = Survey::from_reports(&[
            report(0, Err("connection refused")),
            report(1, Ok(node_status(1, Role::Candidate, 5, None))),
            report(2, Err("connection refused")),
        ]);
        let plain = render(|w| status(w, PLAIN, &leaderless));
        assert!(
            plain.lines().all(|l| l.split('\t').nth(7) == Some("-")),
            "{plain}"
        );
    }

    #[test]
    fn status_json_carries_rows_and_summary() {
        let reports = vec![
            report(0, Err("connection refused")),
            report(1, Ok(node_status(1, Role::Candidate, 5, None))),
            report(2, Err("connection refused")),
        ];
        let survey = Survey::from_reports(&reports);
        let out = render(|w| status(w, JSON, &survey));
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["quorum"], json!(false));
        assert_eq!(v["leader"], json!(null));
        assert_eq!(v["nodes"].as_array().map(Vec::len), Some(3));
        assert_eq!(v["nodes"][0]["error"], json!("connection refused"));
        assert_eq!(v["nodes"][1]["role"], json!("candidate"));
    }
}
