//! `kvctl`: the operator's command-line client of a kvnode cluster.
//!
//! `main` is deliberately thin: parse the command line, validate it into a [`cli::Config`], run
//! the command, and turn the outcome into one of the documented exit codes. Errors are printed
//! here and only here: as one line on stderr starting with `kvctl:`, or, with `-o json`, as one
//! JSON object in the server's error shape (`{"error":{"code":...,"message":...}}`), so that a
//! program never has to parse prose. Results go to stdout through [`kvctl::output`]. A closed
//! stdout (`kvctl keys | head -1`) ends the command quietly with success: the reader has all it
//! wanted.

mod cli;
mod commands;
mod repl;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use kvctl::{ClientError, Exit};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match cli::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let errors = Errors {
                json: json_requested(&args),
                ..Errors::default()
            };
            return clap_error(e, &errors).into();
        }
    };
    let mut errors = Errors {
        json: cli.output == cli::OutputArg::Json,
        ..Errors::default()
    };
    let env_cluster = std::env::var_os(cli::CLUSTER_ENV)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    let env_token = std::env::var(cli::TOKEN_ENV).ok();
    let config = match cli::Config::from_env(cli, &mut std::io::stdin().lock(), env_cluster, env_token) {
        Ok(config) => config,
        Err(e) => return report(&anyhow::Error::from(e), &errors).into(),
    };
    init_diagnostics(config.verbosity);
    tracing::debug!("{}", config.source.describe(&config.endpoints));
    tracing::debug!(
        tls = config.security.https,
        token = config.security.token.is_some(),
        "security"
    );
    if config.source == cli::ClusterSource::LocalDefault {
        errors.unavailable_hint = Some(
            "; no cluster file was given or found, so this was the local default cluster \
             (127.0.0.1:8080-8082): start it with bin/cluster.sh start, or give --cluster FILE"
                .into(),
        );
    }

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kvctl: cannot start the async runtime: {e}");
            return Exit::Other.into();
        }
    };
    if matches!(config.action, cli::Action::Repl) {
        return repl::run(config, &runtime).into();
    }
    let pretty = std::io::stdout().is_terminal();
    match runtime.block_on(commands::run(config, pretty)) {
        Ok(exit) => exit.into(),
        Err(e) => report(&e, &errors).into(),
    }
}

/// How errors are printed.
#[derive(Debug, Clone, Default)]
struct Errors {
    /// One JSON object instead of a `kvctl:` line (`-o json`).
    json: bool,
    /// Appended to the message of an "unavailable" error.
    unavailable_hint: Option<String>,
}

/// Print an error (one line, or one JSON object) and choose its exit code.
fn report(error: &anyhow::Error, errors: &Errors) -> Exit {
    if is_broken_pipe(error) {
        return Exit::Success;
    }
    let client_error = error.downcast_ref::<ClientError>();
    let exit = if let Some(e) = client_error {
        e.exit()
    } else if error.downcast_ref::<commands::NoQuorum>().is_some() {
        Exit::Unavailable
    } else if error.downcast_ref::<cli::UsageError>().is_some() {
        Exit::Usage
    } else {
        Exit::Other
    };
    let message = message_of(error, exit, errors);
    let code = match (client_error, exit) {
        (Some(e), _) => e.code(),
        (None, Exit::Usage) => "usage".into(),
        (None, Exit::Unavailable) => "unavailable".into(),
        (None, _) => "other".into(),
    };
    let mut extra = serde_json::Map::new();
    match client_error {
        Some(ClientError::OutcomeUnknown { idempotency_key, .. }) => {
            extra.insert("idempotency_key".into(), idempotency_key.as_str().into());
        }
        Some(ClientError::PreconditionFailed { current, .. }) => {
            extra.insert("exists".into(), current.is_some().into());
            if let Some(index) = current {
                extra.insert("mod_index".into(), (*index).into());
            }
        }
        _ => {}
    }
    print_error_with(errors.json, &code, &message, extra);
    exit
}

/// The whole chain of `error`, with the hint for an unavailable cluster when nobody answered:
/// a cluster that answers without a quorum is running, and telling its operator to start it
/// would send them the wrong way.
fn message_of(error: &anyhow::Error, exit: Exit, errors: &Errors) -> String {
    let mut message = format!("{error:#}");
    if let (Exit::Unavailable, Some(hint)) = (exit, &errors.unavailable_hint) {
        if message.contains("no node answered") {
            message.push_str(hint);
        }
    }
    message
}

/// Print one error to stderr: `kvctl: MESSAGE`, or for programs
/// `{"error":{"code":CODE,"message":MESSAGE[,"idempotency_key":KEY]}}`.
fn print_error(json: bool, code: &str, message: &str, idempotency_key: Option<&str>) {
    let mut extra = serde_json::Map::new();
    if let Some(key) = idempotency_key {
        extra.insert("idempotency_key".into(), key.into());
    }
    print_error_with(json, code, message, extra);
}

/// [`print_error`] with any fields after `code` and `message` (for programs; the line for
/// people says it all in its message).
fn print_error_with(
    json: bool,
    code: &str,
    message: &str,
    extra: serde_json::Map<String, serde_json::Value>,
) {
    if json {
        let mut detail = serde_json::json!({"code": code, "message": message});
        for (k, v) in extra {
            detail[k] = v;
        }
        eprintln!("{}", serde_json::json!({ "error": detail }));
    } else {
        eprintln!("kvctl: {message}");
    }
}

