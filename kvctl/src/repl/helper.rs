//! What the REPL's line editor knows about kvctl: completion, greyed syntax hints, and the
//! grammar both are derived from.
//!
//! Everything here is read off the REPL's clap definition ([`crate::cli::repl_grammar`], the
//! one-shot grammar less the options that do nothing in a session) rather than written out a
//! second time: the command names, their aliases, which options exist and which take a value,
//! the values an enum option accepts, and the positional arguments. A new command or flag is
//! therefore completed and hinted in the REPL as soon as the one-shot command line has it. The
//! commands that exist only in the REPL (`help`, `.output`, ...) are listed in
//! [`REPL_COMMANDS`].
//!
//! Commands with subcommands (`member list|add|promote|remove|update`, `leader transfer`) are
//! read the same way, one level down. Member ids (the positional argument called `id`) are
//! completed from the members the prompt's status round found before the line was typed.
//!
//! Key names are completed from the server: the positional arguments called `key` (of `get`,
//! `put`, `append`, `delete`) and `prefix` (of `keys`) ask the cluster for the keys starting
//! with what has been typed. The lookup is a stale read with a one-second bound, so it works
//! without a quorum and never freezes the terminal for long; a cluster that does not answer
//! simply offers no keys. The answer is cached for two seconds: pressing Tab twice, or typing a
//! few more characters and pressing it again, costs no second round trip. The session drops the
//! cache after every command, so a key just written is offered as soon as the replica that
//! answers has applied it (normally within milliseconds).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvctl::Client;
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::{Hint, Hinter};
use rustyline::validate::Validator;
use rustyline::{Context, Helper};
use tokio::runtime::Runtime;

use super::line::{lex, quote, ValueSlots, Word};
use crate::cli::repl_grammar;

/// How long fetched key names are reused for completion.
const KEY_CACHE_TTL: Duration = Duration::from_secs(2);

/// At most this many key names are fetched for one completion.
const KEY_COMPLETION_LIMIT: usize = 200;

/// A command that exists only in the REPL.
#[derive(Debug)]
pub struct ReplCommand {
    /// What is typed.
    pub name: &'static str,
    /// Its arguments, as shown by `help` and in hints.
    pub syntax: &'static str,
    /// The words its argument may be, for completion.
    pub values: &'static [&'static str],
    /// One line for `help`.
    pub about: &'static str,
}

/// The REPL's own commands, in the order `help` lists them.
pub const REPL_COMMANDS: &[ReplCommand] = &[
    ReplCommand {
        name: "help",
        syntax: "[COMMAND]",
        values: &[],
        about: "List the commands, or show the full help of one",
    },
    ReplCommand {
        name: ".output",
        syntax: "table|json|plain",
        values: &["table", "json", "plain"],
        about: "Choose how results are printed (like -o)",
    },
    ReplCommand {
        name: ".timer",
        syntax: "on|off",
        values: &["on", "off"],
        about: "Print how long each command took",
    },
    ReplCommand {
        name: ".consistency",
        syntax: "linearizable|stale",
        values: &["linearizable", "stale"],
        about: "Choose how reads are served (like --consistency)",
    },
    ReplCommand {
        name: "exit",
        syntax: "",
        values: &[],
        about: "Leave the REPL (so do quit and Ctrl-D)",
    },
    ReplCommand {
        name: "quit",
        syntax: "",
        values: &[],
        about: "Leave the REPL",
    },
];

/// The REPL command called `name`.
pub fn repl_command(name: &str) -> Option<&'static ReplCommand> {
    REPL_COMMANDS.iter().find(|c| c.name == name)
}

/// One option of a command.
#[derive(Debug, Clone)]
pub struct OptionSpec {
    /// `--long`, when it has one.
    pub long: Option<String>,
    /// `-s`, when it has one.
    pub short: Option<char>,
    /// Its value's name (`FILE`), when it takes a value.
    pub value_name: Option<String>,
    /// The values it accepts, when they are a fixed set.
    pub values: Vec<String>,
    /// Shared by every command (`--timeout`, `-o`, ...).
    pub global: bool,
}

