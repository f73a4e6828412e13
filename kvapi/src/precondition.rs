//! Conditional writes: the `If-Match` / `If-None-Match` headers and the `ETag` they compare
//! with.
//!
//! Every key carries the log index of its last change, its `mod_index`; a GET sends it as the
//! entity tag `ETag: "<mod_index>"`. A write may carry one condition, and the server applies it
//! only if the condition still holds when the write is applied (in log order, inside the state
//! machine), answering `412 precondition_failed` otherwise:
//!
//! - `If-Match: "<mod_index>"`: the key exists and was last changed at that index, i.e. nobody
//!   wrote it since it was read. This is compare-and-swap.
//! - `If-None-Match: *`: the key does not exist. This is create-if-absent, the base of a lock.
//!
//! The grammar is deliberately narrow, and anything else is refused with a 400 rather than
//! guessed at: one strong tag or `*` as the two forms above, never lists, weak tags (`W/"7"`,
//! which a write must not be conditioned on), `If-Match: *` or `If-None-Match: "<tag>"`. The
//! server and kvctl share this code, so they cannot disagree on what a header means.

use serde::{Deserialize, Serialize};

use crate::LogIndex;

/// Request header: apply only if the key's current entity tag is this one.
pub const IF_MATCH_HEADER: &str = "if-match";
/// Request header: apply only if the key has no current entity tag (`*`: it does not exist).
pub const IF_NONE_MATCH_HEADER: &str = "if-none-match";
/// Response header of GET (and of a 412): the key's `mod_index` as a strong entity tag.
pub const ETAG_HEADER: &str = "etag";

/// The condition a write is applied under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precondition {
    /// The key exists and its `mod_index` is this (`If-Match: "N"`).
    ModIndex(LogIndex),
    /// The key does not exist (`If-None-Match: *`).
    Absent,
}

impl Precondition {
    /// The header that expresses this condition: name and value.
    pub fn header(self) -> (&'static str, String) {
        match self {
            Precondition::ModIndex(index) => (IF_MATCH_HEADER, etag(index)),
            Precondition::Absent => (IF_NONE_MATCH_HEADER, "*".to_string()),
        }
    }

    /// Read the condition of a request from its `If-Match` and `If-None-Match` header values
    /// (`None` when the header is absent). The error is one sentence for a 400 answer.
    pub fn from_headers(
        if_match: Option<&str>,
        if_none_match: Option<&str>,
    ) -> Result<Option<Precondition>, String> {
        match (if_match.map(str::trim), if_none_match.map(str::trim)) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => {
                Err("give If-Match or If-None-Match, not both: a write takes one condition".into())
            }
            (None, Some("*")) => Ok(Some(Precondition::Absent)),
            (None, Some(other)) => Err(format!(
                "If-None-Match {other:?} is not supported: only If-None-Match: * (write only if \
                 the key does not exist)"
            )),
            (Some("*"), None) => Err(
                "If-Match: * is not supported: give the key's mod_index, as in If-Match: \"42\" \
                 (a GET answers it in the ETag header)"
                    .into(),
            ),
            (Some(tag), None) => parse_etag(tag)
                .map(|i| Some(Precondition::ModIndex(i)))
                .ok_or_else(|| {
                    format!(
                        "If-Match {tag:?} is not one entity tag of this server: give the key's \
                     mod_index in double quotes, as in If-Match: \"42\" (no lists, no weak W/ tags)"
                    )
                }),
        }
    }
}

/// The entity tag of a key last changed at `mod_index`: the index in double quotes.
pub fn etag(mod_index: LogIndex) -> String {
    format!("\"{mod_index}\"")
}

/// The `mod_index` inside a strong entity tag written by [`etag`].
pub fn parse_etag(tag: &str) -> Option<LogIndex> {
    let digits = tag.trim().strip_prefix('"')?.strip_suffix('"')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        for p in [
            Precondition::ModIndex(0),
            Precondition::ModIndex(42),
            Precondition::Absent,
        ] {
            let (name, value) = p.header();
            let parsed = match name {
                IF_MATCH_HEADER => Precondition::from_headers(Some(&value), None),
                _ => Precondition::from_headers(None, Some(&value)),
            };
            assert_eq!(parsed, Ok(Some(p)), "{name}: {value}");
        }
        assert_eq!(Precondition::from_headers(None, None), Ok(None));
        assert_eq!(
            Precondition::from_headers(Some(" \"7\" "), None),
            Ok(Some(Precondition::ModIndex(7)))
        );
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let refused = [
            (Some("\"1\""), Some("*"), "not both"),
            (Some("*"), None, "If-Match: * is not supported"),
            (Some("W/\"7\""), None, "weak"),
            (Some("\"1\", \"2\""), None, "no lists"),
            (Some("7"), None, "double quotes"),
            (Some("\"\""), None, "double quotes"),
            (Some("\"-1\""), None, "double quotes"),
            (Some("\"99999999999999999999999\""), None, "double quotes"),
            (None, Some("\"7\""), "only If-None-Match: *"),
        ];
        for (m, n, needle) in refused {
            let err = Precondition::from_headers(m, n).expect_err("refused");
            assert!(err.contains(needle), "{m:?} {n:?}: {err}");
        }
    }

    #[test]
    fn etags_are_quoted_indexes() {
        assert_eq!(etag(17), "\"17\"");
        assert_eq!(parse_etag("\"17\""), Some(17));
        assert_eq!(parse_etag("17"), None);
    }
}
