//! How a typed line becomes the words that clap parses.
//!
//! The REPL hands every line to the same clap definition as the one-shot commands, so the only
//! thing it adds is the step a shell would do first: splitting the line into words. The rules
//! are the POSIX shell's, minus everything that is not quoting (no variables, globs or
//! pipes):
//!
//! - words are separated by unquoted whitespace;
//! - `'...'` is literal;
//! - `"..."` is literal except that a backslash escapes `"`, `\`, `$` and `` ` ``;
//! - outside quotes a backslash makes the next character literal.
//!
//! So `put 'my key' "a b"` means what it means in bash, and what `kvctl put 'my key' "a b"`
//! means on the command line.
//!
//! One rule is added, because typing quotes around JSON is the thing people get wrong most: when
//! the VALUE of `put` or `append` starts with `[` or `{`, it is taken as it stands. If a JSON
//! value can be read from that point, the value is exactly that JSON, and whatever follows it is
//! split as usual (so `put a [1, 2] --string` still works); otherwise the value is the rest of the
//! line, which the one-shot grammar then stores as a string, as `kvctl put a '[rest]'` would.
//! `put a ["cat", "dog"]` and `append a {"x": 1}` therefore do what they look like. Values that
//! start with `"` are not special: in a shell `"42"` is the number 42, and so it is here.
//!
//! Completion and hints need to know which word the cursor is in even while a quote is still
//! open, so [`lex`] never fails: it reports an unterminated quote on the last word instead.

use std::fmt;

/// One word of a line: its text after quote removal, and where it stands in the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word as the command sees it, quotes removed.
    pub text: String,
    /// Byte offset of its first character (an opening quote included).
    pub start: usize,
    /// Byte offset just past its last character.
    pub end: usize,
    /// The quote the line ended inside of, if it did.
    pub unterminated: Option<Quote>,
}

/// A line that cannot be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A quote was opened and never closed.
    #[error("unterminated {0} quote; close it, or escape it with a backslash")]
    Unterminated(Quote),
}

/// Which quote was left open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quote {
    /// `'`
    Single,
    /// `"`
    Double,
}

impl fmt::Display for Quote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quote::Single => "single",
            Quote::Double => "double",
        })
    }
}

/// What the splitter must know of the grammar to find a command's VALUE: which commands have
/// one, and which of their options consume the next word.
pub trait ValueSlots {
    /// True when `command`'s second positional argument is a JSON value (`put`, `append`).
    fn has_json_value(&self, command: &str) -> bool;
    /// True when `option` (as typed, e.g. `--file` or `-o`) of `command` takes the next word as
    /// its value.
    fn takes_value(&self, command: &str, option: &str) -> bool;
}

/// Split `line` into the words clap will parse, applying the JSON rule of the module docs.
pub fn split(line: &str, grammar: &impl ValueSlots) -> Result<Vec<String>, SplitError> {
    let mut words: Vec<String> = Vec::new();
    let mut at = 0;
    let mut positionals = 0;
    let mut option_value_next = false;
    let mut options_ended = false;
    loop {
        let start = skip_space(line, at);
        if start >= line.len() {
            return Ok(words);
        }
        let rest = &line[start..];
        let value_slot = positionals == 2
            && !option_value_next
            && words.first().is_some_and(|c| grammar.has_json_value(c));
        if value_slot && (rest.starts_with('[') || rest.starts_with('{')) {
            let (value, used) = json_prefix(rest).unwrap_or((rest.trim_end(), rest.len()));
            words.push(value.to_string());
            positionals += 1;
            at = start + used;
            continue;
        }
        let word = next_word(line, start);
        if let Some(quote) = word.unterminated {
            return Err(SplitError::Unterminated(quote));
        }
        at = word.end;
        let raw = &line[word.start..word.end];
        if option_value_next {
            option_value_next = false;
        } else if words.is_empty() {
            positionals = 1;
        } else if !options_ended && raw == "--" {
            options_ended = true;
        } else if !options_ended && word.text.starts_with('-') && word.text.len() > 1 {
            let command = words.first().map(String::as_str).unwrap_or("");
            option_value_next = !word.text.contains('=') && grammar.takes_value(command, &word.text);
        } else {
            positionals += 1;
        }
        words.push(word.text);
    }
}

/// Every word of `line`, leniently: an unterminated quote ends the last word.
pub fn lex(line: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut at = 0;
    loop {
        let start = skip_space(line, at);
        if start >= line.len() {
            return words;
        }
        let word = next_word(line, start);
        at = word.end;
        words.push(word);
    }
}

/// `text` quoted so that [`split`] gives it back unchanged: bare when it is made of characters no
/// shell treats specially, in single quotes otherwise.
pub fn quote(text: &str) -> String {
    let safe = |c: char| c.is_alphanumeric() || "/_.:@%+=,-".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn skip_space(line: &str, from: usize) -> usize {
    line[from..]
        .char_indices()
        .find(|(_, c)| !c.is_whitespace())
        .map_or(line.len(), |(i, _)| from + i)
}

/// The word starting at `start` (not whitespace).
fn next_word(line: &str, start: usize) -> Word {
    let mut text = String::new();
    let mut chars = line[start..].char_indices().peekable();
    let mut unterminated = None;
    let mut end = line.len();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                end = start + i;
                break;
            }
            '\'' => {
                unterminated = Some(Quote::Single);
                for (_, c) in chars.by_ref() {
                    if c == '\'' {
                        unterminated = None;
                        break;
                    }
                    text.push(c);
                }
            }
            '"' => {
                unterminated = Some(Quote::Double);
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => {
                            unterminated = None;
                            break;
                        }
                        '\\' => match chars.peek() {
                            Some(&(_, next)) if "\"\\$`".contains(next) => {
                                text.push(next);
                                chars.next();
                            }
                            _ => text.push('\\'),
                        },
                        c => text.push(c),
                    }
                }
            }
            // A backslash at the very end stays, as there is nothing for it to escape.
            '\\' => text.push(chars.next().map_or('\\', |(_, next)| next)),
            c => text.push(c),
        }
    }
    Word {
        text,
        start,
        end,
        unterminated,
    }
}

