//! How a value on the command line becomes the JSON value that is stored.
//!
//! Values are JSON on the wire, but typing JSON quotes in a shell is miserable, so kvctl guesses
//! the way an operator means it: text that parses as JSON is stored as that JSON (`42`,
//! `'["cat","dog"]'`, `'{"a":1}'`, `true`), anything else is stored as a string
//! (`kvctl put name "Kyle Chard"`). `--string` switches the guess off.
//!
//! The guess stops where a mistake is likelier than a string: text that starts like JSON (with
//! `[`, `{` or `"`, after any leading whitespace) but does not parse is refused with the
//! parser's complaint, since `'["cat",'` is a typo far more often than a wish to store those
//! eight characters. `--string` stores such text as it is.
//!
//! Values read from stdin or a file lose exactly one trailing newline, because `echo` and
//! editors add one that nobody means to store. An empty input is refused: it is almost always a
//! mistake (an empty pipe, a wrong file), and an empty string can still be given as `''`.

use serde_json::Value;

/// Where the text of a value came from; only used to word errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A command-line argument.
    Argument,
    /// Standard input (`-`).
    Stdin,
    /// A file (`--file`).
    File,
}

/// Why the text of a value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Stdin or the file was empty.
    #[error("{0} is empty; pass an empty string as '' if that is really meant")]
    Empty(&'static str),
    /// The bytes are not UTF-8 and so cannot be a JSON string.
    #[error("{0} is not valid UTF-8; values are JSON and must be text")]
    NotUtf8(&'static str),
    /// The text starts like JSON but is not valid JSON.
    #[error(
        "{origin} starts like JSON but is not valid JSON ({reason}); fix it, or give --string \
         to store the text as a string"
    )]
    BrokenJson {
        /// Where the text came from.
        origin: &'static str,
        /// The JSON parser's complaint.
        reason: String,
    },
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Argument => "the value",
            Source::Stdin => "standard input",
            Source::File => "the value file",
        }
    }
}

/// Turn raw input into a value: JSON when it parses as JSON (unless `force_string`), otherwise
/// the text itself as a string.
pub fn parse_value(raw: Vec<u8>, source: Source, force_string: bool) -> Result<Value, ValueError> {
    let mut text = String::from_utf8(raw).map_err(|_| ValueError::NotUtf8(source.describe()))?;
    if source != Source::Argument {
        if text.ends_with("\r\n") {
            text.truncate(text.len() - 2);
        } else if text.ends_with('\n') {
            text.truncate(text.len() - 1);
        }
        if text.is_empty() {
            return Err(ValueError::Empty(source.describe()));
        }
    }
    interpret(text, force_string).map_err(|reason| ValueError::BrokenJson {
        origin: source.describe(),
        reason,
    })
}

/// JSON when `text` is valid JSON and `force_string` is off; otherwise a JSON string, unless
/// the text starts like JSON, which is refused with the parser's complaint.
pub fn interpret(text: String, force_string: bool) -> Result<Value, String> {
    if force_string {
        return Ok(Value::String(text));
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(value) => Ok(value),
        Err(e) if text.trim_start().starts_with(['[', '{', '"']) => Err(e.to_string()),
        Err(_) => Ok(Value::String(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arg(text: &str) -> Value {
        parse_value(text.as_bytes().to_vec(), Source::Argument, false).expect("valid")
    }

    #[test]
    fn json_is_stored_as_json() {
        assert_eq!(arg(r#"["cat","dog"]"#), json!(["cat", "dog"]));
        assert_eq!(arg("42"), json!(42));
        assert_eq!(arg("-1.5"), json!(-1.5));
        assert_eq!(arg(r#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(arg("true"), json!(true));
        assert_eq!(arg("null"), Value::Null);
        assert_eq!(arg(r#""quoted""#), json!("quoted"));
    }

    #[test]
    fn anything_else_is_a_string() {
        assert_eq!(arg("Kyle Chard"), json!("Kyle Chard"));
        assert_eq!(arg("42 apples"), json!("42 apples"));
        assert_eq!(arg("cat]"), json!("cat]"));
        assert_eq!(arg("x\"y\""), json!("x\"y\""));
        assert_eq!(arg(""), json!(""));
        assert_eq!(arg("  "), json!("  "));
    }

    #[test]
    fn text_that_starts_like_json_must_be_json() {
        for broken in [
            r#"["cat","#,
            "{not json",
            r#""unclosed"#,
            r#"  [1, 2"#,
            "[1] 2",
            r#""a" "b""#,
        ] {
            let err = parse_value(broken.as_bytes().to_vec(), Source::Argument, false).expect_err(broken);
            let text = err.to_string();
            assert!(
                text.starts_with("the value starts like JSON but is not valid JSON ("),
                "{text}"
            );
            assert!(text.contains("--string"), "{text}");
        }
        let err = parse_value(b"{\"a\":\n[1,\n".to_vec(), Source::File, false).expect_err("file");
        assert!(err.to_string().contains("at line 2"), "{err}");
        assert!(
            err.to_string().starts_with("the value file starts like JSON"),
            "{err}"
        );
        // --string stores the text as it is.
        let v = parse_value(br#"["cat","#.to_vec(), Source::Argument, true).expect("string");
        assert_eq!(v, json!(r#"["cat","#));
    }

    #[test]
    fn force_string_keeps_json_text_as_text() {
        let v = parse_value(b"42".to_vec(), Source::Argument, true).expect("valid");
        assert_eq!(v, json!("42"));
        let v = parse_value(b"[1]\n".to_vec(), Source::Stdin, true).expect("valid");
        assert_eq!(v, json!("[1]"));
    }

    #[test]
    fn piped_input_loses_one_trailing_newline() {
        let v = parse_value(b"hello\n".to_vec(), Source::Stdin, false).expect("valid");
        assert_eq!(v, json!("hello"));
        let v = parse_value(b"two\n\n".to_vec(), Source::File, false).expect("valid");
        assert_eq!(v, json!("two\n"));
        let v = parse_value(b"{\"a\":[1,2]}\r\n".to_vec(), Source::File, false).expect("valid");
        assert_eq!(v, json!({"a": [1, 2]}));
        // An argument is taken literally.
        let v = parse_value(b"x\n".to_vec(), Source::Argument, false).expect("valid");
        assert_eq!(v, json!("x\n"));
    }

    #[test]
    fn empty_or_binary_input_is_refused() {
        let err = parse_value(Vec::new(), Source::Stdin, false).expect_err("empty");
        assert_eq!(err, ValueError::Empty("standard input"));
        assert!(err.to_string().starts_with("standard input is empty"));
        assert!(parse_value(b"\n".to_vec(), Source::File, false).is_err());
        let err = parse_value(vec![0xff, 0xfe], Source::File, false).expect_err("binary");
        assert_eq!(err, ValueError::NotUtf8("the value file"));
    }
}
