//! The commands: each one calls the [`Client`] and hands the result to [`output`].
//!
//! Output is rendered into memory first and written to stdout in one piece, so a failure
//! halfway never leaves half a table behind, and `status --watch` can replace the whole screen
//! at once instead of flickering line by line.
//!
//! `watch` prints changes as they come until Ctrl-C (or `--count`), which ends it with exit
//! code 0, in one-shot use as in the REPL; `--timeout` bounds how long it keeps trying to reach
//! a node that can serve it, not how long it watches.
//!
//! `status` reports every node and exits 0 while the cluster has a quorum, whatever individual
//! nodes do. Without a leader or a quorum it still prints the full table, then exits 3
//! (unavailable), so monitoring scripts can use the exit code alone. `leader` prints a leader
//! only when a majority of the voters follow it (see [`kvctl::survey`]); a node that merely
//! claims to lead is an error with exit code 3.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::CommandFactory;
use kvctl::client::new_idempotency_key;
use kvctl::output::{self, Format, Style};
use kvctl::survey::{changes, Survey};
use kvctl::watch::{Notice, WatchConfig, Watcher};
use kvctl::{Client, ClientConfig, Exit};

use crate::cli::{Action, Cli, Config, MemberAction};

/// How many leader and term changes `status --watch` keeps on screen.
const WATCH_EVENTS: usize = 8;

/// `status` found the cluster without a leader or quorum; exit code 3 after the table.
#[derive(Debug, thiserror::Error)]
#[error("cluster unavailable: {0}")]
pub struct NoQuorum(pub String);

/// Run the configured command. `pretty`: stdout is a terminal.
pub async fn run(config: Config, pretty: bool) -> anyhow::Result<Exit> {
    if let Action::Completions(shell) = config.action {
        completion_script(shell)?;
        return Ok(Exit::Success);
    }
    if let Action::SnapshotStatus { file } = &config.action {
        let style = Style {
            format: config.format,
            pretty,
        };
        return snapshot_status(file, style).map(|()| Exit::Success);
    }
    let client = connect(
        &config.endpoints,
        config.timeout,
        config.consistency,
        &config.security,
    )?;
    execute(&client, config, pretty).await
}

/// A client for `endpoints` whose operations, retries included, end within `timeout`.
pub fn connect(
    endpoints: &[kvctl::Endpoint],
    timeout: Duration,
    consistency: kvapi::Consistency,
    security: &kvctl::security::Security,
) -> Result<Client, kvctl::ClientError> {
    let mut client_config = ClientConfig::new(endpoints.to_vec());
    client_config.timeout = timeout;
    client_config.consistency = consistency;
    client_config.security = security.clone();
    Client::new(client_config)
}

/// Run the configured command on an existing client. The one-shot commands and the REPL both
/// come here, so a command prints the same in both. `config.endpoints`, `timeout` and
/// `consistency` are those the client was built with.
pub async fn execute(client: &Client, config: Config, pretty: bool) -> anyhow::Result<Exit> {
    let style = Style {
        format: config.format,
        pretty,
    };
    match config.action {
        Action::Write {
            kind,
            key,
            value,
            precondition,
        } => {
            let idempotency_key = new_idempotency_key();
            tracing::debug!(%idempotency_key, ?kind, %key, ?precondition, "writing");
            let outcome = client
                .write_if(&key, kind, value, precondition, &idempotency_key)
                .await?;
            render(|w| output::write_outcome(w, style, &outcome))?;
        }
        Action::Delete { key, precondition } => {
            let outcome = client
                .delete_if(&key, precondition, &new_idempotency_key())
                .await?;
            render(|w| output::write_outcome(w, style, &outcome))?;
        }
        Action::Watch { target, after, count } => {
            let mut watch_config = WatchConfig::new(config.endpoints.clone(), target);
            watch_config.after = after;
            watch_config.reconnect_timeout = config.timeout;
            watch_config.security = config.security.clone();
            follow(watch_config, count, style).await?;
        }
        Action::Get { key } => {
            let response = client.get(&key).await?;
            render(|w| output::value(w, style, &response))?;
        }
        Action::Keys { prefix, limit } => {
            let response = client.keys(&prefix, limit).await?;
            render(|w| output::keys(w, style, &response))?;
            if response.truncated && style.format == Format::Plain {
                eprintln!(
                    "kvctl: warning: only the first {} matching keys are listed; raise --limit",
                    response.keys.len()
                );
            }
        }
        Action::Leader => {
            let leader = client.leader().await?;
            render(|w| output::leader(w, style, &leader))?;
        }
        Action::LeaderTransfer(to) => {
            let moved = client.transfer_leader(to).await?;
            render(|w| output::transferred(w, style, &moved))?;
        }
        Action::Member(action) => {
            let (members, done) = match action {
                MemberAction::List => (client.members().await?, None),
                MemberAction::Add { id, http, raft } => (
                    client.add_member(id, &http, &raft).await?,
                    Some(format!(
                        "node {id} is a learner: it receives the log but does not vote; promote it \
                         with `kvctl member promote {id}` once it has caught up"
                    )),
                ),
                MemberAction::Promote(id) => (
                    client.promote_member(id).await?,
                    Some(format!("node {id} is a voter")),
                ),
                MemberAction::Remove(id) => (
                    client.remove_member(id).await?,
                    Some(format!(
                        "node {id} is no longer a member; stop its process (its data cannot rejoin)"
                    )),
                ),
                MemberAction::Update { id, http, raft } => (
                    client.update_member(id, &http, &raft).await?,
                    Some(format!("node {id} is now at http {http}, raft {raft}")),
                ),
            };
            render(|w| output::members(w, style, &members, done.as_deref()))?;
        }
        Action::Status { watch: None } => {
            let survey = Survey::from_reports(&client.node_statuses().await);
            render(|w| output::status(w, style, &survey))?;
            if let Some(reason) = survey.unavailable_reason() {
                return Err(NoQuorum(reason).into());
            }
        }
        Action::Status { watch: Some(every) } => watch(client, style, every).await?,
        Action::Bench(spec) => {
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let report = kvctl::bench::run(&config.endpoints, &spec, progress).await?;
            render(|w| match style.format {
                Format::Json => serde_json::to_writer_pretty(&mut *w, &report)
                    .map_err(std::io::Error::other)
                    .and_then(|()| writeln!(w)),
                _ => kvctl::bench::write_report(w, &report),
            })?;
            if report.verification.as_ref().is_some_and(|v| !v.passed()) {
                anyhow::bail!("verification failed: acknowledged appends were lost or duplicated");
            }
        }
        Action::Completions(shell) => completion_script(shell)?,
        Action::SnapshotSave { file } => {
            let saved = kvctl::snapshot::save(client, &file).await.map_err(|e| match e {
                // The client's errors keep their exit codes (3: no leader or quorum).
                kvctl::snapshot::SnapshotError::Client(e) => anyhow::Error::from(e),
                other => anyhow::Error::from(other),
            })?;
            render(|w| output::snapshot_saved(w, style, &file, &saved))?;
        }
        Action::SnapshotStatus { file } => snapshot_status(&file, style)?,
        // The REPL handles its own command before it gets here.
        Action::Repl => return Err(crate::cli::UsageError("already in the REPL".into()).into()),
    }
    Ok(Exit::Success)
}

