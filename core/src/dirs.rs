//! Default locations, per the XDG base directory rules: an `XDG_*` variable
//! counts only when it holds an absolute path; otherwise the `$HOME` fallback.
//!
//! The environment is passed in as a lookup so configuration tests need not
//! touch the process environment.

use std::path::PathBuf;

/// Looks a variable up in the process environment; empty counts as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// `$XDG_CONFIG_HOME`, else `$HOME/.config`.
pub fn config_home(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    base_dir(env, "XDG_CONFIG_HOME", ".config")
}

/// `$XDG_DATA_HOME`, else `$HOME/.local/share`.
pub fn data_home(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    base_dir(env, "XDG_DATA_HOME", ".local/share")
}

/// `$XDG_STATE_HOME`, else `$HOME/.local/state`.
pub fn state_home(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    base_dir(env, "XDG_STATE_HOME", ".local/state")
}

fn base_dir(env: &dyn Fn(&str) -> Option<String>, var: &str, fallback: &str) -> Option<PathBuf> {
    let absolute = |name: &str| env(name).map(PathBuf::from).filter(|path| path.is_absolute());
    absolute(var).or_else(|| absolute("HOME").map(|home| home.join(fallback)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn xdg_wins_when_absolute() {
        let env = env_of(&[
            ("XDG_CONFIG_HOME", "/cfg"),
            ("XDG_DATA_HOME", "/data"),
            ("HOME", "/home/u"),
        ]);
        assert_eq!(config_home(&env), Some(PathBuf::from("/cfg")));
        assert_eq!(data_home(&env), Some(PathBuf::from("/data")));
    }

    #[test]
    fn relative_xdg_falls_back_to_home() {
        let env = env_of(&[("XDG_CONFIG_HOME", "cfg"), ("HOME", "/home/u")]);
        assert_eq!(config_home(&env), Some(PathBuf::from("/home/u/.config")));
        assert_eq!(data_home(&env), Some(PathBuf::from("/home/u/.local/share")));
        assert_eq!(state_home(&env), Some(PathBuf::from("/home/u/.local/state")));
    }

    #[test]
    fn nothing_usable_means_none() {
        let env = env_of(&[("HOME", "relative")]);
        assert_eq!(config_home(&env), None);
    }
}