/// One positional argument of a command.
#[derive(Debug, Clone)]
pub struct Positional {
    /// clap's id (`key`, `value`, `prefix`).
    pub id: String,
    /// How it is shown (`KEY`).
    pub name: String,
    /// Must be given.
    pub required: bool,
}

/// One command of the one-shot grammar.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// Its name.
    pub name: String,
    /// Other names it answers to (`del`, `ls`).
    pub aliases: Vec<String>,
    /// One line for `help`.
    pub about: String,
    /// Positional arguments, in order.
    pub positionals: Vec<Positional>,
    /// Options, its own first.
    pub options: Vec<OptionSpec>,
    /// Its subcommands (`member add`), when it has any.
    pub subcommands: Vec<CommandSpec>,
}

impl CommandSpec {
    /// Read one command off clap.
    fn from_clap(c: &clap::Command) -> CommandSpec {
        CommandSpec {
            name: c.get_name().to_string(),
            aliases: c.get_visible_aliases().map(str::to_string).collect(),
            about: c.get_about().map(|a| a.to_string()).unwrap_or_default(),
            positionals: c
                .get_positionals()
                .map(|a| Positional {
                    id: a.get_id().to_string(),
                    name: a
                        .get_value_names()
                        .and_then(|v| v.first())
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| a.get_id().to_string().to_uppercase()),
                    required: a.is_required_set(),
                })
                .collect(),
            options: c
                .get_arguments()
                .filter(|a| !a.is_positional() && !a.is_hide_set())
                .map(|a| {
                    let takes_value = a.get_action().takes_values();
                    OptionSpec {
                        long: a.get_long().map(str::to_string),
                        short: a.get_short(),
                        value_name: takes_value.then(|| {
                            a.get_value_names()
                                .and_then(|v| v.first())
                                .map(|v| v.to_string())
                                .unwrap_or_else(|| "VALUE".to_string())
                        }),
                        values: if takes_value {
                            a.get_possible_values()
                                .iter()
                                .filter(|v| !v.is_hide_set())
                                .map(|v| v.get_name().to_string())
                                .collect()
                        } else {
                            Vec::new()
                        },
                        global: a.is_global_set(),
                    }
                })
                .collect(),
            subcommands: c
                .get_subcommands()
                .filter(|s| s.get_name() != "help")
                .map(CommandSpec::from_clap)
                .collect(),
        }
    }

    /// The subcommand called `name` or one of its aliases.
    pub fn subcommand(&self, name: &str) -> Option<&CommandSpec> {
        self.subcommands
            .iter()
            .find(|c| c.name == name || c.aliases.iter().any(|a| a == name))
    }

    /// The option typed as `word` (`--file`, `-o`).
    fn option(&self, word: &str) -> Option<&OptionSpec> {
        if let Some(long) = word.strip_prefix("--") {
            return self.options.iter().find(|o| o.long.as_deref() == Some(long));
        }
        let mut chars = word.strip_prefix('-')?.chars();
        let short = chars.next()?;
        // `-ojson` carries its value; only a bare `-o` consumes the next word.
        if chars.next().is_some() {
            return None;
        }
        self.options.iter().find(|o| o.short == Some(short))
    }

    /// The syntax of the arguments after the first `given` positionals: `<KEY> [VALUE]
    /// [--string] [--file FILE]`. Global options are left out: they are the same everywhere.
    fn syntax_after(&self, given: usize) -> String {
        if !self.subcommands.is_empty() && given == 0 {
            let names: Vec<&str> = self.subcommands.iter().map(|c| c.name.as_str()).collect();
            return names.join("|");
        }
        let mut parts: Vec<String> = self
            .positionals
            .iter()
            .skip(given)
            .map(|p| {
                if p.required {
                    format!("<{}>", p.name)
                } else {
                    format!("[{}]", p.name)
                }
            })
            .collect();
        for o in self.options.iter().filter(|o| !o.global) {
            let Some(long) = &o.long else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            parts.push(match &o.value_name {
                Some(v) => format!("[--{long} {v}]"),
                None => format!("[--{long}]"),
            });
        }
        parts.join(" ")
    }
}

