//! embark's excludes on top of git's own ignore rules.
//!
//! Three layers in gitignore syntax, later ones winning as in one gitignore
//! file: the built-in [`DEFAULT_EXCLUDES`](crate::config::DEFAULT_EXCLUDES),
//! the configured extra excludes, then the repository's `.embarkignore` (so
//! `!dist/` there re-includes a default). Matching is `ignore`'s
//! `GitignoreBuilder`, rooted at the working tree.
//!
//! Excludes apply to **untracked** paths only. A tracked path is part of the
//! commit the runner checks out; dropping its edits would hand the runner a
//! mix of `HEAD` and the laptop that is neither. Tracked files are bounded by
//! the bounds instead, which say so.

use std::path::{Path, PathBuf};

use embark_core::manifest::{ContentHash, ExcludeRule, RuleSource, SyncRules};
use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::config::{DEFAULT_EXCLUDES, SyncConfig};
use crate::error::ManifestError;

/// The file, at the working tree's root, that holds a repository's own excludes.
pub const EMBARKIGNORE: &str = ".embarkignore";

// Sources tag each glob so a match can say which layer it came from.
const DEFAULT_SOURCE: &str = "<embark default excludes>";
const CONFIG_SOURCE: &str = "<EMBARK_SYNC_EXCLUDES>";

pub struct Excludes {
    matcher: Gitignore,
    rules: SyncRules,
}

impl Excludes {
    pub fn load(workdir: &Path, config: &SyncConfig) -> Result<Self, ManifestError> {
        let mut builder = GitignoreBuilder::new(workdir);
        let mut rules = SyncRules::default();
        if config.default_excludes {
            for pattern in DEFAULT_EXCLUDES {
                builder
                    .add_line(Some(PathBuf::from(DEFAULT_SOURCE)), pattern)
                    .expect("the built-in excludes are valid patterns");
                rules.default_excludes.push((*pattern).to_owned());
            }
        }
        for pattern in &config.extra_excludes {
            builder
                .add_line(Some(PathBuf::from(CONFIG_SOURCE)), pattern)
                .map_err(|e| ManifestError::ExcludePattern {
                    pattern: pattern.clone(),
                    detail: e.to_string(),
                })?;
            rules.extra_excludes.push(pattern.clone());
        }
        let embarkignore = workdir.join(EMBARKIGNORE);
        match std::fs::read(&embarkignore) {
            Ok(bytes) => {
                rules.embarkignore = Some(ContentHash::of(&bytes));
                let text = String::from_utf8_lossy(&bytes);
                for (i, line) in text.lines().enumerate() {
                    builder
                        .add_line(Some(embarkignore.clone()), line)
                        .map_err(|e| ManifestError::Embarkignore {
                            path: embarkignore.clone(),
                            line: i + 1,
                            detail: e.to_string(),
                        })?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ManifestError::io(&embarkignore)(e)),
        }
        let matcher = builder.build().map_err(|e| ManifestError::ExcludePattern {
            pattern: "(all excludes)".into(),
            detail: e.to_string(),
        })?;
        Ok(Self { matcher, rules })
    }

    /// The rules to record in the manifest (they are fingerprinted).
    pub fn rules(&self) -> &SyncRules {
        &self.rules
    }

    /// The rule excluding `path` (repository-relative) or one of its parents, if any.
    pub fn rule_for(&self, path: &Path, is_dir: bool) -> Option<ExcludeRule> {
        match self.matcher.matched_path_or_any_parents(path, is_dir) {
            Match::Ignore(glob) => {
                let source = match glob.from().and_then(Path::to_str) {
                    Some(DEFAULT_SOURCE) => RuleSource::Default,
                    Some(CONFIG_SOURCE) => RuleSource::Config,
                    _ => RuleSource::Embarkignore,
                };
                Some(ExcludeRule {
                    source,
                    pattern: glob.original().to_owned(),
                })
            }
            Match::None | Match::Whitelist(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_match_in_order_and_say_which_rule() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(EMBARKIGNORE), "*.log\n!dist/\n").expect("write .embarkignore");
        let config = SyncConfig {
            extra_excludes: vec!["tmp/".into()],
            ..SyncConfig::default()
        };
        let excludes = Excludes::load(dir.path(), &config).expect("load");

        let rule = excludes
            .rule_for(Path::new("web/node_modules/react/index.js"), false)
            .expect("excluded");
        assert_eq!(
            rule,
            ExcludeRule {
                source: RuleSource::Default,
                pattern: "node_modules/".into()
            }
        );
        let rule = excludes.rule_for(Path::new("tmp"), true).expect("excluded");
        assert_eq!(rule.source, RuleSource::Config);
        let rule = excludes.rule_for(Path::new("a/b.log"), false).expect("excluded");
        assert_eq!(
            rule,
            ExcludeRule {
                source: RuleSource::Embarkignore,
                pattern: "*.log".into()
            }
        );
        assert_eq!(
            excludes.rule_for(Path::new("dist"), true),
            None,
            ".embarkignore re-includes dist/"
        );
        assert_eq!(excludes.rule_for(Path::new("src/main.rs"), false), None);
        // A directory pattern does not match a file of that name.
        assert_eq!(excludes.rule_for(Path::new("target"), false), None);
        assert!(excludes.rules().embarkignore.is_some());
    }

    #[test]
    fn turning_defaults_off_leaves_them_out_of_the_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SyncConfig {
            default_excludes: false,
            ..SyncConfig::default()
        };
        let excludes = Excludes::load(dir.path(), &config).expect("load");
        assert_eq!(excludes.rule_for(Path::new("node_modules"), true), None);
        assert_eq!(excludes.rules(), &SyncRules::default());
    }
}
