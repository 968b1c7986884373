//! `DATABASE_URL`: the PostgreSQL connection URL, in every build (the
//! setting is read and printed without the `postgres` feature too). It
//! prints with its password masked, everywhere (`Display` and `Debug`), so
//! that no log line, error, `--help` text or startup line can carry it;
//! [`DatabaseUrl::expose`] is the one way to the real text, for connecting.

use std::fmt;
use std::ops::Range;

/// A PostgreSQL connection URL (`postgres://user:password@host:port/db`).
/// Prints with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Accepts `postgres://` and `postgresql://` URLs; the rest of the URL
    /// is checked by the driver when the service connects. The error is a
    /// reason that does not quote the URL.
    pub fn parse(url: &str) -> Result<DatabaseUrl, &'static str> {
        let known = ["postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme));
        if !known {
            return Err("a URL starting with postgres:// or postgresql://");
        }
        Ok(DatabaseUrl(url.to_owned()))
    }

    /// `text` with whatever stands where a URL's password would be
    /// replaced by `***`, whether or not it is a usable URL: for quoting a
    /// refused value (a `host=… password=…` string included).
    pub fn masked(text: &str) -> String {
        DatabaseUrl(text.to_owned()).to_string()
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces this URL's secrets, wherever they appear in `text`, by
    /// `***` (a driver's error message may quote them), as written in the
    /// URL and percent-decoded.
    pub fn mask_in(&self, text: &str) -> String {
        let mut masked = text.to_owned();
        for range in self.secrets() {
            let raw = &self.0[range];
            let decoded = percent_decoded(raw);
            for secret in [raw, decoded.as_str()] {
                if !secret.is_empty() {
                    masked = masked.replace(secret, "***");
                }
            }
        }
        masked
    }

    /// The byte ranges of the secrets in the URL, in order: the password
    /// of its user part and the value of a `password` parameter (in any
    /// case); in a key-value string (`host=db password=…`, refused as a
    /// setting but quoted in the refusal), the `password` value.
    fn secrets(&self) -> Vec<Range<usize>> {
        let text = &self.0;
        // A URL of any scheme (one refused as not postgres:// is quoted
        // too), or else key-value.
        let scheme = text.find("://").filter(|&end| {
            end > 0
                && text[..end]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        });
        match scheme {
            Some(end) => url_secrets(text, end + 3),
            None => key_value_secrets(text),
        }
    }
}

/// A URL's secrets, read as the driver reads the URL, and wider where that
/// would be ambiguous. The user part runs up to the first `@` (its
/// password after its first `:`), and the password here up to the last
/// `@` before the host's end, so that an unescaped `@`, `/` or `?` in it
/// is masked with the rest (a driver error may quote what it took for the
/// host). Parameters are split on `&` and `=`, their names
/// percent-decoded (`pass%77ord` is `password` to the driver).
fn url_secrets(text: &str, after_scheme: usize) -> Vec<Range<usize>> {
    let mut secrets = Vec::new();
    let mut params_from = after_scheme;
    if let Some(at) = text[after_scheme..].find('@').map(|i| after_scheme + i)
        && let Some(colon) = text[after_scheme..at].find(':')
    {
        let host_end = text[at..].find(['/', '?']).map_or(text.len(), |i| at + i);
        let last_at = text[at..host_end].rfind('@').map_or(at, |i| at + i);
        secrets.push(after_scheme + colon + 1..last_at);
        params_from = last_at;
    }
    if let Some(question) = text[params_from..].find('?').map(|i| params_from + i) {
        let mut start = question + 1;
        for pair in text[question + 1..].split('&') {
            if let Some(equals) = pair.find('=')
                && percent_decoded(&pair[..equals]).eq_ignore_ascii_case("password")
                && equals + 1 < pair.len()
            {
                secrets.push(start + equals + 1..start + pair.len());
            }
            start += pair.len() + 1;
        }
    }
    secrets
}

/// The `password` values of a key-value connection string, tokenized as
/// the driver does: spaces allowed around `=`, a value either quoted
/// (`'…'`, with `\` escapes) or running to the next space (with `\`
/// escapes).
fn key_value_secrets(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let space = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_whitespace);
    let mut secrets = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while space(i) {
            i += 1;
        }
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && !space(i) {
            i += 1;
        }
        let key = &text[key_start..i];
        while space(i) {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            // A word without a value: on to the next.
            continue;
        }
        i += 1;
        while space(i) {
            i += 1;
        }
        let value_start = i;
        let quoted = bytes.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        while i < bytes.len() && !(if quoted { bytes[i] == b'\'' } else { space(i) }) {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        if quoted {
            i += 1;
        }
        i = i.min(bytes.len());
        if key.eq_ignore_ascii_case("password") && i > value_start {
            secrets.push(value_start..i);
        }
    }
    secrets
}

