//! Repository URLs as data from the network: they end up in the broker's
//! database, events, logs and the conversation, so they must never carry a
//! credential; and they end up as an argument of `git clone`, so they must
//! name a transport a runner may use ([`transport`]): git's transport
//! helpers (`ext::<command>` runs a command, `fd::` reads a descriptor) and
//! unknown schemes never reach git.

use std::fmt;
use std::str::FromStr;

/// How a runner would fetch a repository URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// `https://…`
    Https,
    /// `http://…` (unencrypted; off unless the broker's operator allows it).
    Http,
    /// `ssh://…` (also `git+ssh://`, `ssh+git://`) and scp-like `[user@]host:path`.
    Ssh,
    /// `git://…`
    Git,
    /// A path on the runner's machine, or `file://…` (off unless the broker's operator allows it).
    Local,
}

impl Transport {
    pub const ALL: [Transport; 5] = [
        Transport::Https,
        Transport::Http,
        Transport::Ssh,
        Transport::Git,
        Transport::Local,
    ];

    /// Its name in the broker's `repo_transports` setting.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Https => "https",
            Transport::Http => "http",
            Transport::Ssh => "ssh",
            Transport::Git => "git",
            Transport::Local => "local",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Transport {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Transport::ALL.into_iter().find(|t| t.name() == s).ok_or(())
    }
}

/// Why a URL names no transport a runner may use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// `<helper>::<address>`: git would run or read through a transport helper.
    #[error(
        "it uses git's transport helper syntax `{0}::`, which runners never follow: use an https://, ssh:// or git:// URL"
    )]
    Helper(String),
    #[error("its scheme `{0}://` is not one runners fetch from: use https://, ssh:// or git://")]
    Scheme(String),
}

/// The transport `url` names: git's own reading of a remote URL, `scheme://`
/// first, then `<helper>::`, then scp-like `host:path` (a colon before any
/// slash), else a local path.
pub fn transport(url: &str) -> Result<Transport, TransportError> {
    if let Some((scheme, _)) = url.split_once("://")
        && is_scheme(scheme)
    {
        return match scheme.to_ascii_lowercase().as_str() {
            "https" => Ok(Transport::Https),
            "http" => Ok(Transport::Http),
            "ssh" | "git+ssh" | "ssh+git" => Ok(Transport::Ssh),
            "git" => Ok(Transport::Git),
            "file" => Ok(Transport::Local),
            _ => Err(TransportError::Scheme(crate::text::quote(scheme))),
        };
    }
    if let Some((helper, _)) = url.split_once("::")
        && is_scheme(helper)
    {
        return Err(TransportError::Helper(crate::text::quote(helper)));
    }
    match url.split_once(':') {
        Some((host, _)) if !host.is_empty() && !host.contains('/') => Ok(Transport::Ssh),
        _ => Ok(Transport::Local),
    }
}

/// An RFC 3986 scheme: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The user-info part (`user[:password]@`) of a `scheme://` URL, if any.
fn userinfo_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let authority_end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    let at = url[start..authority_end].rfind('@')? + start;
    Some((start, at + 1))
}

/// True when the URL carries something that works as a credential: any
/// user-info in an `http(s)://` URL (`https://TOKEN@host/…` authenticates),
/// or a password in any other `scheme://` URL. `ssh://git@host/…` and
/// scp-like `git@host:…` name a user only and are fine.
pub fn has_credentials(url: &str) -> bool {
    let Some((start, end)) = userinfo_span(url) else {
        return false;
    };
    let scheme = url[..start - 3].to_ascii_lowercase();
    scheme == "http" || scheme == "https" || url[start..end].contains(':')
}

/// The URL without its credential (see [`has_credentials`]); unchanged when it has none.
pub fn without_credentials(url: &str) -> String {
    match userinfo_span(url) {
        Some((start, end)) if has_credentials(url) => format!("{}{}", &url[..start], &url[end..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_http_urls_are_credentials() {
        assert!(has_credentials("https://user:tok@github.com/o/r.git"));
        assert!(has_credentials("https://ghp_token@github.com/o/r.git"));
        assert!(has_credentials("HTTP://u@host/r"));
        assert_eq!(
            without_credentials("https://user:tok@github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(without_credentials("https://t@h/a@b"), "https://h/a@b");
    }

    #[test]
    fn transports_are_read_as_git_reads_them() {
        for (url, expected) in [
            ("https://github.com/o/r.git", Transport::Https),
            ("HTTPS://github.com/o/r.git", Transport::Https),
            ("http://127.0.0.1:8080/r.git", Transport::Http),
            ("ssh://git@github.com/o/r.git", Transport::Ssh),
            ("git+ssh://host/r.git", Transport::Ssh),
            ("git@github.com:o/r.git", Transport::Ssh),
            ("host:r.git", Transport::Ssh),
            ("git://host/r.git", Transport::Git),
            ("file:///srv/git/r.git", Transport::Local),
            ("/srv/git/r.git", Transport::Local),
            ("./r.git", Transport::Local),
            ("srv/a:b", Transport::Local),
        ] {
            assert_eq!(transport(url), Ok(expected), "{url}");
        }
        for url in ["ext::sh -c touch% /tmp/x", "fd::17", "Ext::x", "remote-x::y"] {
            assert!(matches!(transport(url), Err(TransportError::Helper(_))), "{url}");
        }
        for url in ["ftp://host/r.git", "ext://x", "javascript://x"] {
            assert!(matches!(transport(url), Err(TransportError::Scheme(_))), "{url}");
        }
        for t in Transport::ALL {
            assert_eq!(t.name().parse::<Transport>(), Ok(t));
        }
    }

    #[test]
    fn ssh_users_and_paths_are_not_credentials() {
        for url in [
            "ssh://git@github.com/o/r.git",
            "git@github.com:o/r.git",
            "/srv/git/r.git",
            "file:///srv/git/r.git",
            "https://github.com/o/r@v1.git",
        ] {
            assert!(!has_credentials(url), "{url}");
            assert_eq!(without_credentials(url), url);
        }
        assert!(has_credentials("ssh://git:pw@host/r.git"));
        assert_eq!(without_credentials("ssh://git:pw@host/r.git"), "ssh://host/r.git");
    }
}