/// The one-shot grammar as the REPL needs it, read off the clap definition.
#[derive(Debug, Clone)]
pub struct Grammar {
    /// Every command that a REPL line may start with, in clap's order.
    pub commands: Vec<CommandSpec>,
}

impl Grammar {
    /// Read the grammar from [`repl_grammar`]. `help` (the REPL has its own) and `repl`
    /// (already in it) are left out.
    pub fn from_cli() -> Grammar {
        let mut cli = repl_grammar();
        // Building propagates the global options into every subcommand.
        cli.build();
        let commands = cli
            .get_subcommands()
            .filter(|c| !matches!(c.get_name(), "help" | "repl"))
            .map(CommandSpec::from_clap)
            .collect();
        Grammar { commands }
    }

    /// The command called `name` or one of its aliases.
    pub fn command(&self, name: &str) -> Option<&CommandSpec> {
        self.commands
            .iter()
            .find(|c| c.name == name || c.aliases.iter().any(|a| a == name))
    }

    /// Every name a line may start with: commands, aliases and REPL commands, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .commands
            .iter()
            .flat_map(|c| std::iter::once(c.name.clone()).chain(c.aliases.iter().cloned()))
            .chain(REPL_COMMANDS.iter().map(|c| c.name.to_string()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The syntax hint for `name` with `given` positionals typed.
    fn syntax(&self, name: &str, given: usize) -> Option<String> {
        if let Some(c) = self.command(name) {
            return Some(c.syntax_after(given));
        }
        let c = repl_command(name)?;
        Some(if given == 0 {
            c.syntax.to_string()
        } else {
            String::new()
        })
    }
}

impl ValueSlots for Grammar {
    fn has_json_value(&self, command: &str) -> bool {
        self.command(command)
            .is_some_and(|c| c.positionals.get(1).is_some_and(|p| p.id == "value"))
    }

    fn takes_value(&self, command: &str, option: &str) -> bool {
        self.command(command)
            .and_then(|c| c.option(option))
            .is_some_and(|o| o.value_name.is_some())
    }
}

/// What the words before the cursor say about the word being typed.
enum Slot<'a> {
    /// The command name.
    Command,
    /// An option name of this command.
    Option(&'a CommandSpec),
    /// The value of an option.
    OptionValue(&'a OptionSpec),
    /// The n-th positional argument (0-based).
    Positional(&'a CommandSpec, usize),
    /// The name of a subcommand of this command.
    Subcommand(&'a CommandSpec),
    /// The argument of a REPL command.
    ReplArgument(&'static ReplCommand),
    /// Nothing we can help with.
    Unknown,
}

impl Grammar {
    /// Classify the word at index `index` of `words`, whose text so far is `text`.
    fn slot<'a>(&'a self, words: &[Word], index: usize, text: &str) -> Slot<'a> {
        if index == 0 {
            return Slot::Command;
        }
        let name = words[0].text.as_str();
        let Some(mut command) = self.command(name) else {
            return match repl_command(name) {
                Some(c) if index == 1 => Slot::ReplArgument(c),
                _ => Slot::Unknown,
            };
        };
        let mut first = 1;
        if !command.subcommands.is_empty() {
            if index == 1 {
                return if text.starts_with('-') {
                    Slot::Option(command)
                } else {
                    Slot::Subcommand(command)
                };
            }
            match command.subcommand(&words[1].text) {
                Some(sub) => {
                    command = sub;
                    first = 2;
                }
                None => return Slot::Unknown,
            }
        }
        let mut positionals = 0;
        let mut pending: Option<&OptionSpec> = None;
        let mut options_ended = false;
        for word in &words[first..index] {
            if pending.take().is_some() {
                continue;
            }
            if !options_ended && word.text == "--" {
                options_ended = true;
            } else if !options_ended && word.text.starts_with('-') && word.text.len() > 1 {
                pending = command
                    .option(&word.text)
                    .filter(|o| o.value_name.is_some() && !word.text.contains('='));
            } else {
                positionals += 1;
            }
        }
        if let Some(option) = pending {
            return Slot::OptionValue(option);
        }
        if !options_ended && text.starts_with('-') {
            return Slot::Option(command);
        }
        Slot::Positional(command, positionals)
    }
}

/// Key names for completion, fetched from the cluster and kept for [`KEY_CACHE_TTL`].
pub struct KeyLookup<'r> {
    runtime: &'r Runtime,
    client: Client,
    cache: RefCell<Option<KeyCache>>,
}

/// One answer of the cluster.
struct KeyCache {
    prefix: String,
    fetched: Instant,
    keys: Vec<String>,
    truncated: bool,
}

impl KeyCache {
    /// True when this answer holds every key starting with `prefix`.
    fn covers(&self, prefix: &str, now: Instant) -> bool {
        now.duration_since(self.fetched) < KEY_CACHE_TTL
            && prefix.starts_with(&self.prefix)
            && (!self.truncated || prefix == self.prefix)
    }
}

impl<'r> KeyLookup<'r> {
    /// Look keys up with `client` (which should be quick to give up), on `runtime`.
    pub fn new(runtime: &'r Runtime, client: Client) -> Self {
        KeyLookup {
            runtime,
            client,
            cache: RefCell::new(None),
        }
    }

    /// Keys starting with `prefix`, sorted; none when the cluster does not answer.
    fn starting_with(&self, prefix: &str) -> Vec<String> {
        let now = Instant::now();
        let mut cache = self.cache.borrow_mut();
        if !cache.as_ref().is_some_and(|c| c.covers(prefix, now)) {
            match self
                .runtime
                .block_on(self.client.keys(prefix, Some(KEY_COMPLETION_LIMIT)))
            {
                Ok(answer) => {
                    *cache = Some(KeyCache {
                        prefix: prefix.to_string(),
                        fetched: now,
                        keys: answer.keys,
                        truncated: answer.truncated,
                    })
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no keys to complete");
                    return Vec::new();
                }
            }
        }
        cache
            .as_ref()
            .map(|c| c.keys.iter().filter(|k| k.starts_with(prefix)).cloned().collect())
            .unwrap_or_default()
    }

    /// Forget fetched keys: a command may have added or removed some.
    pub fn forget(&self) {
        self.cache.borrow_mut().take();
    }
}

/// A greyed hint: the syntax still to type. Only the part that completes a command name can be
/// accepted with the right arrow; the rest is a description, not text to insert.
#[derive(Debug)]
pub struct SyntaxHint {
    display: String,
    completion: Option<String>,
}

impl Hint for SyntaxHint {
    fn display(&self) -> &str {
        &self.display
    }

    fn completion(&self) -> Option<&str> {
        self.completion.as_deref()
    }
}

/// The rustyline helper of the REPL.
pub struct ReplHelper<'r> {
    grammar: Rc<Grammar>,
    keys: KeyLookup<'r>,
    /// Member ids, from the last status round.
    members: RefCell<BTreeSet<u64>>,
    color: bool,
}

impl<'r> ReplHelper<'r> {
    /// A helper for `grammar` that completes keys through `keys`; `color`: grey hints.
    pub fn new(grammar: Rc<Grammar>, keys: KeyLookup<'r>, color: bool) -> Self {
        ReplHelper {
            grammar,
            keys,
            members: RefCell::new(BTreeSet::new()),
            color,
        }
    }

    /// Forget fetched key names.
    pub fn forget_keys(&self) {
        self.keys.forget();
    }

    /// The member ids to complete, as the last status round found them.
    pub fn set_members(&self, ids: impl IntoIterator<Item = u64>) {
        *self.members.borrow_mut() = ids.into_iter().collect();
    }

    /// The candidates for the text `text` typed in `slot`.
    fn candidates(&self, slot: Slot<'_>, text: &str) -> Vec<Pair> {
        let words: Vec<String> = match slot {
            Slot::Command => self.grammar.names(),
            Slot::ReplArgument(c) if c.name == "help" => self.grammar.names(),
            Slot::ReplArgument(c) => c.values.iter().map(|v| v.to_string()).collect(),
            Slot::OptionValue(o) => o.values.clone(),
            Slot::Option(c) => c
                .options
                .iter()
                .filter_map(|o| o.long.as_ref().map(|l| format!("--{l}")))
                .collect(),
            Slot::Positional(c, n) => match c.positionals.get(n) {
                Some(p) if p.id == "key" || p.id == "prefix" => self.keys.starting_with(text),
                Some(p) if p.id == "id" => self.members.borrow().iter().map(|id| id.to_string()).collect(),
                _ => Vec::new(),
            },
            Slot::Subcommand(c) => c
                .subcommands
                .iter()
                .flat_map(|s| std::iter::once(s.name.clone()).chain(s.aliases.iter().cloned()))
                .collect(),
            Slot::Unknown => Vec::new(),
        };
        words
            .into_iter()
            .filter(|w| w.starts_with(text))
            .map(|w| Pair {
                replacement: format!("{} ", quote(&w)),
                display: w,
            })
            .collect()
    }
}

impl Completer for ReplHelper<'_> {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let words = lex(&line[..pos]);
        let in_word = words.last().is_some_and(|w| w.end == pos);
        let (start, text, index) = match words.last() {
            Some(w) if in_word => (w.start, w.text.clone(), words.len() - 1),
            _ => (pos, String::new(), words.len()),
        };
        let slot = self.grammar.slot(&words, index, &text);
        Ok((start, self.candidates(slot, &text)))
    }
}

