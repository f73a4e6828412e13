//! `kvctl repl`: an interactive shell over the same grammar as the one-shot commands.
//!
//! The rqlite shell, redis-cli and toysql's REPL each grew a command language of their own next
//! to their one-shot tools, and none of them completes key names. Here every line goes through
//! the very clap definition of `kvctl` (after shell-style word splitting, see [`line`]) and then
//! through the same [`commands::execute`] as a one-shot command, on one long-lived [`Client`].
//! So `put`, `get`, `keys`, `status` and the rest accept the same arguments, print the same
//! output and fail with the same messages in both places, and leader discovery and retries are
//! the client library's. What the REPL adds is small and lives here:
//!
//! - its own commands: `help`, `exit`/`quit`, `.output`, `.timer`, `.consistency`. Options
//!   given on a line (`get k -o json`) apply to that line only; the `.` commands change the
//!   session's defaults.
//! - line editing with rustyline: history in a file (`$KVCTL_HISTORY`, else
//!   `$XDG_DATA_HOME/kvctl/history`, else `~/.local/share/kvctl/history`; the last
//!   [`HISTORY_SIZE`] lines; lines starting with a space are not kept, as in bash), Ctrl-R to
//!   search it, completion of commands, flags, key names and member ids, and greyed syntax
//!   hints (see [`helper`]).
//! - a prompt that says where the session stands, `kv[leader=1 term=3]> `, asked afresh of
//!   every node before each prompt (bounded to a second), so it follows a failover even when
//!   the last command did not notice one. It tells the truth as `kvctl leader` does: a node
//!   that still claims to lead while most voters are gone shows as
//!   `kv[no quorum: node 0 claims term 1]> `, an election as `kv[no leader term=4]> `.
//! - Ctrl-C: on the line being typed it drops the line; while a command runs it cancels the
//!   command (a write cancelled that way may or may not have been applied, and is reported so),
//!   and what follows starts on a new line, not after the terminal's `^C`. Ctrl-D on an empty
//!   line leaves. An error prints and the session goes on.
//!
//! Lines are parsed by [`crate::cli::repl_grammar`]: the one-shot grammar less `--cluster`,
//! `--endpoints` (fixed for the session) and `--version`, which do nothing here, so `help`
//! and completion do not offer them.
//!
//! When stdin is not a terminal the REPL runs a script instead (`kvctl repl < script.kv`): one
//! command per line, no prompt, `#` starts a comment line, errors name their line, and the exit
//! code is that of the first command that failed (0 when none did), so a script can be checked
//! like any command. Ctrl-C then ends the whole run, as it would end a shell script.

mod helper;
mod line;

use std::future::Future;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches, ValueEnum};
use kvapi::Consistency;
use kvctl::output::Format;
use kvctl::survey::Survey;
use kvctl::{Client, Endpoint, Exit};
use rustyline::config::{CompletionType, Config as EditorConfig};
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{ColorMode, Editor};
use tokio::runtime::Runtime;

use self::helper::{Grammar, KeyLookup, ReplHelper, REPL_COMMANDS};
use crate::cli::{check_write_timeout, repl_grammar, Action, Cli, Config, ConsistencyArg, OutputArg};
use crate::commands;

/// Environment variable naming the history file.
pub const HISTORY_ENV: &str = "KVCTL_HISTORY";

/// How many lines the history file keeps.
pub const HISTORY_SIZE: usize = 1000;

/// Bound on the status round that draws the prompt, and on a key lookup for completion: the
/// terminal must never freeze for long because a node does not answer.
const QUICK: Duration = Duration::from_secs(1);

/// Run the REPL with the session settings of `config` (its action is `Repl`): interactively
/// when stdin is a terminal, as a script otherwise.
pub fn run(config: Config, runtime: &Runtime) -> Exit {
    let mut session = match Session::new(&config) {
        Ok(session) => session,
        Err(e) => {
            let json = config.format == Format::Json;
            return failure("", anyhow::Error::from(e), json);
        }
    };
    if std::io::stdin().is_terminal() {
        interactive(&mut session, runtime)
    } else {
        script(&mut session, runtime)
    }
}

