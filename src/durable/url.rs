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
    /// refused value.
    pub fn masked(text: &str) -> String {
        DatabaseUrl(text.to_owned()).to_string()
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces this URL's password, wherever it appears in `text`, by
    /// `***` (a driver's error message may quote it).
    pub fn mask_in(&self, text: &str) -> String {
        match self.password() {
            Some(range) if !range.is_empty() => text.replace(&self.0[range], "***"),
            _ => text.to_owned(),
        }
    }

    /// The password's byte range in the URL, if it has one.
    fn password(&self) -> Option<std::ops::Range<usize>> {
        let after_scheme = self.0.find("://")? + 3;
        let authority_end = self.0[after_scheme..]
            .find(['/', '?'])
            .map_or(self.0.len(), |i| after_scheme + i);
        let at = self.0[after_scheme..authority_end].rfind('@')? + after_scheme;
        let colon = self.0[after_scheme..at].find(':')? + after_scheme;
        Some(colon + 1..at)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = &self.0;
        match self.password() {
            Some(range) => {
                write!(f, "{}***{}", &text[..range.start], &text[range.end..])
            }
            None => f.write_str(text),
        }
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
    fn a_url_of_another_kind_is_refused() {
        let e = DatabaseUrl::parse("mysql://root:hunter2@db/x").expect_err("not postgres");
        assert!(e.contains("postgres://"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