impl Hinter for ReplHelper<'_> {
    type Hint = SyntaxHint;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<SyntaxHint> {
        if pos < line.len() || line.trim().is_empty() {
            return None;
        }
        let words = lex(line);
        let after_space = words.last().is_some_and(|w| w.end < line.len());
        let first = words.first()?;
        if words.len() == 1 && !after_space {
            // Still typing the command: complete a name only one command has.
            let names = self.grammar.names();
            let mut matching = names.iter().filter(|n| n.starts_with(&first.text));
            let name = matching.next()?;
            if matching.next().is_some() && *name != first.text {
                return None;
            }
            let rest = &name[first.text.len()..];
            let syntax = self.grammar.syntax(name, 0).unwrap_or_default();
            let display = if syntax.is_empty() {
                rest.to_string()
            } else {
                format!("{rest} {syntax}")
            };
            return (!display.is_empty()).then(|| SyntaxHint {
                display,
                completion: (!rest.is_empty()).then(|| rest.to_string()),
            });
        }
        if !after_space {
            return None;
        }
        let display = match self.grammar.slot(&words, words.len(), "") {
            Slot::Positional(c, n) => c.syntax_after(n),
            Slot::Subcommand(c) => c.syntax_after(0),
            Slot::ReplArgument(_) => self.grammar.syntax(&first.text, 0)?,
            _ => return None,
        };
        (!display.is_empty()).then_some(SyntaxHint {
            display,
            completion: None,
        })
    }
}