/// The settings and client shared by every line.
struct Session {
    endpoints: Vec<Endpoint>,
    /// TLS and the token, chosen when the session starts.
    security: kvctl::security::Security,
    timeout: Duration,
    format: Format,
    consistency: Consistency,
    timer: bool,
    /// The client every command uses, so the leader it found is reused.
    client: Client,
    grammar: Rc<Grammar>,
    /// stdout is a terminal: JSON is indented, as in one-shot commands.
    pretty: bool,
    /// Ctrl-C cancels the running command (interactive) rather than ending the process (script).
    cancellable: bool,
}

/// What a line asks of the session loop.
enum Step {
    /// Go on; the line's exit status.
    Next(Exit),
    /// Leave (`exit`, `quit`, or stdout was closed).
    Quit,
}

/// stdin while the REPL runs: it carries the commands, so it cannot also carry a value.
struct NoStdin;

impl Read for NoStdin {
    fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other(
            "in the REPL stdin carries the commands; give the value inline or with --file",
        ))
    }
}

impl Session {
    fn new(config: &Config) -> Result<Session, kvctl::ClientError> {
        Ok(Session {
            endpoints: config.endpoints.clone(),
            security: config.security.clone(),
            timeout: config.timeout,
            format: config.format,
            consistency: config.consistency,
            timer: false,
            client: commands::connect(
                &config.endpoints,
                config.timeout,
                config.consistency,
                &config.security,
            )?,
            grammar: Rc::new(Grammar::from_cli()),
            pretty: std::io::stdout().is_terminal(),
            cancellable: false,
        })
    }

