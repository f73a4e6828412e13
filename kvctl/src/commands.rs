//! The commands: each one calls the [`Client`] and hands the result to [`output`].
//!
//! Output is rendered into memory first and written to stdout in one piece, so a failure
//! halfway never leaves half a table behind, and `status --watch` can replace the whole screen
//! at once instead of flickering line by line.
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
use kvctl::{Client, ClientConfig, Exit};

use crate::cli::{Action, Cli, Config};

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
        Action::Write { kind, key, value } => {
            let idempotency_key = new_idempotency_key();
            tracing::debug!(%idempotency_key, ?kind, %key, "writing");
            let outcome = client.write(&key, kind, value, &idempotency_key).await?;
            render(|w| output::write_outcome(w, style, &outcome))?;
        }
        Action::Delete { key } => {
            let outcome = client.delete(&key).await?;
            render(|w| output::write_outcome(w, style, &outcome))?;
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