impl Highlighter for ReplHelper<'_> {
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        if self.color {
            // Dark grey, as fish and zsh-autosuggestions show theirs.
            Cow::Owned(format!("\x1b[90m{hint}\x1b[0m"))
        } else {
            Cow::Borrowed(hint)
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        false
    }
}

impl Validator for ReplHelper<'_> {}

impl Helper for ReplHelper<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn grammar() -> Grammar {
        Grammar::from_cli()
    }

    #[test]
    fn the_grammar_is_read_from_clap() {
        let g = grammar();
        let put = g.command("put").expect("put");
        assert_eq!(
            put.positionals.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["key", "value"]
        );
        assert!(put.option("--file").is_some_and(|o| o.value_name.is_some()));
        assert!(put.option("--string").is_some_and(|o| o.value_name.is_none()));
        let output = put.option("-o").expect("the global -o reaches put");
        assert_eq!(output.values, ["table", "json", "plain"]);
        assert_eq!(g.command("del").map(|c| c.name.as_str()), Some("delete"));
        assert_eq!(g.command("ls").map(|c| c.name.as_str()), Some("keys"));
        assert!(g.command("repl").is_none() && g.command("help").is_none());
        assert!(g.has_json_value("put") && g.has_json_value("append") && !g.has_json_value("get"));
        assert!(g.takes_value("put", "--file") && g.takes_value("get", "--timeout"));
        assert!(!g.takes_value("put", "--string") && !g.takes_value("put", "-ojson"));
        let offered: Vec<String> = put.options.iter().filter_map(|o| o.long.clone()).collect();
        for absent in ["cluster", "endpoints", "version"] {
            assert!(!offered.iter().any(|o| o == absent), "{absent} in {offered:?}");
        }
        assert!(offered.iter().any(|o| o == "timeout"), "{offered:?}");
    }

    #[test]
    fn hints_show_the_syntax_still_to_type() {
        let g = grammar();
        assert_eq!(
            g.command("put").map(|c| c.syntax_after(0)).as_deref(),
            Some("<KEY> [VALUE] [--string] [--file FILE] [--if-index N] [--if-absent]")
        );
        assert_eq!(
            g.command("put").map(|c| c.syntax_after(1)).as_deref(),
            Some("[VALUE] [--string] [--file FILE] [--if-index N] [--if-absent]")
        );
        assert_eq!(
            g.command("get").map(|c| c.syntax_after(0)).as_deref(),
            Some("<KEY>")
        );
        assert_eq!(g.syntax(".output", 0).as_deref(), Some("table|json|plain"));
    }

    #[test]
    fn words_are_classified_by_position() {
        let g = grammar();
        let slot = |line: &str| {
            let words = lex(line);
            let index = if line.ends_with(' ') {
                words.len()
            } else {
                words.len() - 1
            };
            let text = if line.ends_with(' ') {
                ""
            } else {
                &words[index].text
            };
            match g.slot(&words, index, text) {
                Slot::Command => "command".to_string(),
                Slot::Option(_) => "option".to_string(),
                Slot::OptionValue(o) => format!("value of {}", o.long.clone().unwrap_or_default()),
                Slot::Positional(c, n) => format!("{} #{n}", c.name),
                Slot::Subcommand(c) => format!("subcommand of {}", c.name),
                Slot::ReplArgument(c) => format!("argument of {}", c.name),
                Slot::Unknown => "unknown".to_string(),
            }
        };
        assert_eq!(slot("ge"), "command");
        assert_eq!(slot("get "), "get #0");
        assert_eq!(slot("get us"), "get #0");
        assert_eq!(slot("put k "), "put #1");
        assert_eq!(slot("put --string k "), "put #1");
        assert_eq!(slot("put --file "), "value of file");
        assert_eq!(slot("get k -o "), "value of output");
        assert_eq!(slot("put --st"), "option");
        assert_eq!(slot("ls "), "keys #0");
        assert_eq!(slot(".output "), "argument of .output");
        assert_eq!(slot("frob "), "unknown");
        assert_eq!(slot("member "), "subcommand of member");
        assert_eq!(slot("member pro"), "subcommand of member");
        assert_eq!(slot("member promote "), "promote #0");
        assert_eq!(slot("member add 3 --http "), "value of http");
        assert_eq!(slot("member add 3 --http h:1 --raft h:2 "), "add #1");
        assert_eq!(slot("leader "), "subcommand of leader");
        assert_eq!(slot("leader transfer "), "transfer #0");
        assert_eq!(slot("member frob "), "unknown");
    }

    #[test]
    fn member_commands_are_hinted_and_their_ids_completed() {
        let g = grammar();
        let member = g.command("member").expect("member");
        assert_eq!(member.syntax_after(0), "list|add|promote|remove|update");
        let add = member.subcommand("add").expect("add");
        assert_eq!(add.syntax_after(0), "<ID> [--http HOST:PORT] [--raft HOST:PORT]");
        assert_eq!(member.subcommand("rm").map(|c| c.name.as_str()), Some("remove"));
    }
}