    /// Run one line. `origin` prefixes error messages (`line 3: ` in scripts).
    fn run_line(&mut self, text: &str, runtime: &Runtime, origin: &str) -> Step {
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            return Step::Next(Exit::Success);
        }
        let json = self.format == Format::Json;
        let words = match line::split(text, &*self.grammar) {
            Ok(words) => words,
            Err(e) => return Step::Next(usage(origin, &e.to_string(), json)),
        };
        let Some(first) = words.first() else {
            return Step::Next(Exit::Success);
        };
        match first.as_str() {
            "exit" | "quit" => Step::Quit,
            "help" => Step::Next(self.help(words.get(1).map(String::as_str), origin)),
            ".output" => Step::Next(self.set_output(words.get(1), origin)),
            ".timer" => Step::Next(self.set_timer(words.get(1), origin)),
            ".consistency" => Step::Next(self.set_consistency(words.get(1), origin)),
            dot if dot.starts_with('.') => Step::Next(usage(
                origin,
                &format!("unknown REPL command {dot:?}; `help` lists the commands"),
                json,
            )),
            _ => self.command(words, runtime, origin),
        }
    }

    /// A command of the one-shot grammar.
    fn command(&mut self, words: Vec<String>, runtime: &Runtime, origin: &str) -> Step {
        let argv = std::iter::once("kvctl".to_string()).chain(words);
        let matches = match repl_grammar().try_get_matches_from(argv) {
            Ok(matches) => matches,
            Err(e) => return Step::Next(self.clap_error(e, origin)),
        };
        let cli = match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => return Step::Next(self.clap_error(e, origin)),
        };
        let line_json = if given(&matches, "output") {
            cli.output == OutputArg::Json
        } else {
            self.format == Format::Json
        };
        let mut config = match Config::for_session(cli, &mut NoStdin, &self.endpoints, &self.security) {
            Ok(config) => config,
            Err(e) => return Step::Next(usage(origin, &e.to_string(), line_json)),
        };
        if config.action == Action::Repl {
            return Step::Next(usage(origin, "already in the REPL", line_json));
        }
        // Options typed on the line win for that line; otherwise the session's settings hold.
        if !given(&matches, "output") {
            config.format = self.format;
        }
        if !given(&matches, "consistency") {
            config.consistency = self.consistency;
        }
        if !given(&matches, "timeout") {
            config.timeout = self.timeout;
        }
        // The session's --timeout may be too long for a write even when the line's is not.
        if let Err(e) = check_write_timeout(&config.action, config.timeout) {
            return Step::Next(usage(origin, &e.to_string(), line_json));
        }
        let one_off;
        let client = if config.timeout == self.timeout && config.consistency == self.consistency {
            &self.client
        } else {
            match commands::connect(
                &self.endpoints,
                config.timeout,
                config.consistency,
                &self.security,
            ) {
                Ok(client) => {
                    one_off = client;
                    &one_off
                }
                Err(e) => return Step::Next(failure(origin, anyhow::Error::from(e), line_json)),
            }
        };

        let is_write = matches!(config.action, Action::Write { .. } | Action::Delete { .. });
        let started = Instant::now();
        let run = commands::execute(client, config, self.pretty);
        let (result, interrupted) = if self.cancellable {
            runtime.block_on(async {
                let mut ctrl_c = pin!(tokio::signal::ctrl_c());
                // Biased: `status --watch` listens for Ctrl-C itself and ends cleanly, and that
                // ending must win over calling it cancelled.
                let result = tokio::select! {
                    biased;
                    result = run => Some(result),
                    _ = &mut ctrl_c => None,
                };
                // Whether a Ctrl-C came, also when the command itself ended on it.
                let pressed = result.is_none()
                    || std::future::poll_fn(|cx| std::task::Poll::Ready(ctrl_c.as_mut().poll(cx).is_ready()))
                        .await;
                (result, pressed)
            })
        } else {
            (Some(runtime.block_on(run)), false)
        };
        if interrupted {
            // The terminal echoed `^C` where the cursor was; start what follows on a line of
            // its own.
            println!();
        }
        let took = started.elapsed();
        let step = match result {
            Some(Ok(exit)) => Step::Next(exit),
            Some(Err(e)) if crate::is_broken_pipe(&e) => Step::Quit,
            Some(Err(e)) => Step::Next(failure(origin, e, line_json)),
            None if is_write => {
                eprintln!("kvctl: cancelled; the write may or may not have been applied");
                Step::Next(Exit::OutcomeUnknown)
            }
            None => {
                eprintln!("kvctl: cancelled");
                Step::Next(Exit::Other)
            }
        };
        if self.timer {
            println!("Time: {:.1} ms", took.as_secs_f64() * 1000.0);
        }
        step
    }

    /// Print clap's help, or its error as one line.
    fn clap_error(&self, error: clap::Error, origin: &str) -> Exit {
        match error.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                let text = if self.pretty {
                    error.render().ansi().to_string()
                } else {
                    error.render().to_string()
                };
                print!("{text}");
                let _ = std::io::stdout().flush();
                Exit::Success
            }
            _ => usage(
                origin,
                &format!("{} (try `help`)", crate::one_line(&error.render().to_string())),
                self.format == Format::Json,
            ),
        }
    }

    /// `help` and `help COMMAND`.
    fn help(&self, topic: Option<&str>, origin: &str) -> Exit {
        let Some(topic) = topic else {
            let mut text = String::from("Commands (the same as on kvctl's command line):\n");
            for c in &self.grammar.commands {
                let mut name = c.name.clone();
                for alias in &c.aliases {
                    name.push_str(&format!(", {alias}"));
                }
                text.push_str(&format!("  {name:<14} {}\n", c.about));
            }
            text.push_str("\nREPL commands:\n");
            for c in REPL_COMMANDS {
                text.push_str(&format!("  {:<14} {}\n", c.name, c.about));
            }
            text.push_str(&format!(
                "\nNow: -o {}, --consistency {}, timer {}.\n\
                 `help COMMAND` or `COMMAND --help` shows a command's options. Tab completes \
                 commands, options and keys;\nCtrl-R searches the history; Ctrl-C cancels; \
                 Ctrl-D leaves. JSON values need no quotes: put a [\"cat\", \"dog\"]\n",
                format_name(self.format),
                consistency_name(self.consistency),
                if self.timer { "on" } else { "off" },
            ));
            print!("{text}");
            let _ = std::io::stdout().flush();
            return Exit::Success;
        };
        if let Some(c) = helper::repl_command(topic) {
            println!("{} {}\n  {}", c.name, c.syntax, c.about);
            return Exit::Success;
        }
        match self.grammar.command(topic) {
            Some(c) => match repl_grammar().try_get_matches_from(["kvctl", c.name.as_str(), "--help"]) {
                Err(e) => self.clap_error(e, origin),
                Ok(_) => Exit::Success,
            },
            None => usage(
                origin,
                &format!("no command called {topic:?}; `help` lists the commands"),
                self.format == Format::Json,
            ),
        }
    }

    fn set_output(&mut self, value: Option<&String>, origin: &str) -> Exit {
        let Some(value) = value else {
            println!("{}", format_name(self.format));
            return Exit::Success;
        };
        match OutputArg::from_str(value, true) {
            Ok(OutputArg::Table) => self.format = Format::Table,
            Ok(OutputArg::Json) => self.format = Format::Json,
            Ok(OutputArg::Plain) => self.format = Format::Plain,
            Err(_) => {
                return usage(
                    origin,
                    ".output takes table, json or plain",
                    self.format == Format::Json,
                )
            }
        }
        Exit::Success
    }

    fn set_timer(&mut self, value: Option<&String>, origin: &str) -> Exit {
        match value.map(String::as_str) {
            None => println!("{}", if self.timer { "on" } else { "off" }),
            Some("on") => self.timer = true,
            Some("off") => self.timer = false,
            Some(_) => return usage(origin, ".timer takes on or off", self.format == Format::Json),
        }
        Exit::Success
    }

    fn set_consistency(&mut self, value: Option<&String>, origin: &str) -> Exit {
        let Some(value) = value else {
            println!("{}", consistency_name(self.consistency));
            return Exit::Success;
        };
        let consistency = match ConsistencyArg::from_str(value, true) {
            Ok(ConsistencyArg::Linearizable) => Consistency::Linearizable,
            Ok(ConsistencyArg::Stale) => Consistency::Stale,
            Err(_) => {
                return usage(
                    origin,
                    ".consistency takes linearizable or stale",
                    self.format == Format::Json,
                )
            }
        };
        // The client's consistency is fixed when it is built; the new client rediscovers the
        // leader on its first request.
        match commands::connect(&self.endpoints, self.timeout, consistency, &self.security) {
            Ok(client) => {
                self.client = client;
                self.consistency = consistency;
                Exit::Success
            }
            Err(e) => failure(origin, anyhow::Error::from(e), self.format == Format::Json),
        }
    }

    /// The prompt, from a fresh survey of every node, and the member ids it found.
    fn prompt(&self, runtime: &Runtime, asker: &Client) -> (String, Vec<u64>) {
        let survey = runtime.block_on(async { Survey::from_reports(&asker.node_statuses().await) });
        let ids = survey
            .nodes
            .iter()
            .filter_map(|n| n.id)
            .filter(|id| !survey.not_members.contains(id))
            .collect();
        (prompt_text(&survey), ids)
    }
}

