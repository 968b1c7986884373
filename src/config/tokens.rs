//! `API_TOKENS` and `API_TOKENS_FILE`: the bearer tokens a client must
//! present, each allowed to read and write or only to read, and
//! `PUBLIC_PATHS`, the operability routes left open without one.
//!
//! A token never leaves this type in the clear: `Debug` and `Display` show
//! how many there are, never their text, so no log line, error or startup
//! line can carry one. [`ApiTokens::scope_of`] compares a presented token
//! with every configured one in time that does not depend on where they
//! differ (nor on which one matched), so that timing the answers does not
//! reveal a token a byte at a time.

use std::fmt;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `GET` and `HEAD`.
    Read,
    /// Reading, and `POST /events`.
    Write,
}

/// The configured tokens; none: every route is open.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiTokens {
    tokens: Vec<(Box<[u8]>, Scope)>,
}

/// Why a token list was refused: which entry, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    /// 1-based position of the entry (its line, in a file).
    pub entry: usize,
    pub reason: &'static str,
}

/// Tokens shorter than this are accepted, with a warning at startup: a
/// guessable token protects nothing.
pub const SHORT_TOKEN: usize = 16;

impl ApiTokens {
    /// Parses entries separated by commas (`API_TOKENS`) or lines
    /// (`API_TOKENS_FILE`): `TOKEN` may read and write, `read:TOKEN` may
    /// only read. Blank entries and lines starting with `#` are skipped. A
    /// token is RFC 6750's `b64token`: letters, digits and `-._~+/`,
    /// optionally ending in `=`.
    pub fn parse(text: &str, separator: char) -> Result<ApiTokens, TokenError> {
        let mut tokens = Vec::new();
        for (n, entry) in text.split(separator).enumerate() {
            let entry = entry.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let (token, scope) = match entry.strip_prefix("read:") {
                Some(token) => (token, Scope::Read),
                None => (entry, Scope::Write),
            };
            if !is_b64token(token) {
                return Err(TokenError {
                    entry: n + 1,
                    reason: "a token is letters, digits and -._~+/ (optionally ending in =), with no spaces",
                });
            }
            tokens.push((token.as_bytes().into(), scope));
        }
        Ok(ApiTokens { tokens })
    }

    /// Both lists together (`API_TOKENS` and `API_TOKENS_FILE`).
    pub fn merged(mut self, other: ApiTokens) -> ApiTokens {
        self.tokens.extend(other.tokens);
        self
    }

    /// Whether any token is configured (then every route but the public
    /// ones needs one).
    pub fn any(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// How many are shorter than [`SHORT_TOKEN`].
    pub fn short(&self) -> usize {
        self.tokens
            .iter()
            .filter(|(t, _)| t.len() < SHORT_TOKEN)
            .count()
    }

    /// What `presented` may do, or `None` if it is not a configured token.
    /// Every configured token is compared in full, whatever the outcome.
    pub fn scope_of(&self, presented: &[u8]) -> Option<Scope> {
        let mut scope = None;
        for (token, allowed) in &self.tokens {
            if constant_time_eq(token, presented) {
                scope = scope.max(Some(*allowed));
            }
        }
        scope
    }
}

/// Equality whose time depends on the lengths only, not on where the bytes
/// differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+"
/// / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// Never the tokens: how many, by scope.
impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let read = self
            .tokens
            .iter()
            .filter(|(_, s)| *s == Scope::Read)
            .count();
        write!(f, "{} tokens ({} read-only)", self.tokens.len(), read)
    }
}

/// `PUBLIC_PATHS`: which operability routes answer without a token when
/// tokens are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicPaths {
    pub healthz: bool,
    pub readyz: bool,
    pub metrics: bool,
    pub openapi: bool,
}

impl PublicPaths {
    /// The paths that may be public, in the order `Display` lists them.
    pub const ALLOWED: &'static str =
        "/healthz, /readyz, /metrics, /openapi.json (comma-separated), or none";

    pub fn parse(text: &str) -> Option<PublicPaths> {
        let mut paths = PublicPaths {
            healthz: false,
            readyz: false,
            metrics: false,
            openapi: false,
        };
        if text.trim().eq_ignore_ascii_case("none") {
            return Some(paths);
        }
        for path in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match path {
                "/healthz" => paths.healthz = true,
                "/readyz" => paths.readyz = true,
                "/metrics" => paths.metrics = true,
                "/openapi.json" => paths.openapi = true,
                _ => return None,
            }
        }
        Some(paths)
    }
}

impl fmt::Display for PublicPaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (self.healthz, "/healthz"),
            (self.readyz, "/readyz"),
            (self.metrics, "/metrics"),
            (self.openapi, "/openapi.json"),
        ];
        let open: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        if open.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&open.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_scopes_and_never_print() {
        let tokens = ApiTokens::parse("w-0123456789abcdef, read:r-0123456789abcdef,", ',').unwrap();
        assert_eq!(tokens.scope_of(b"w-0123456789abcdef"), Some(Scope::Write));
        assert_eq!(tokens.scope_of(b"r-0123456789abcdef"), Some(Scope::Read));
        assert_eq!(tokens.scope_of(b"r-0123456789abcde"), None);
        assert_eq!(tokens.scope_of(b""), None);
        let shown = format!("{tokens} {tokens:?}");
        assert!(!shown.contains("0123456789"), "{shown}");
        assert_eq!(tokens.short(), 0);
    }

    #[test]
    fn a_file_has_a_token_per_line_and_comments() {
        let file = "# deploy tokens\nabc123\n\nread:dashboards-xyz\n";
        let tokens = ApiTokens::parse(file, '\n').unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.short(), 2);
        let bad = ApiTokens::parse("ok\nhas space\n", '\n').unwrap_err();
        assert_eq!(bad.entry, 2);
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn public_paths_parse_and_print() {
        let all = PublicPaths::parse("/healthz,/readyz,/metrics,/openapi.json").unwrap();
        assert_eq!(all.to_string(), "/healthz,/readyz,/metrics,/openapi.json");
        let none = PublicPaths::parse("none").unwrap();
        assert_eq!(none.to_string(), "none");
        assert_eq!(PublicPaths::parse("/events"), None);
    }
}