/// Whether the command line asks for JSON output, read off the raw arguments for the errors
/// that clap finds before there is a parsed `-o`. The last `-o` wins, as in clap.
fn json_requested(args: &[OsString]) -> bool {
    let mut json = false;
    let mut words = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(word) = words.next() {
        match word.as_ref() {
            "--" => break,
            "-o" | "--output" => json = words.next().is_some_and(|v| v == "json"),
            w if w.starts_with("--output=") => json = w == "--output=json",
            w if w.starts_with("-o") && !w.starts_with("--") => json = w == "-ojson",
            _ => {}
        }
    }
    json
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Help and version go to stdout with success; grammar errors become one `kvctl:` line (or JSON
/// object) and exit code 2, like every other usage error.
fn clap_error(error: clap::Error, errors: &Errors) -> Exit {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            // A closed stdout while printing help is not worth reporting.
            let _ = error.print();
            Exit::Success
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            Exit::Usage
        }
        _ => {
            let message = format!("{} (see kvctl --help)", one_line(&error.render().to_string()));
            print_error(errors.json, "usage", &message, None);
            Exit::Usage
        }
    }
}

/// The first paragraph of clap's message (the cause, without tips and usage) on one line.
fn one_line(rendered: &str) -> String {
    let paragraph: Vec<&str> = rendered
        .trim_start()
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let text = paragraph.join(" ");
    match text.strip_prefix("error: ") {
        Some(rest) => rest.to_string(),
        None if text.is_empty() => "invalid command line".to_string(),
        None => text,
    }
}

/// Diagnostics on stderr: warnings by default, kvctl's debug events with `-v`, everything with
/// `-vv`. `RUST_LOG`, when set, wins. rustls logs a refused certificate as an error of its
/// own; kvctl's error message says the same with the node's name, so by default rustls is quiet.
fn init_diagnostics(verbosity: u8) {
    let default = match verbosity {
        0 => "warn,rustls=off",
        1 => "kvctl=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  <KEY>\n\n\
                        Usage: kvctl get <KEY>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered),
            "the following required arguments were not provided: <KEY>"
        );
        let rendered = "error: unexpected argument '--bogus' found\n\n  tip: use '-- --bogus'\n";
        assert_eq!(one_line(rendered), "unexpected argument '--bogus' found");
        assert_eq!(one_line(""), "invalid command line");
    }

    #[test]
    fn grammar_errors_exit_with_the_usage_code() {
        let err = cli::Cli::try_parse_from(["kvctl", "frobnicate"]).expect_err("unknown");
        assert_eq!(clap_error(err, &Errors::default()), Exit::Usage);
    }

    #[test]
    fn errors_map_to_exit_codes_and_broken_pipes_are_success() {
        let errors = Errors::default();
        let not_found = anyhow::Error::from(ClientError::NotFound { key: "k".into() });
        assert_eq!(report(&not_found, &errors), Exit::NotFound);
        let usage = anyhow::Error::from(cli::UsageError("bad".into()));
        assert_eq!(report(&usage, &errors), Exit::Usage);
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(report(&pipe, &errors), Exit::Success);
        let no_quorum = anyhow::Error::from(commands::NoQuorum("no leader".into()));
        assert_eq!(report(&no_quorum, &errors), Exit::Unavailable);
        let other = anyhow::anyhow!("something else");
        assert_eq!(report(&other, &errors), Exit::Other);
    }

    #[test]
    fn the_default_cluster_hint_comes_only_when_nobody_answered() {
        let errors = Errors {
            json: false,
            unavailable_hint: Some("; HINT".into()),
        };
        let unavailable = |reason: &str| {
            anyhow::Error::from(ClientError::Unavailable {
                reason: reason.into(),
                waited: std::time::Duration::from_secs(1),
            })
        };
        let silent = unavailable("no node answered (127.0.0.1:8080: connection refused)");
        assert!(message_of(&silent, Exit::Unavailable, &errors).ends_with("; HINT"));
        let no_quorum = unavailable("node 0 claims to lead term 1, but only 1 of 3 voters answer");
        assert!(!message_of(&no_quorum, Exit::Unavailable, &errors).contains("HINT"));
        assert!(!message_of(&silent, Exit::Unavailable, &Errors::default()).contains("HINT"));
    }

    #[test]
    fn json_output_is_found_on_the_raw_command_line() {
        let args = |list: &[&str]| -> Vec<OsString> { list.iter().map(OsString::from).collect() };
        for yes in [
            &["kvctl", "-o", "json", "frob"][..],
            &["kvctl", "get", "k", "--output", "json"],
            &["kvctl", "-ojson", "get"],
            &["kvctl", "--output=json"],
            &["kvctl", "-o", "table", "-o", "json"],
        ] {
            assert!(json_requested(&args(yes)), "{yes:?}");
        }
        for no in [
            &["kvctl", "get", "k"][..],
            &["kvctl", "-o", "plain"],
            &["kvctl", "-o", "json", "-o", "table"],
            &["kvctl", "put", "--", "-o", "json"],
            &["kvctl", "-o"],
        ] {
            assert!(!json_requested(&args(no)), "{no:?}");
        }
    }
}