/// The prompt for what a survey found: the leader and term when a majority of the voters
/// follow it, and otherwise what is wrong.
fn prompt_text(survey: &Survey) -> String {
    match (survey.quorum, survey.leader, survey.term) {
        (true, Some(leader), Some(term)) => format!("kv[leader={leader} term={term}]> "),
        (false, Some(leader), Some(term)) => format!("kv[no quorum: node {leader} claims term {term}]> "),
        (_, _, Some(term)) => format!("kv[no leader term={term}]> "),
        _ => "kv[no leader]> ".to_string(),
    }
}

/// True when option `id` was typed on the line (not a default).
fn given(matches: &ArgMatches, id: &str) -> bool {
    let typed = |m: &ArgMatches| m.value_source(id) == Some(ValueSource::CommandLine);
    typed(matches) || matches.subcommand().is_some_and(|(_, sub)| typed(sub))
}

/// Print a usage problem (as JSON when `json`); exit code 2.
fn usage(origin: &str, message: &str, json: bool) -> Exit {
    crate::print_error(json, "usage", &format!("{origin}{message}"), None);
    Exit::Usage
}

/// Print a failed command's error the way one-shot commands do, and choose its exit code.
fn failure(origin: &str, error: anyhow::Error, json: bool) -> Exit {
    let errors = crate::Errors {
        json,
        ..crate::Errors::default()
    };
    let origin = origin.trim_end_matches([':', ' ']);
    if origin.is_empty() {
        crate::report(&error, &errors)
    } else {
        crate::report(&error.context(origin.to_string()), &errors)
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Table => "table",
        Format::Json => "json",
        Format::Plain => "plain",
    }
}

