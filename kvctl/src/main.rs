//! `kvctl`: the operator's command-line client of a kvnode cluster.
//!
//! `main` is deliberately thin: parse the command line, validate it into a [`cli::Config`], run
//! the command, and turn the outcome into one of the documented exit codes. Errors are printed
//! here and only here, as one line on stderr starting with `kvctl:`; results go to stdout
//! through [`kvctl::output`]. A closed stdout (`kvctl keys | head -1`) ends the command quietly
//! with success: the reader has all it wanted.

mod cli;
mod commands;
mod repl;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use kvctl::{ClientError, Exit};

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e).into(),
    };
    let env_cluster = std::env::var_os(cli::CLUSTER_ENV)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    let config = match cli::Config::from_cli(cli, &mut std::io::stdin().lock(), env_cluster) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kvctl: {e}");
            return Exit::Usage.into();
        }
    };
    init_diagnostics(config.verbosity);

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
        Err(e) => report(&e).into(),
    }
}

/// Print an error as one line and choose its exit code.
fn report(error: &anyhow::Error) -> Exit {
    if is_broken_pipe(error) {
        return Exit::Success;
    }
    eprintln!("kvctl: {error:#}");
    if let Some(e) = error.downcast_ref::<ClientError>() {
        e.exit()
    } else if error.downcast_ref::<commands::NoQuorum>().is_some() {
        Exit::Unavailable
    } else if error.downcast_ref::<cli::UsageError>().is_some() {
        Exit::Usage
    } else {
        Exit::Other
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Help and version go to stdout with success; grammar errors become one `kvctl:` line and exit
/// code 2, like every other usage error.
fn clap_error(error: clap::Error) -> Exit {
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
            eprintln!(
                "kvctl: {} (see kvctl --help)",
                one_line(&error.render().to_string())
            );
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
/// `-vv`. `RUST_LOG`, when set, wins.
fn init_diagnostics(verbosity: u8) {
    let default = match verbosity {
        0 => "warn",
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
        assert_eq!(clap_error(err), Exit::Usage);
    }

    #[test]
    fn errors_map_to_exit_codes_and_broken_pipes_are_success() {
        let not_found = anyhow::Error::from(ClientError::NotFound { key: "k".into() });
        assert_eq!(report(&not_found), Exit::NotFound);
        let usage = anyhow::Error::from(cli::UsageError("bad".into()));
        assert_eq!(report(&usage), Exit::Usage);
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(report(&pipe), Exit::Success);
        let no_quorum = anyhow::Error::from(commands::NoQuorum("no leader".into()));
        assert_eq!(report(&no_quorum), Exit::Unavailable);
        let other = anyhow::anyhow!("something else");
        assert_eq!(report(&other), Exit::Other);
    }
}
