//! `DATABASE_URL`: the PostgreSQL connection URL, in every build (the
//! setting is read and printed without the `postgres` feature too). It
//! prints with its password masked, everywhere (`Display` and `Debug`), so
//! that no log line, error, `--help` text or startup line can carry it;
//! [`DatabaseUrl::expose`] is the one way to the real text, for connecting.

use std::fmt;

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
    /// of its user part, and the value of every `password=` parameter.
    ///
    /// The user part is read as the driver reads it (up to the first
    /// `@`), and wider where that would be ambiguous: the password runs
    /// from the first `:` to the last `@`, so that an unescaped `@`, `/` or
    /// `?` in it is masked with the rest (a driver error may quote what it
    /// took for the host).
    fn secrets(&self) -> Vec<std::ops::Range<usize>> {
        let text = &self.0;
        let mut secrets = Vec::new();
        let mut params_from = 0;
        if let Some(scheme) = text.find("://") {
            let after_scheme = scheme + 3;
            params_from = after_scheme;
            if let (Some(first_at), Some(last_at)) = (text.find('@'), text.rfind('@'))
                && first_at > after_scheme
                && let Some(colon) = text[after_scheme..first_at].find(':')
            {
                secrets.push(after_scheme + colon + 1..last_at);
                params_from = last_at;
            }
        }
        // `?password=…&…` in a URL, `password=…` (or `'…'`) in a key-value
        // string.
        let lower = text.to_ascii_lowercase();
        let mut at = params_from;
        while let Some(found) = lower[at..].find("password=") {
            let start = at + found + "password=".len();
            let end = if text[start..].starts_with('\'') {
                text[start + 1..]
                    .find('\'')
                    .map_or(text.len(), |i| start + 1 + i + 1)
            } else {
                text[start..]
                    .find(|c: char| c == '&' || c.is_whitespace())
                    .map_or(text.len(), |i| start + i)
            };
            if end > start {
                secrets.push(start..end);
            }
            at = end;
        }
        secrets
    }
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
        // A key-value string, refused as a setting, is quoted masked.
        assert_eq!(
            DatabaseUrl::masked("host=db user=app password=hunter2 dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        assert_eq!(
            DatabaseUrl::masked("host=db password='hunter 2' dbname=x"),
            "host=db password=*** dbname=x"
        );
    }

    #[test]
    fn a_url_of_another_kind_is_refused() {
        let e = DatabaseUrl::parse("mysql://root:hunter2@db/x").expect_err("not postgres");
        assert!(e.contains("postgres://"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