fn consistency_name(consistency: Consistency) -> &'static str {
    match consistency {
        Consistency::Linearizable => "linearizable",
        Consistency::Stale => "stale",
    }
}

/// The interactive loop on a terminal.
fn interactive(session: &mut Session, runtime: &Runtime) -> Exit {
    session.cancellable = true;
    // Ctrl-C while a command runs must cancel the command, not kill the process, even before
    // the first command has listened for it: install tokio's handler now. (The terminal is in
    // raw mode while a line is typed, so Ctrl-C then is a key, not a signal.)
    runtime.block_on(async {
        let mut listener = pin!(tokio::signal::ctrl_c());
        std::future::poll_fn(|cx| {
            let _ = listener.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
    });

    let quick = |consistency| commands::connect(&session.endpoints, QUICK, consistency, &session.security);
    // One client draws the prompt, one completes keys; both give up after QUICK. Completion
    // reads stale: it must work without a quorum, and a key that is a moment old is as good a
    // suggestion as any.
    let (asker, key_client) = match (quick(Consistency::Stale), quick(Consistency::Stale)) {
        (Ok(a), Ok(k)) => (a, k),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("kvctl: {e}");
            return Exit::Other;
        }
    };
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let editor_config = EditorConfig::builder()
        .max_history_size(HISTORY_SIZE)
        .and_then(|b| b.history_ignore_dups(true))
        .map(|b| {
            b.history_ignore_space(true)
                .completion_type(CompletionType::List)
                .color_mode(if color {
                    ColorMode::Enabled
                } else {
                    ColorMode::Disabled
                })
                .build()
        });
    let mut editor = match editor_config.and_then(Editor::<ReplHelper, FileHistory>::with_config) {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("kvctl: cannot set up the terminal: {e}");
            return Exit::Other;
        }
    };
    editor.set_helper(Some(ReplHelper::new(
        session.grammar.clone(),
        KeyLookup::new(runtime, key_client),
        color,
    )));
    let history = history_path();
    if let Some(path) = &history {
        if path.exists() {
            if let Err(e) = editor.load_history(path) {
                eprintln!("kvctl: warning: cannot read the history {}: {e}", path.display());
            }
        }
    }
    let mut history_broken = false;

    println!(
        "kvctl {} REPL. `help` lists the commands, Tab completes, Ctrl-D leaves.",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        let (prompt, members) = session.prompt(runtime, &asker);
        if let Some(helper) = editor.helper() {
            helper.set_members(members);
        }
        match editor.readline(&prompt) {
            Ok(text) => {
                if !text.trim().is_empty() {
                    let _ = editor.add_history_entry(text.as_str());
                    if let (Some(path), false) = (&history, history_broken) {
                        if let Err(e) = save_history(&mut editor, path) {
                            eprintln!(
                                "kvctl: warning: cannot save the history to {}: {e}",
                                path.display()
                            );
                            history_broken = true;
                        }
                    }
                }
                let step = session.run_line(&text, runtime, "");
                if let Some(helper) = editor.helper() {
                    helper.forget_keys();
                }
                if let Step::Quit = step {
                    break;
                }
            }
            // Ctrl-C drops the line being typed; the session goes on.
            Err(ReadlineError::Interrupted) => {}
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("kvctl: cannot read from the terminal: {e}");
                return Exit::Other;
            }
        }
    }
    Exit::Success
}