/// The JSON value at the start of `text` and the bytes it spans, when there is one.
fn json_prefix(text: &str) -> Option<(&str, usize)> {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    match values.next() {
        Some(Ok(_)) => {
            let used = values.byte_offset();
            Some((&text[..used], used))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `put` and `append` have a value; `--file`, `-o` and `--timeout` take one.
    struct Kv;
    impl ValueSlots for Kv {
        fn has_json_value(&self, command: &str) -> bool {
            command == "put" || command == "append"
        }
        fn takes_value(&self, _command: &str, option: &str) -> bool {
            ["--file", "-o", "--output", "--timeout"].contains(&option)
        }
    }

    fn words(line: &str) -> Vec<String> {
        split(line, &Kv).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn quoting_works_like_a_shell() {
        assert_eq!(words("get a"), ["get", "a"]);
        assert_eq!(words("  get   a  "), ["get", "a"]);
        assert_eq!(
            words("put 'my key' \"two words\""),
            ["put", "my key", "two words"]
        );
        assert_eq!(words(r#"put k "say \"hi\" \n""#), ["put", "k", r#"say "hi" \n"#]);
        assert_eq!(words(r"put k it\'s\ fine"), ["put", "k", "it's fine"]);
        assert_eq!(words("put k 'a'\"b\"c"), ["put", "k", "abc"]);
        assert_eq!(words("put k ''"), ["put", "k", ""]);
        assert_eq!(words("get a\\"), ["get", "a\\"]);
        assert_eq!(
            words("put k \"42\""),
            ["put", "k", "42"],
            "like a shell: the number 42"
        );
        assert_eq!(words(""), Vec::<String>::new());
    }

    #[test]
    fn unterminated_quotes_are_refused() {
        assert_eq!(split("get 'a", &Kv), Err(SplitError::Unterminated(Quote::Single)));
        assert_eq!(
            split("get \"a", &Kv),
            Err(SplitError::Unterminated(Quote::Double))
        );
        assert_eq!(
            split("get \"it's", &Kv),
            Err(SplitError::Unterminated(Quote::Double))
        );
    }

    #[test]
    fn a_json_value_needs_no_quotes() {
        assert_eq!(
            words(r#"put a ["cat", "dog"]"#),
            ["put", "a", r#"["cat", "dog"]"#]
        );
        assert_eq!(words(r#"append a {"x": 1}"#), ["append", "a", r#"{"x": 1}"#]);
        assert_eq!(
            words(r#"append a {"it's": "a b"}  "#),
            ["append", "a", r#"{"it's": "a b"}"#]
        );
        assert_eq!(words("put a [1, 2] --string"), ["put", "a", "[1, 2]", "--string"]);
        assert_eq!(
            words("put -o json a [1, 2]"),
            ["put", "-o", "json", "a", "[1, 2]"]
        );
        assert_eq!(
            words("put --string a {\"a\": [ ]}"),
            ["put", "--string", "a", "{\"a\": [ ]}"]
        );
        assert_eq!(words("put -ojson a [1, 2]"), ["put", "-ojson", "a", "[1, 2]"]);
        assert_eq!(
            words("put --timeout=5s a [1, 2]"),
            ["put", "--timeout=5s", "a", "[1, 2]"]
        );
    }

    #[test]
    fn text_that_only_looks_like_json_is_the_rest_of_the_line() {
        assert_eq!(words("put a [cat, dog]"), ["put", "a", "[cat, dog]"]);
        assert_eq!(words("put a {'unclosed  "), ["put", "a", "{'unclosed"]);
    }

    #[test]
    fn the_json_rule_applies_only_to_values() {
        // A key may start with a bracket; only the VALUE slot is special.
        assert_eq!(words("put [a] 1"), ["put", "[a]", "1"]);
        assert_eq!(words("get [a b]"), ["get", "[a", "b]"]);
        assert_eq!(words("put --file [x y] k"), ["put", "--file", "[x", "y]", "k"]);
        assert_eq!(words("keys [1, 2]"), ["keys", "[1,", "2]"]);
    }

    #[test]
    fn lexing_is_lenient_and_keeps_positions() {
        let w = lex("get 'my ke");
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].text, "my ke");
        assert_eq!((w[1].start, w[1].end), (4, 10));
        assert_eq!(w[1].unterminated, Some(Quote::Single));
        let w = lex("put  a b");
        assert_eq!((w[1].start, w[1].end, w[2].start), (5, 6, 7));
        assert_eq!(w[2].unterminated, None);
    }

    #[test]
    fn quoted_words_split_back_to_themselves() {
        for text in [
            "plain",
            "user/1",
            "two words",
            "it's",
            "a\"b",
            "",
            "tab\there",
            "ünï",
        ] {
            let line = format!("get {}", quote(text));
            assert_eq!(words(&line), ["get", text], "{line}");
        }
        assert_eq!(quote("user/1"), "user/1");
        assert_eq!(quote("a b"), "'a b'");
    }
}