/// `%XX` sequences decoded (as the driver decodes a password); anything
/// that is not one is kept as is.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = 0;
        for range in self.secrets() {
            write!(f, "{}***", &self.0[shown..range.start])?;
            shown = range.end;
        }
        f.write_str(&self.0[shown..])
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_prints() {
        let url =
            DatabaseUrl::parse("postgres://app:s3cr%40t@db.example:5433/products").expect("valid");
        assert_eq!(
            url.to_string(),
            "postgres://app:***@db.example:5433/products"
        );
        assert_eq!(
            format!("{url:?}"),
            "DatabaseUrl(postgres://app:***@db.example:5433/products)"
        );
        assert_eq!(
            url.expose(),
            "postgres://app:s3cr%40t@db.example:5433/products"
        );
        // No password, or no user: printed as is.
        for plain in [
            "postgres://app@db/products",
            "postgresql://db:5432/products",
        ] {
            assert_eq!(DatabaseUrl::parse(plain).expect("valid").to_string(), plain);
        }
        // A password with '@' and ':' in it (unescaped): still all of it.
        let odd = DatabaseUrl("postgres://u:p:a@ss@h/db".to_owned());
        assert_eq!(odd.to_string(), "postgres://u:***@h/db");
        assert_eq!(
            odd.mask_in("password p:a@ss rejected"),
            "password *** rejected"
        );
    }

    #[test]
    fn every_secret_the_driver_would_read_is_masked() {
        for (url, shown, secret) in [
            // An unescaped '/' or '?' in the password: the driver reads
            // the user part up to the first '@'.
            (
                "postgres://app:pa/ss@h/db",
                "postgres://app:***@h/db",
                "pa/ss",
            ),
            (
                "postgres://app:pa?ss@h:5432/db",
                "postgres://app:***@h:5432/db",
                "pa?ss",
            ),
            // The password as a parameter, alone or among others.
            (
                "postgres://app@h/db?password=hunter2",
                "postgres://app@h/db?password=***",
                "hunter2",
            ),
            (
                "postgresql://h/db?sslmode=disable&Password=hunter2&application_name=x",
                "postgresql://h/db?sslmode=disable&Password=***&application_name=x",
                "hunter2",
            ),
            // Both at once.
            (
                "postgres://h/db?password=hunter2&application_name=a@b",
                "postgres://h/db?password=***&application_name=a@b",
                "hunter2",
            ),
            (
                "postgres://app:one@h/db?password=two",
                "postgres://app:***@h/db?password=***",
                "one",
            ),
        ] {
            let parsed = DatabaseUrl::parse(url).expect("a postgres URL");
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(format!("{parsed:?}"), format!("DatabaseUrl({shown})"));
            assert_eq!(
                parsed.mask_in(&format!("the server said: {secret} is wrong")),
                "the server said: *** is wrong"
            );
        }
        // Percent-encoded in the URL, quoted decoded by a driver.
        let encoded = DatabaseUrl::parse("postgres://u:s3cr%40t@h/db").expect("valid");
        assert_eq!(encoded.mask_in("s3cr@t and s3cr%40t"), "*** and ***");
        // A parameter name percent-encoded; a '@' in a parameter's value;
        // a space in a parameter's value (the driver reads to '&').
        for (url, shown) in [
            (
                "postgres://u@h/db?pass%77ord=s3cret",
                "postgres://u@h/db?pass%77ord=***",
            ),
            (
                "postgres://u:p@h/db?password=x@y",
                "postgres://u:***@h/db?password=***",
            ),
            (
                "postgres://h/db?password=hunter 2&x=1",
                "postgres://h/db?password=***&x=1",
            ),
        ] {
            assert_eq!(DatabaseUrl::parse(url).expect("valid").to_string(), shown);
        }
        // A key-value string, refused as a setting, is quoted masked.
        assert_eq!(
            DatabaseUrl::masked("host=db user=app password=hunter2 dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        for (text, shown) in [
            (
                "host=db password='hunter 2' dbname=x",
                "host=db password=*** dbname=x",
            ),
            (
                r"host=db password='it\'s x' dbname=x",
                "host=db password=*** dbname=x",
            ),
            (r"password=a\ b host=db", "password=*** host=db"),
            ("password = hunter2 host=db", "password = *** host=db"),
            (
                "password=hunter2 application_name=a://b",
                "password=*** application_name=a://b",
            ),
        ] {
            assert_eq!(DatabaseUrl::masked(text), shown, "{text}");
        }
    }

    #[test]
    fn a_url_of_another_kind_is_refused() {
        let e = DatabaseUrl::parse("mysql://root:hunter2@db/x").expect_err("not postgres");
        assert!(e.contains("postgres://"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
