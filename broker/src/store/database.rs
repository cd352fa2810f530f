//! Which database holds the broker's state, as `--db` names it: a path or
//! `sqlite:PATH` (SQLite, one broker), or a `postgres://` or
//! `postgresql://` URL (PostgreSQL, for several replicas on one database).
//!
//! A URL may carry a password, so it is never shown whole: [`Display`],
//! [`Debug`] and `--print-config` hide the password, and the configuration
//! refuses one given as a flag, which any local user could read in the
//! process list.
//!
//! [`Display`]: std::fmt::Display

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use embark_core::config::Setting;
use sqlx::postgres::PgConnectOptions;

/// What `--db` accepts, for configuration errors.
pub const ALLOWED: &str = "a file path, sqlite:PATH, or a postgres:// (or postgresql://) URL such as \
     postgres://embark@127.0.0.1:5432/embark; put a password in EMBARK_BROKER_DB, the config file, \
     PGPASSWORD or ~/.pgpass, never in --db";

/// Shown instead of a password.
const HIDDEN: &str = "***";

#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (created with its directory when missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database; the URL as given, checked by [`Database::is_well_formed`].
    Postgres(String),
}

impl Database {
    /// Reads `--db`'s forms. A PostgreSQL URL is only recognized here; whether
    /// it parses is [`Database::is_well_formed`], so a malformed one is reported
    /// with its password hidden.
    pub fn parse(text: &str) -> Option<Database> {
        if let Some(scheme) = scheme(text) {
            return match scheme.to_ascii_lowercase().as_str() {
                "postgres" | "postgresql" => Some(Database::Postgres(text.to_owned())),
                // sqlx's form: sqlite://relative.db, sqlite:///absolute.db.
                "sqlite" => sqlite_path(&text["sqlite://".len()..]),
                _ => None,
            };
        }
        match text.strip_prefix("sqlite:") {
            Some(path) => sqlite_path(path),
            None => sqlite_path(text),
        }
    }

    /// False for a PostgreSQL URL its driver cannot read (a bad port, an
    /// unknown `sslmode`, …).
    pub fn is_well_formed(&self) -> bool {
        match self {
            Database::Sqlite(_) => true,
            Database::Postgres(url) => PgConnectOptions::from_str(url).is_ok(),
        }
    }

    /// True when the value carries a password (in the user info or as a
    /// `password` parameter).
    pub fn has_password(&self) -> bool {
        match self {
            Database::Sqlite(_) => false,
            Database::Postgres(url) => redact(url) != *url,
        }
    }
}

/// `scheme` when `text` starts with `scheme://`.
fn scheme(text: &str) -> Option<&str> {
    let (scheme, rest) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (well_formed && !rest.is_empty()).then_some(scheme)
}

fn sqlite_path(path: &str) -> Option<Database> {
    (!path.trim().is_empty()).then(|| Database::Sqlite(PathBuf::from(path)))
}

/// The URL with its password, if any, replaced by `***`. Works on text that
/// does not parse as a URL too, so even a malformed value is shown safely.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user info ends at the last `@` before the query: a password may
    // hold `@` or `/` (percent-encoded or not), a host never does.
    let path_start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let query_start = rest.find(['?', '#']).unwrap_or(rest.len());
    let authority_end = rest[..query_start]
        .rfind('@')
        .map_or(path_start, |at| path_start.max(at + 1));
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{HIDDEN}@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}={HIDDEN}"),
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The path, or the URL with its password hidden.
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Database::Postgres(url) => f.debug_tuple("Postgres").field(&redact(url)).finish(),
        }
    }
}

impl Setting for Database {
    fn from_text(text: &str) -> Option<Self> {
        Database::parse(text.trim())
    }

    /// Shown with the password hidden (`--print-config`, errors).
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.to_string()))
    }

    /// A relative SQLite path in the file is taken from the file's directory.
    fn anchor(self, dir: &Path) -> Self {
        match self {
            Database::Sqlite(path) if path.is_relative() => Database::Sqlite(dir.join(path)),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(path: &str) -> Option<Database> {
        Some(Database::Sqlite(PathBuf::from(path)))
    }

    #[test]
    fn paths_and_sqlite_urls_name_a_file() {
        assert_eq!(
            Database::parse("/var/lib/embark/broker.db"),
            sqlite("/var/lib/embark/broker.db")
        );
        assert_eq!(Database::parse("data/broker.db"), sqlite("data/broker.db"));
        assert_eq!(Database::parse("./odd:name.db"), sqlite("./odd:name.db"));
        assert_eq!(Database::parse("sqlite:data/broker.db"), sqlite("data/broker.db"));
        assert_eq!(Database::parse("sqlite:/abs/broker.db"), sqlite("/abs/broker.db"));
        assert_eq!(Database::parse("sqlite://rel.db"), sqlite("rel.db"));
        assert_eq!(Database::parse("sqlite:///abs/broker.db"), sqlite("/abs/broker.db"));
        assert_eq!(Database::parse("sqlite:"), None);
        assert_eq!(Database::parse("sqlite:  "), None);
    }

    #[test]
    fn postgres_urls_name_a_server_and_other_schemes_are_refused() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgresql://embark@db/embark?sslmode=require",
            "POSTGRES://u@h/d",
        ] {
            let db = Database::parse(url).expect(url);
            assert_eq!(db, Database::Postgres(url.into()));
            assert!(db.is_well_formed(), "{url}");
        }
        for refused in ["mysql://u@h/d", "http://h/", "redis://h"] {
            assert_eq!(Database::parse(refused), None, "{refused}");
        }
        let bad_port = Database::parse("postgres://u:pw@h:notaport/d").expect("recognized");
        assert!(!bad_port.is_well_formed());
        assert!(
            !Database::parse("postgres://u@h/d?sslmode=sometimes")
                .expect("recognized")
                .is_well_formed()
        );
    }

    #[test]
    fn passwords_are_never_shown() {
        let cases = [
            ("postgres://u:hunter2@h:5432/d", "postgres://u:***@h:5432/d"),
            ("postgres://u:hun@ter2@h/d", "postgres://u:***@h/d"),
            ("postgres://u:pw@h:notaport/d", "postgres://u:***@h:notaport/d"),
            (
                "postgres://u@h/d?sslmode=require&password=hunter2",
                "postgres://u@h/d?sslmode=require&password=***",
            ),
            ("postgres://u:a/b@h/d", "postgres://u:***@h/d"),
            (
                "postgres://u@h:5432/d?application_name=a@b",
                "postgres://u@h:5432/d?application_name=a@b",
            ),
            ("postgres://u@h/d", "postgres://u@h/d"),
            ("postgres://h", "postgres://h"),
        ];
        for (url, shown) in cases {
            let db = Database::Postgres(url.into());
            assert_eq!(db.to_string(), shown);
            assert!(!format!("{db:?}").contains("hunter2"), "{db:?}");
            assert_eq!(db.has_password(), url != shown, "{url}");
            assert_eq!(db.to_toml(), Some(toml::Value::String(shown.into())));
        }
        assert!(!Database::Sqlite("a:b@c".into()).has_password());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = Path::new("/etc/embark");
        assert_eq!(
            Database::parse("b.db").expect("path").anchor(dir),
            Database::Sqlite(dir.join("b.db"))
        );
        assert_eq!(
            Database::parse("/b.db").expect("path").anchor(dir),
            Database::Sqlite("/b.db".into())
        );
        let url = Database::parse("postgres://u@h/d").expect("url");
        assert_eq!(url.clone().anchor(dir), url);
    }
}