/// `status --watch`: redraw every `every` until Ctrl-C, keeping a short log of leader, term and
/// quorum changes under the table. On a terminal with table output the screen is redrawn in
/// place; otherwise each snapshot is appended, so the output can be logged.
async fn watch(client: &Client, style: Style, every: Duration) -> anyhow::Result<()> {
    let in_place = style.pretty && style.format == Format::Table;
    let mut previous: Option<Survey> = None;
    let mut events: Vec<String> = Vec::new();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let survey = tokio::select! {
            reports = client.node_statuses() => Survey::from_reports(&reports),
            _ = &mut interrupted => break,
        };
        let fresh = previous
            .as_ref()
            .map(|before| changes(before, &survey))
            .unwrap_or_default();
        for event in &fresh {
            events.push(format!("{} {event}", clock()));
        }
        if events.len() > WATCH_EVENTS {
            events.drain(..events.len() - WATCH_EVENTS);
        }

        let mut frame = Vec::new();
        match style.format {
            Format::Table => {
                if in_place {
                    // Cursor home and clear the screen: one redraw per refresh.
                    frame.extend_from_slice(b"\x1b[H\x1b[2J");
                }
                writeln!(
                    frame,
                    "{}  every {}, Ctrl-C to stop",
                    clock(),
                    kvctl::error::format_duration(every)
                )?;
                output::status(&mut frame, style, &survey)?;
                if !events.is_empty() {
                    writeln!(frame, "\nChanges:")?;
                    for event in &events {
                        writeln!(frame, "  {event}")?;
                    }
                }
                if !in_place {
                    writeln!(frame)?;
                }
            }
            // One document or block per refresh; changes are for programs to derive.
            Format::Json => output::status(&mut frame, style, &survey)?,
            Format::Plain => {
                output::status(&mut frame, style, &survey)?;
                writeln!(frame)?;
            }
        }
        emit(&frame)?;
        previous = Some(survey);

        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut interrupted => break,
        }
    }
    Ok(())
}

/// `snapshot status`: describe a snapshot file, or say why it is not a sound one.
fn snapshot_status(file: &std::path::Path, style: Style) -> anyhow::Result<()> {
    let summary = kvctl::snapshot::status(file)?;
    render(|w| output::snapshot_status(w, style, file, &summary))
}

/// `watch`: print each change as it comes, until Ctrl-C or `count` changes. Each event is
/// written and flushed on its own, so a pipe sees it at once. Reconnections are diagnostics
/// (`-v`), not output: the output is exactly the changes, with no gap and no duplicate.
async fn follow(config: WatchConfig, count: Option<u64>, style: Style) -> anyhow::Result<()> {
    let mut watcher = Watcher::new(config)?;
    render(|w| output::watch_header(w, style))?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        let notice = tokio::select! {
            notice = watcher.next() => notice?,
            _ = &mut interrupted => break,
        };
        match notice {
            Notice::Event(event) => {
                render(|w| output::watch_event(w, style, &event))?;
                seen += 1;
            }
            Notice::Connected { node, after } => {
                tracing::debug!(%node, ?after, "watching");
            }
            Notice::Disconnected { node, reason } => {
                tracing::info!(%node, %reason, "watch moves to another node");
            }
            Notice::Progress(_) => {}
        }
    }
    Ok(())
}

/// Print the completion script of `shell`.
fn completion_script(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kvctl", &mut script);
    emit(&script)
}

/// Render into memory, then write to stdout.
fn render(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    f(&mut buffer).context("cannot render the output")?;
    emit(&buffer)
}

/// Write bytes to stdout and flush. A broken pipe surfaces as an io error that `main` treats
/// as success.
fn emit(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(())
}

/// Wall-clock time of day, UTC, `HH:MM:SS`.
fn clock() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02}Z", secs / 3600, (secs % 3600) / 60, secs % 60)
}
