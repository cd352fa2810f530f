//! Can a runner fetch `HEAD`? If not, the commits the remote lacks, as a git bundle.
//!
//! "On the remote" means reachable from a remote-tracking ref
//! (`refs/remotes/<remote>/*`, or every remote's when none is named), as the
//! laptop last saw it; nothing is fetched. The missing commits are
//! `HEAD --not <those refs>`, and their boundary (the commits they build on)
//! must be on the remote; when there is no boundary, not even the base is
//! there ([`Base::NeverPushed`]) and no bundle could help a runner that
//! clones the remote. The git CLI does this part: `git bundle create` is the
//! one implementation of the bundle format.

use std::path::{Path, PathBuf};
use std::process::Command;

use embark_core::manifest::{Base, BundleInfo, CommitId, ContentHash};

use crate::config::GitConfig;
use crate::error::ManifestError;

/// Where the bundle of the current scan is kept; one at a time.
pub fn bundle_dir(git_dir: &Path) -> PathBuf {
    git_dir.join("embark").join("bundles")
}

/// The base state of `commit` relative to `remote`, and the bundle file when commits are missing.
pub fn base_state(
    workdir: &Path,
    git_dir: &Path,
    commit: Option<&CommitId>,
    remote: Option<&str>,
    git_config: GitConfig,
) -> Result<(Base, Option<PathBuf>), ManifestError> {
    let Some(commit) = commit else {
        return Ok((Base::Unborn, None));
    };
    let git = Git { workdir, git_config };
    let refs_prefix = match remote {
        Some(remote) => format!("refs/remotes/{remote}/"),
        None => "refs/remotes/".to_owned(),
    };
    let not_remotes = match remote {
        Some(remote) => format!("--remotes={remote}"),
        None => "--remotes".to_owned(),
    };
    let never_pushed = Base::NeverPushed {
        remote: remote.map(str::to_owned),
    };
    if git
        .run(&["for-each-ref", "--count=1", "--format=%(refname)", &refs_prefix])?
        .trim()
        .is_empty()
    {
        return Ok((never_pushed, None));
    }

    let listing = git.run(&["rev-list", "--boundary", commit.as_str(), "--not", &not_remotes])?;
    let (mut missing, mut prerequisites) = (0u64, Vec::new());
    for line in listing.lines() {
        match line.strip_prefix('-') {
            Some(boundary) => prerequisites.extend(CommitId::parse(boundary.trim())),
            None if !line.trim().is_empty() => missing += 1,
            None => {}
        }
    }
    if missing == 0 {
        let remote_ref = git.run(&[
            "for-each-ref",
            "--count=1",
            "--contains",
            commit.as_str(),
            "--format=%(refname:short)",
            &refs_prefix,
        ])?;
        return Ok((
            Base::Pushed {
                remote_ref: remote_ref.trim().to_owned(),
            },
            None,
        ));
    }
    if prerequisites.is_empty() {
        return Ok((never_pushed, None));
    }
    prerequisites.sort();

    let dir = bundle_dir(git_dir);
    std::fs::create_dir_all(&dir).map_err(ManifestError::io(&dir))?;
    let file = dir.join(format!("{commit}.bundle"));
    // The same commit over the same boundary carries the same commits: reuse it.
    let name_of = |p: &CommitId| p.as_str().to_owned();
    let stamp = dir.join(format!("{commit}.prerequisites"));
    let wanted_stamp = prerequisites.iter().map(name_of).collect::<Vec<_>>().join("\n");
    let reusable = file.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted_stamp);
    if !reusable {
        clear_dir(&dir);
        let tmp = dir.join(format!("{commit}.bundle.tmp"));
        let tmp_arg = tmp.to_str().ok_or_else(|| ManifestError::GitCli {
            args: "bundle create".into(),
            detail: format!("the git dir path {} is not UTF-8", dir.display()),
        })?;
        // A bundle carries refs, so it is made of `HEAD` (a bare commit id makes an empty one)…
        git.run(&["bundle", "create", "--quiet", tmp_arg, "HEAD", "--not", &not_remotes])?;
        // …and must carry the commit this scan saw.
        let heads = git.run(&["bundle", "list-heads", tmp_arg])?;
        if !heads.lines().any(|line| line.starts_with(commit.as_str())) {
            let _ = std::fs::remove_file(&tmp);
            return Err(ManifestError::GitCli {
                args: "bundle create".into(),
                detail: format!("HEAD moved away from {} during the scan; scan again", commit.short()),
            });
        }
        std::fs::rename(&tmp, &file).map_err(ManifestError::io(&file))?;
        std::fs::write(&stamp, &wanted_stamp).map_err(ManifestError::io(&stamp))?;
    }
    let bytes = std::fs::read(&file).map_err(ManifestError::io(&file))?;
    let bundle = BundleInfo {
        hash: ContentHash::of(&bytes),
        size: bytes.len() as u64,
        commits: missing,
        prerequisites,
    };
    Ok((Base::Unpushed { bundle }, Some(file)))
}

fn clear_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

struct Git<'a> {
    workdir: &'a Path,
    git_config: GitConfig,
}

impl Git<'_> {
    fn run(&self, args: &[&str]) -> Result<String, ManifestError> {
        let mut command = Command::new("git");
        command
            .arg("-C")
            .arg(self.workdir)
            .args(args)
            // Read-only: no index refresh, no prompts.
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env("GIT_TERMINAL_PROMPT", "0");
        if self.git_config == GitConfig::Isolated {
            command
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null");
        }
        let output = command.output().map_err(|e| ManifestError::GitCli {
            args: args.join(" "),
            detail: e.to_string(),
        })?;
        if !output.status.success() {
            return Err(ManifestError::GitCli {
                args: args.join(" "),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        String::from_utf8(output.stdout).map_err(|_| ManifestError::GitCli {
            args: args.join(" "),
            detail: "its output was not UTF-8".into(),
        })
    }
}
