//! Repository URLs as data from the network: they end up in the broker's
//! database, events, logs and the conversation, so they must never carry a
//! credential; and they end up as an argument of `git clone`.

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