/// Append the new history line to the file, creating its directory first.
fn save_history(editor: &mut Editor<ReplHelper, FileHistory>, path: &std::path::Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    editor.append_history(path).map_err(|e| match e {
        ReadlineError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    })
}

/// `$KVCTL_HISTORY`, else `$XDG_DATA_HOME/kvctl/history`, else
/// `~/.local/share/kvctl/history`; none when there is no home either.
fn history_path() -> Option<PathBuf> {
    history_path_in(|name| std::env::var_os(name))
}

/// [`history_path`] with the environment given by `env`, so tests need not change the
/// process's.
fn history_path_in(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let var = |name| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(path) = var(HISTORY_ENV) {
        return Some(path);
    }
    // The XDG spec says to ignore a relative XDG_DATA_HOME.
    if let Some(data) = var("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        return Some(data.join("kvctl").join("history"));
    }
    var("HOME").map(|home| home.join(".local/share/kvctl/history"))
}

/// Run the commands of stdin, one per line, and return the exit code of the first that failed.
fn script(session: &mut Session, runtime: &Runtime) -> Exit {
    let mut first_failure: Option<Exit> = None;
    for (n, text) in std::io::stdin().lock().lines().enumerate() {
        let text = match text {
            Ok(text) => text,
            Err(e) => {
                eprintln!("kvctl: cannot read line {} of the script: {e}", n + 1);
                return Exit::Other;
            }
        };
        match session.run_line(&text, runtime, &format!("line {}: ", n + 1)) {
            Step::Quit => break,
            Step::Next(Exit::Success) => {}
            Step::Next(exit) => {
                first_failure.get_or_insert(exit);
            }
        }
    }
    first_failure.unwrap_or(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn matches(line: &[&str]) -> ArgMatches {
        repl_grammar()
            .try_get_matches_from(std::iter::once("kvctl").chain(line.iter().copied()))
            .expect("valid line")
    }

    #[test]
    fn the_prompt_tells_the_truth_about_leadership() {
        use kvctl::survey::NodeReport;
        let status = |id: u64, role: &str, term: u64, leader: Option<u64>| {
            let leader = leader
                .map(|l| format!(r#"{{"id":{l},"http":null}}"#))
                .unwrap_or_else(|| "null".into());
            let json = format!(
                r#"{{"id":{id},"role":"{role}","term":{term},"leader":{leader},"commit_index":1,
                "last_applied":1,"last_log_index":1,"snapshot_index":null,"keys":0,
                "members":[{{"id":0,"http":"a:1","raft":"a:2"}},{{"id":1,"http":"b:1","raft":"b:2"}},
                {{"id":2,"http":"c:1","raft":"c:2"}}]}}"#
            );
            serde_json::from_str(&json).expect("status")
        };
        let report = |id: u64, result: Result<kvapi::Status, &str>| NodeReport {
            id: Some(id),
            address: format!("n{id}:1"),
            result: result.map_err(str::to_string),
            elapsed: Duration::from_millis(1),
            ready: None,
            listed: true,
        };
        let healthy = Survey::from_reports(&[
            report(0, Ok(status(0, "leader", 1, Some(0)))),
            report(1, Ok(status(1, "follower", 1, Some(0)))),
            report(2, Err("refused")),
        ]);
        assert_eq!(prompt_text(&healthy), "kv[leader=0 term=1]> ");
        let alone = Survey::from_reports(&[
            report(0, Ok(status(0, "leader", 1, Some(0)))),
            report(1, Err("refused")),
            report(2, Err("refused")),
        ]);
        assert_eq!(prompt_text(&alone), "kv[no quorum: node 0 claims term 1]> ");
        let electing = Survey::from_reports(&[
            report(0, Err("refused")),
            report(1, Ok(status(1, "candidate", 2, None))),
            report(2, Ok(status(2, "follower", 2, None))),
        ]);
        assert_eq!(prompt_text(&electing), "kv[no leader term=2]> ");
        let nobody = Survey::from_reports(&[report(0, Err("refused"))]);
        assert_eq!(prompt_text(&nobody), "kv[no leader]> ");
    }

    #[test]
    fn options_typed_on_a_line_are_told_from_defaults() {
        assert!(!given(&matches(&["get", "k"]), "output"));
        assert!(given(&matches(&["get", "k", "-o", "json"]), "output"));
        assert!(given(&matches(&["-o", "json", "get", "k"]), "output"));
        assert!(given(
            &matches(&["get", "--consistency", "stale", "k"]),
            "consistency"
        ));
        assert!(!given(&matches(&["get", "k", "-o", "json"]), "timeout"));
        assert!(given(&matches(&["get", "k", "--timeout", "1s"]), "timeout"));
    }

    #[test]
    fn lines_parse_with_the_one_shot_grammar() {
        let grammar = Grammar::from_cli();
        let endpoints = Endpoint::parse_list("127.0.0.1:1").expect("endpoints");
        let config = |text: &str| {
            let words = line::split(text, &grammar).expect("splits");
            let cli = Cli::try_parse_from(std::iter::once("kvctl".to_string()).chain(words));
            Config::for_session(
                cli.expect("parses"),
                &mut NoStdin,
                &endpoints,
                &kvctl::security::Security::default(),
            )
        };
        let c = config(r#"put a ["cat", "dog"]"#).expect("valid");
        assert_eq!(
            c.action,
            Action::Write {
                kind: kvapi::WriteKind::Put,
                key: "a".into(),
                value: serde_json::json!(["cat", "dog"]),
                precondition: None,
            }
        );
        let c = config(r#"append 'my key' {"x": 1}"#).expect("valid");
        assert!(matches!(c.action, Action::Write { ref key, ref value, .. }
            if key == "my key" && *value == serde_json::json!({"x": 1})));
        let c = config("put a \"Kyle Chard\"").expect("valid");
        assert!(
            matches!(c.action, Action::Write { ref value, .. } if *value == serde_json::json!("Kyle Chard"))
        );
        assert_eq!(c.endpoints, endpoints);
        let e = config("put a -").expect_err("stdin is the REPL's");
        assert!(e.to_string().contains("--file"), "{e}");
        let e = config("--endpoints 127.0.0.1:2 get a").expect_err("fixed per session");
        assert!(e.to_string().contains("restart"), "{e}");
    }

    #[test]
    fn the_history_file_follows_the_environment() {
        let path = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> =
                vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            history_path_in(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.into()))
        };
        let all = [
            (HISTORY_ENV, "/tmp/x/history"),
            ("XDG_DATA_HOME", "/data"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(path(&all), Some(PathBuf::from("/tmp/x/history")));
        assert_eq!(path(&all[1..]), Some(PathBuf::from("/data/kvctl/history")));
        assert_eq!(
            path(&[("XDG_DATA_HOME", "relative"), ("HOME", "/home/u")]),
            Some(PathBuf::from("/home/u/.local/share/kvctl/history"))
        );
        assert_eq!(
            path(&[(HISTORY_ENV, ""), ("HOME", "/h")]),
            Some(PathBuf::from("/h/.local/share/kvctl/history"))
        );
        assert_eq!(path(&[]), None);
    }
}
