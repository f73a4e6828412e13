//! Who may do what on the client port: bearer tokens with roles, and one rule table.
//!
//! With `--auth-file FILE` every client request needs `Authorization: Bearer TOKEN`, and the
//! token's role must allow the request. Without it the port is open, as it always was.
//!
//! # The tokens
//!
//! The file is TOML, one table per token; it holds each token's SHA-256, never the token:
//!
//! ```toml
//! [[token]]
//! name = "ops"        # shown in logs and messages instead of the token
//! role = "admin"      # read, write or admin
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! ```
//!
//! (`printf %s "$TOKEN" | sha256sum` gives the hash.) Roles are ordered: write may do what
//! read may, admin what write may. The file is read at startup (a bad file stops the node) and
//! again on SIGHUP (a bad file is logged and the tokens in force stay). Neither the token nor
//! its hash is ever logged; the token's name is.
//!
//! # The rules
//!
//! What a request needs is decided by its method and path alone, by [`RULES`]: the first rule
//! whose method class and path prefix match decides, and a request no rule matches needs
//! admin. Prefixes match whole path segments (`/keys` matches `/keys` and `/keys/a`, not
//! `/keysx`). Deciding by path prefix rather than per handler means routes added later
//! (membership, snapshots, metrics, watch) are covered the day they are merged, and an
//! unexpected path (a typo, a percent-encoded `/admin`) falls to the strictest rule. The
//! checks run before routing, so a request that is refused has done nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kvapi::ErrorCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: `GET` of keys, listings and status.
    Read,
    /// Reads, and writes to keys (PUT, APPEND, DELETE).
    Write,
    /// Everything, including what changes the cluster under `/admin`.
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing: health and readiness checks.
    Open,
    /// A token with at least this role.
    Needs(Role),
}

/// Which methods a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// `GET` and `HEAD`: methods that change nothing.
    Reads,
    /// Every other method.
    Changes,
    /// Every method.
    Any,
}

impl Methods {
    fn covers(self, method: &Method) -> bool {
        let read = method == Method::GET || method == Method::HEAD;
        match self {
            Methods::Reads => read,
            Methods::Changes => !read,
            Methods::Any => true,
        }
    }
}

/// One line of the rule table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The methods it covers.
    pub methods: Methods,
    /// The path prefix, matched by whole segments.
    pub prefix: &'static str,
    /// What a request it covers needs.
    pub access: Access,
}

const fn rule(methods: Methods, prefix: &'static str, access: Access) -> Rule {
    Rule {
        methods,
        prefix,
        access,
    }
}

/// The rule table; the first match decides, and no match needs admin.
pub const RULES: &[Rule] = &[
    rule(Methods::Reads, "/health", Access::Open),
    rule(Methods::Reads, "/ready", Access::Open),
    rule(Methods::Reads, "/keys", Access::Needs(Role::Read)),
    // Watching changes nothing, whatever method a watch uses.
    rule(Methods::Any, "/watch", Access::Needs(Role::Read)),
    rule(Methods::Reads, "/metrics", Access::Needs(Role::Read)),
    rule(Methods::Changes, "/keys", Access::Needs(Role::Write)),
    // A snapshot holds every value: taking or fetching one is an administrator's act.
    rule(Methods::Any, "/admin/snapshot", Access::Needs(Role::Admin)),
    rule(Methods::Reads, "/admin", Access::Needs(Role::Read)),
    rule(Methods::Changes, "/admin", Access::Needs(Role::Admin)),
];

/// What a request with `method` on `path` needs.
pub fn access_for(method: &Method, path: &str) -> Access {
    RULES
        .iter()
        .find(|r| r.methods.covers(method) && matches_prefix(path, r.prefix))
        .map_or(Access::Needs(Role::Admin), |r| r.access)
}

fn matches_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

/// Why the auth file could not be used. The messages never include a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file could not be read.
    #[error("cannot read the auth file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not what it should be.
    #[error("auth file {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTokens {
    #[serde(default)]
    token: Vec<FileToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    name: String,
    role: Role,
    sha256: String,
}

/// The tokens in force, by their SHA-256.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], (String, Role)>,
}

impl Tokens {
    /// Read and check an auth file.
    pub fn load(path: &Path) -> Result<Tokens, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Tokens::parse(&text).map_err(|message| AuthFileError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parse auth file text.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let file: FileTokens = toml::from_str(text).map_err(|e| e.message().trim().to_string())?;
        let mut by_hash = HashMap::new();
        for t in file.token {
            let hash = parse_hex(&t.sha256).ok_or_else(|| {
                format!(
                    "token {:?}: sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)",
                    t.name
                )
            })?;
            if by_hash.values().any(|(name, _)| *name == t.name) {
                return Err(format!("the token name {:?} appears twice", t.name));
            }
            if let Some((other, _)) = by_hash.insert(hash, (t.name.clone(), t.role)) {
                return Err(format!("tokens {other:?} and {:?} have the same sha256", t.name));
            }
        }
        if by_hash.is_empty() {
            return Err("it lists no [[token]] tables, so no request could be allowed".into());
        }
        Ok(Tokens { by_hash })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The name and role of `token`, if it is one of ours.
    pub fn lookup(&self, token: &str) -> Option<(&str, Role)> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash).map(|(name, role)| (name.as_str(), *role))
    }
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The client port's gate: the tokens in force (none: the port is open), replaceable on
/// SIGHUP.
#[derive(Debug)]
pub struct Gate {
    file: Option<PathBuf>,
    tokens: RwLock<Option<Arc<Tokens>>>,
}

impl Gate {
    /// A gate for `--auth-file` (`None`: open), with the file read now.
    pub fn new(file: Option<PathBuf>) -> Result<Gate, AuthFileError> {
        let tokens = file.as_deref().map(Tokens::load).transpose()?.map(Arc::new);
        Ok(Gate {
            file,
            tokens: RwLock::new(tokens),
        })
    }

    /// The auth file, if there is one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Read the auth file again; on error the tokens in force stay. Returns how many tokens
    /// are in force now.
    pub fn reload(&self) -> Result<usize, AuthFileError> {
        let Some(path) = &self.file else {
            return Ok(0);
        };
        let tokens = Tokens::load(path)?;
        let n = tokens.len();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(tokens));
        Ok(n)
    }

    fn tokens(&self) -> Option<Arc<Tokens>> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Decide a request: `Ok` to let it through, else the answer.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let Some(tokens) = self.tokens() else {
            return Ok(());
        };
        let Access::Needs(needed) = access_for(method, path) else {
            return Ok(());
        };
        let presented = bearer(headers);
        let Some(token) = presented else {
            return Err(Box::new(unauthenticated(
                "this request needs a token: send Authorization: Bearer TOKEN (kvctl: --token or $KVCTL_TOKEN)",
                false,
            )));
        };
        match tokens.lookup(token) {
            None => Err(Box::new(unauthenticated(
                "the bearer token is not valid here (unknown, or revoked); nothing was done",
                true,
            ))),
            Some((name, role)) if role < needed => Err(Box::new(
                ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "token {name:?} has the {} role; {method} {path} needs {}; nothing was done",
                        role.name(),
                        needed.name()
                    ),
                )
                .into_response(),
            )),
            Some(_) => Ok(()),
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// 401 with the challenge RFC 6750 asks for.
fn unauthenticated(message: &str, invalid: bool) -> Response {
    let mut resp = ApiError::new(ErrorCode::Unauthenticated, message).into_response();
    let challenge = if invalid {
        r#"Bearer realm="kvnode", error="invalid_token""#
    } else {
        r#"Bearer realm="kvnode""#
    };
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

/// The middleware that applies the gate to every client request.
pub async fn authorize(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    match gate.check(req.method(), req.uri().path(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refusal) => *refusal,
    }
}

/// Read a token from a file of its own (the first line, trimmed), for a node that talks to
/// other nodes' client ports. The message names the file, never the token.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(token.to_string())
}

/// Re-read the auth file on every SIGHUP, for as long as the node runs.
#[cfg(unix)]
pub fn reload_on_sighup(gate: Arc<Gate>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    if gate.file().is_none() {
        return Ok(());
    }
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match gate.reload() {
                Ok(n) => tracing::info!(tokens = n, "auth file re-read on SIGHUP"),
                Err(e) => {
                    tracing::error!(error = %e, "auth file not re-read on SIGHUP; the tokens in force stay")
                }
            }
        }
    });
    Ok(())
}

/// SIGHUP does not exist here; the auth file is read at startup only.
#[cfg(not(unix))]
pub fn reload_on_sighup(_gate: Arc<Gate>) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn the_rule_table() {
        use Access::{Needs, Open};
        use Role::{Admin, Read, Write};
        let cases = [
            ("GET", "/health", Open),
            ("HEAD", "/ready", Open),
            ("GET", "/keys", Needs(Read)),
            ("GET", "/keys/a/b", Needs(Read)),
            ("GET", "/watch", Needs(Read)),
            ("POST", "/watch", Needs(Read)),
            ("GET", "/metrics", Needs(Read)),
            ("GET", "/admin/status", Needs(Read)),
            ("GET", "/admin/members", Needs(Read)),
            ("POST", "/keys/a", Needs(Write)),
            ("PUT", "/keys/a", Needs(Write)),
            ("DELETE", "/keys/a", Needs(Write)),
            ("POST", "/admin/members", Needs(Admin)),
            ("DELETE", "/admin/members/3", Needs(Admin)),
            ("POST", "/admin/leader", Needs(Admin)),
            ("GET", "/admin/snapshot", Needs(Admin)),
            ("POST", "/admin/snapshot", Needs(Admin)),
            // Nothing matches: the strictest rule.
            ("GET", "/keysx", Needs(Admin)),
            ("GET", "/%61dmin/status", Needs(Admin)),
            ("GET", "/", Needs(Admin)),
            ("POST", "/health", Needs(Admin)),
            ("OPTIONS", "/keys/a", Needs(Write)),
        ];
        for (method, path, expected) in cases {
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            assert_eq!(access_for(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn tokens_are_known_by_their_hash_and_roles_are_ordered() {
        let text = format!(
            "[[token]]\nname = \"reader\"\nrole = \"read\"\nsha256 = \"{}\"\n\
             [[token]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            hex("r-secret"),
            hex("a-secret").to_uppercase()
        );
        let tokens = Tokens::parse(&text).expect("valid");
        assert_eq!(tokens.lookup("r-secret"), Some(("reader", Role::Read)));
        assert_eq!(tokens.lookup("a-secret"), Some(("ops", Role::Admin)));
        assert_eq!(tokens.lookup("nope"), None);
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);

        for (bad, needle) in [
            (
                "[[token]]\nname = \"x\"\nrole = \"read\"\nsha256 = \"abc\"\n",
                "64 hex",
            ),
            (
                "[[token]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"abc\"\n",
                "unknown variant",
            ),
            ("", "no [[token]]"),
            (
                "[[token]]\nname = \"x\"\nrole = \"read\"\nsha256 = \"a\"\ntoken = \"t\"\n",
                "unknown field",
            ),
        ] {
            let err = Tokens::parse(bad).expect_err(bad);
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
        let twice = format!(
            "[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"{0}\"\n[[token]]\nname = \"b\"\nrole = \"read\"\nsha256 = \"{0}\"\n",
            hex("same")
        );
        assert!(Tokens::parse(&twice)
            .expect_err("same hash")
            .contains("same sha256"));
    }

    #[test]
    fn the_gate_answers_401_and_403_and_never_echoes_the_token() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("auth.toml");
        std::fs::write(
            &file,
            format!(
                "[[token]]\nname = \"reader\"\nrole = \"read\"\nsha256 = \"{}\"\n",
                hex("r-secret")
            ),
        )
        .expect("write");
        let gate = Gate::new(Some(file.clone())).expect("gate");
        let with = |token: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(token).expect("header"),
            );
            h
        };
        assert!(gate
            .check(&Method::GET, "/keys/a", &with("Bearer r-secret"))
            .is_ok());
        assert!(gate
            .check(&Method::GET, "/keys/a", &with("bearer  r-secret "))
            .is_ok());
        assert!(gate.check(&Method::GET, "/health", &HeaderMap::new()).is_ok());
        let missing = gate
            .check(&Method::GET, "/keys/a", &HeaderMap::new())
            .expect_err("401");
        assert_eq!(missing.status(), 401);
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="kvnode""#
        );
        let wrong = gate
            .check(&Method::GET, "/keys/a", &with("Bearer w-secret"))
            .expect_err("401");
        assert_eq!(wrong.status(), 401);
        let basic = gate
            .check(&Method::GET, "/keys/a", &with("Basic r-secret"))
            .expect_err("401");
        assert_eq!(basic.status(), 401);
        let write = gate
            .check(&Method::POST, "/keys/a", &with("Bearer r-secret"))
            .expect_err("403");
        assert_eq!(write.status(), 403);

        // A new file takes over on reload; a broken one leaves the old tokens in force.
        std::fs::write(
            &file,
            format!(
                "[[token]]\nname = \"w\"\nrole = \"write\"\nsha256 = \"{}\"\n",
                hex("w-secret")
            ),
        )
        .expect("write");
        assert_eq!(gate.reload().expect("reload"), 1);
        assert!(gate
            .check(&Method::POST, "/keys/a", &with("Bearer w-secret"))
            .is_ok());
        assert!(gate
            .check(&Method::GET, "/keys/a", &with("Bearer r-secret"))
            .is_err());
        std::fs::write(&file, "garbage = ").expect("write");
        let err = gate.reload().expect_err("broken file").to_string();
        assert!(!err.contains("w-secret"), "{err}");
        assert!(gate
            .check(&Method::POST, "/keys/a", &with("Bearer w-secret"))
            .is_ok());

        let open = Gate::new(None).expect("open");
        assert!(open
            .check(&Method::POST, "/admin/members", &HeaderMap::new())
            .is_ok());
    }
}
