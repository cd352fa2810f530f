use std::collections::HashMap;
use std::path::PathBuf;

use super::*;
use crate::secret::Secret;

static FILE: Knob<PathBuf> = Knob::new("config", "the config file", "a path to a TOML file")
    .flag("--config")
    .env("EMBARK_T_CONFIG");
static URL: Knob<String> = Knob::new("url", "the URL", "an http:// URL")
    .flag("--url")
    .env("EMBARK_T_URL");
static COUNT: Knob<u64> = Knob::new("count", "the count", "a whole number from 1 to 9")
    .flag("--count")
    .env("EMBARK_T_COUNT");
static ON: Knob<bool> = Knob::new("on", "the switch", "true or false").env("EMBARK_T_ON");
static DIR: Knob<PathBuf> = Knob::new("dir", "the directory", "a path")
    .flag("--dir")
    .env("EMBARK_T_DIR");
static TOKEN: Knob<Secret> = Knob::new("token", "the token", "a secret of at least 8 bytes").env("EMBARK_T_TOKEN");

static DECLARATION: Declaration = Declaration {
    binary: "embark-test",
    file: &FILE,
    default_file: Some("embark/test.toml"),
    knobs: &[&URL.spec, &COUNT.spec, &ON.spec, &DIR.spec, &TOKEN.spec],
};

const SECRET: &str = "hunter2-hunter2-hunter2";

/// A temp home (so the default file is `<home>/.config/embark/test.toml`,
/// missing until written) and an injected environment.
struct Setup {
    home: tempfile::TempDir,
    vars: HashMap<String, String>,
}

impl Setup {
    fn new() -> Setup {
        let home = tempfile::tempdir().expect("temp dir");
        let mut vars = HashMap::new();
        vars.insert("HOME".to_owned(), home.path().display().to_string());
        Setup { home, vars }
    }

    fn set(mut self, var: &str, value: &str) -> Setup {
        self.vars.insert(var.to_owned(), value.to_owned());
        self
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.home.path().join(name);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        path
    }

    fn default_file(&self, text: &str) -> PathBuf {
        self.write(".config/embark/test.toml", text)
    }

    fn env(&self) -> impl Fn(&str) -> Option<String> + use<> {
        let vars = self.vars.clone();
        move |name| vars.get(name).cloned()
    }
}

fn flags(pairs: &[(&'static Knob<String>, &str)]) -> Flags {
    pairs
        .iter()
        .fold(Flags::default(), |flags, (knob, value)| flags.with(*knob, Some(*value)))
}

fn url(setup: &Setup, flags: Flags) -> Option<Resolved<String>> {
    let env = setup.env();
    let mut resolver = Resolver::load(&DECLARATION, flags, &env).expect("loads");
    resolver.optional(&URL).expect("resolves")
}

#[test]
fn each_level_beats_the_ones_below_it() {
    // Every combination of the four levels being set: the highest one wins.
    for mask in 0..16u8 {
        let (flag, env, file, default) = (mask & 8 != 0, mask & 4 != 0, mask & 2 != 0, mask & 1 != 0);
        let mut setup = Setup::new();
        if env {
            setup = setup.set("EMBARK_T_URL", "http://env");
        }
        let path = setup.default_file(if file { "url = \"http://file\"\n" } else { "" });
        let flags = if flag {
            flags(&[(&URL, "http://flag")])
        } else {
            Flags::default()
        };
        let vars = setup.env();
        let mut resolver = Resolver::load(&DECLARATION, flags, &vars).expect("loads");
        let resolved = resolver
            .or_else(&URL, || default.then(|| "http://default".to_owned()))
            .expect("resolves");
        let expected = if flag {
            Some(("http://flag", Source::Flag("--url")))
        } else if env {
            Some(("http://env", Source::Env("EMBARK_T_URL")))
        } else if file {
            Some(("http://file", Source::File { path, line: 1 }))
        } else if default {
            Some(("http://default", Source::Default))
        } else {
            None
        };
        let got = resolved.map(|r| (r.value, r.source));
        assert_eq!(
            got.as_ref().map(|(v, s)| (v.as_str(), s.clone())),
            expected,
            "flag {flag}, env {env}, file {file}, default {default}"
        );
    }
}

#[test]
fn empty_or_blank_values_are_unset_at_every_level() {
    for blank in ["", " ", "\t \n"] {
        // A blank flag falls through to the env, a blank env to the file...
        let setup = Setup::new().set("EMBARK_T_URL", blank);
        setup.default_file("url = \"http://file\"\n");
        let resolved = url(&setup, flags(&[(&URL, blank)])).expect("the file's");
        assert_eq!(resolved.value, "http://file", "{blank:?}");
        // ...and a blank file string to the default.
        let setup = Setup::new();
        setup.default_file(&format!("url = {}\n", toml::Value::String(blank.to_owned())));
        let env = setup.env();
        let mut resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
        let resolved = resolver
            .or_default(&URL, "http://default".to_owned())
            .expect("resolves");
        assert_eq!(resolved.source, Source::Default, "{blank:?}");
        // A blank config file name is no name: the default file is read.
        let setup = Setup::new().set("EMBARK_T_CONFIG", blank);
        setup.default_file("url = \"http://default-file\"\n");
        let flags = Flags::default().with(&FILE, Some(blank));
        assert_eq!(url(&setup, flags).expect("set").value, "http://default-file");
    }
    // Blank numbers in the environment and the file are unset too, not type errors.
    let setup = Setup::new().set("EMBARK_T_COUNT", "  ");
    setup.default_file("count = \"\"\n");
    let env = setup.env();
    let mut resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
    assert_eq!(resolver.or_default(&COUNT, 3).expect("resolves").value, 3);
}

#[test]
fn a_missing_named_file_is_an_error_and_a_missing_default_file_is_not() {
    let setup = Setup::new();
    assert!(url(&setup, Flags::default()).is_none(), "no default file: fine");
    let absent = setup.home.path().join("absent.toml");
    let absent_text = absent.to_str().expect("utf-8");

    let env = setup.env();
    let err = Resolver::load(&DECLARATION, Flags::default().with(&FILE, Some(absent_text)), &env)
        .expect_err("named by the flag");
    assert!(
        matches!(
            &err,
            ConfigError::NamedFileMissing {
                origin: Source::Flag("--config"),
                ..
            }
        ),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(shown.contains(absent_text) && shown.contains("--config"), "{shown}");

    let setup = setup.set("EMBARK_T_CONFIG", absent_text);
    let env = setup.env();
    let err = Resolver::load(&DECLARATION, Flags::default(), &env).expect_err("named by the env");
    assert!(
        matches!(
            err,
            ConfigError::NamedFileMissing {
                origin: Source::Env("EMBARK_T_CONFIG"),
                ..
            }
        ),
        "{err:?}"
    );

    // A named file replaces the default one; an empty named file rules it out.
    let setup = Setup::new();
    setup.default_file("url = \"http://default-file\"\n");
    let empty = setup.write("empty.toml", "");
    let flags = Flags::default().with(&FILE, Some(empty.to_str().expect("utf-8")));
    assert!(url(&setup, flags).is_none());

    // Anything but "not found" is an error even for the default file.
    let setup = Setup::new();
    std::fs::create_dir_all(setup.home.path().join(".config/embark/test.toml")).expect("a directory");
    let env = setup.env();
    let err = Resolver::load(&DECLARATION, Flags::default(), &env).expect_err("a directory");
    assert!(matches!(err, ConfigError::ReadFile { .. }), "{err:?}");
    let cause = std::fs::read_to_string(setup.home.path().join(".config/embark/test.toml"))
        .expect_err("a directory")
        .to_string();
    let chain = crate::text::error_chain(&err);
    assert_eq!(chain.matches(&cause).count(), 1, "the cause once: {chain}");
}

#[test]
fn unknown_keys_are_refused_naming_the_key_and_the_known_ones() {
    let setup = Setup::new();
    let path = setup.default_file("url = \"http://x\"\n\ncoutn = 3\nzzz = 1\n");
    let env = setup.env();
    let err = Resolver::load(&DECLARATION, Flags::default(), &env).expect_err("a typo");
    let shown = err.to_string();
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, line: 3, .. } if key == "coutn"),
        "{err:?}"
    );
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert!(shown.contains("`url`, `count`, `on`, `dir`, `token`"), "{shown}");
    // The file knob is not a key: a file cannot name another.
    setup.default_file("config = \"/etc/other.toml\"\n");
    let err = Resolver::load(&DECLARATION, Flags::default(), &env).expect_err("not a key");
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, .. } if key == "config"),
        "{err:?}"
    );
}

#[test]
fn type_errors_name_the_key_the_source_and_what_is_allowed() {
    let setup = Setup::new().set("EMBARK_T_COUNT", "many");
    let env = setup.env();
    let mut resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
    let err = resolver.optional(&COUNT).expect_err("not a number");
    assert_eq!(
        err.to_string(),
        "count = \"many\" (from env EMBARK_T_COUNT) is not allowed: use a whole number from 1 to 9"
    );

    let flags = Flags::default().with(&COUNT, Some("-1"));
    let mut resolver = Resolver::load(&DECLARATION, flags, &env).expect("loads");
    let err = resolver.optional(&COUNT).expect_err("negative");
    assert!(
        err.to_string().starts_with("count = \"-1\" (from flag --count)"),
        "{err}"
    );

    let setup = Setup::new();
    let path = setup.default_file("on = \"maybe\"\ncount = 12\n");
    let env = setup.env();
    let mut resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
    let err = resolver.optional(&ON).expect_err("a string, not a bool");
    assert_eq!(
        err.to_string(),
        format!(
            "on = \"maybe\" (from file {}, line 1) is not allowed: use true or false",
            path.display()
        )
    );
    // A binary's own check reports the same way.
    let err = resolver
        .or_default(&COUNT, 1)
        .expect("a number")
        .ensure(|n| (1..=9).contains(n))
        .expect_err("out of range");
    assert!(err.to_string().starts_with("count = 12 (from file"), "{err}");
    assert!(
        err.to_string()
            .ends_with("line 2) is not allowed: use a whole number from 1 to 9"),
        "{err}"
    );

    // Long values are quoted only in part.
    let setup = Setup::new().set("EMBARK_T_COUNT", &"9".repeat(500));
    let env = setup.env();
    let mut resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
    let err = resolver.optional(&COUNT).expect_err("too big");
    assert!(err.to_string().len() < 250, "{err}");

    // Text booleans take clap's words.
    for (text, value) in [("yes", true), ("Off", false), ("1", true), ("f", false)] {
        let setup = Setup::new().set("EMBARK_T_ON", text);
        let env = setup.env();
        let mut resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
        assert_eq!(resolver.optional(&ON).expect("a bool").map(|r| r.value), Some(value));
    }
}

#[test]
fn relative_paths_from_the_file_are_taken_from_its_directory() {
    let setup = Setup::new();
    let path = setup.write("etc/embark.toml", "dir = \"data/spaces\"\n");
    let flags = Flags::default().with(&FILE, Some(path.to_str().expect("utf-8")));
    let env = setup.env();
    let mut resolver = Resolver::load(&DECLARATION, flags, &env).expect("loads");
    let dir = resolver.optional(&DIR).expect("resolves").expect("set");
    assert_eq!(dir.value, setup.home.path().join("etc/data/spaces"));
    // From a flag, a relative path stays relative to the working directory.
    let flags = Flags::default().with(&DIR, Some("rel"));
    let mut resolver = Resolver::load(&DECLARATION, flags, &env).expect("loads");
    let dir = resolver.optional(&DIR).expect("resolves").expect("set");
    assert_eq!(dir.value, PathBuf::from("rel"));
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(dir.absolute().expect("absolute"), cwd.join("rel"));
}

#[test]
fn missing_values_say_every_way_to_set_them() {
    let setup = Setup::new();
    let env = setup.env();
    let resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
    let default = setup.home.path().join(".config/embark/test.toml");
    assert_eq!(
        resolver.missing(&URL, "").to_string(),
        format!(
            "the URL is not set: pass --url, set EMBARK_T_URL or put url in {}",
            default.display()
        )
    );
    assert_eq!(
        resolver.missing(&TOKEN, " (it must match the server's)").to_string(),
        format!(
            "the token is not set: set EMBARK_T_TOKEN or put token in {} (it must match the server's)",
            default.display()
        )
    );
    // Without a home there is no default file to point at.
    let env = |_: &str| None;
    let resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
    assert!(
        resolver
            .missing(&URL, "")
            .to_string()
            .ends_with("or put url in a config file named by --config or EMBARK_T_CONFIG"),
        "{}",
        resolver.missing(&URL, "")
    );
}

#[test]
fn secrets_never_show_in_errors_debug_or_the_report() {
    // Wrong type in the file, bad syntax, a failed check: the value never shows.
    for text in [
        format!("token = {}\n", SECRET.len()),
        format!("token = {SECRET}\n"),
        format!("token = \"{SECRET}\nmore\"\n"),
        "token = 98765432109876543210\n".to_owned(),
    ] {
        let setup = Setup::new();
        setup.default_file(&text);
        let env = setup.env();
        let shown = match Resolver::load(&DECLARATION, Flags::default(), &env) {
            Err(err) => format!("{} {err:?}", crate::text::error_chain(&err)),
            Ok(mut resolver) => {
                let err = resolver.optional(&TOKEN).expect_err("not a string");
                format!("{} {err:?}", crate::text::error_chain(&err))
            }
        };
        for secret in [SECRET, "98765432109876543210", "23"] {
            assert!(!shown.contains(secret), "{text:?} leaked into {shown}");
        }
    }
    let setup = Setup::new().set("EMBARK_T_TOKEN", SECRET);
    setup.default_file(&format!("token = \"{SECRET}-file\"\n"));
    let env = setup.env();
    let mut resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
    let token = resolver.optional(&TOKEN).expect("resolves").expect("set");
    assert_eq!(token.value.expose(), SECRET, "env beats the file");
    let err = token.clone().ensure(|t| t.expose().len() > 100).expect_err("too short");
    let report = resolver.report().to_string();
    for shown in [
        format!("{token:?}"),
        format!("{resolver:?}"),
        err.to_string(),
        format!("{err:?}"),
        report.clone(),
    ] {
        assert!(!shown.contains("hunter2"), "leaked: {shown}");
    }
    assert!(
        err.to_string()
            .starts_with("token (a secret, not shown) (from env EMBARK_T_TOKEN) is not allowed"),
        "{err}"
    );
    assert!(
        report.contains("# token is set (secret, not shown)  # from env EMBARK_T_TOKEN"),
        "{report}"
    );
}

#[test]
fn a_secret_in_a_file_others_can_read_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new();
    let path = setup.default_file(&format!("token = \"{SECRET}\"\n"));
    let env = setup.env();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
    assert_eq!(
        resolver.warnings(),
        [format!(
            "{} holds token and other users may read it: chmod 600 {}",
            path.display(),
            path.display()
        )]
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
    assert!(resolver.warnings().is_empty());
}

#[test]
fn the_report_is_toml_with_each_source() {
    let setup = Setup::new().set("EMBARK_T_COUNT", "4").set("EMBARK_T_TOKEN", SECRET);
    let path = setup.default_file("on = false\ndir = \"d\"\n");
    let env = setup.env();
    let flags = flags(&[(&URL, "http://flag \"quoted\"")]);
    let mut resolver = Resolver::load(&DECLARATION, flags, &env).expect("loads");
    resolver.optional(&URL).expect("resolves");
    resolver.or_default(&COUNT, 1).expect("resolves");
    resolver.or_default(&ON, true).expect("resolves");
    resolver.optional(&DIR).expect("resolves");
    resolver.optional(&TOKEN).expect("resolves");
    let report = resolver.report().to_string();
    let dir = setup.home.path().join(".config/embark/d");
    let expected = format!(
        "# embark-test --print-config: the effective configuration, each value with its source.\n\
         # Lines without a leading `#` can be pasted into a config file; secrets are never shown.\n\
         # config file: {file} (the default location)\n\
         url = 'http://flag \"quoted\"'  # from flag --url\n\
         count = 4  # from env EMBARK_T_COUNT\n\
         on = false  # from file {file}, line 1\n\
         dir = \"{dir}\"  # from file {file}, line 2\n\
         # token is set (secret, not shown)  # from env EMBARK_T_TOKEN\n",
        file = path.display(),
        dir = dir.display(),
    );
    assert_eq!(report, expected);
    // Pasted into a file, it reads back as the same values.
    let pasted: toml::Table = toml::from_str(&report).expect("the report is TOML");
    assert_eq!(pasted["url"].as_str(), Some("http://flag \"quoted\""));
    assert_eq!(pasted["count"].as_integer(), Some(4));
    assert_eq!(pasted["dir"].as_str(), dir.to_str());
    assert!(!pasted.contains_key("token"));

    // Unset and unresolved knobs, and a missing default file.
    let setup = Setup::new();
    let env = setup.env();
    let mut resolver = Resolver::load(&DECLARATION, Flags::default(), &env).expect("loads");
    resolver.optional(&URL).expect("resolves");
    resolver.optional(&TOKEN).expect("resolves");
    let report = resolver.report().to_string();
    assert!(report.contains("# config file: none; the default "), "{report}");
    assert!(
        report.contains("# url is not set (set it with --url, EMBARK_T_URL or `url` in the file)"),
        "{report}"
    );
    assert!(
        report.contains("# token is not set (set it with EMBARK_T_TOKEN or `token` in the file)"),
        "{report}"
    );
    assert!(report.contains("# count: not resolved (see the error)"), "{report}");
}

#[test]
fn help_gaps_are_found() {
    let help = "--config [env: EMBARK_T_CONFIG] --url [env: EMBARK_T_URL] --count --dir EMBARK_T_DIR EMBARK_T_ON";
    assert_eq!(
        DECLARATION.missing_from_help(help),
        ["EMBARK_T_COUNT", "EMBARK_T_TOKEN"]
    );
}

#[test]
fn durations_need_a_unit_and_show_the_largest_exact_one() {
    use std::time::Duration;

    use super::Setting;
    for (text, millis) in [
        ("250ms", 250),
        ("90s", 90_000),
        ("5m", 300_000),
        ("24h", 86_400_000),
        ("1500 ms", 1500),
    ] {
        assert_eq!(Duration::from_text(text), Some(Duration::from_millis(millis)), "{text}");
    }
    for bad in ["300", "5 minutes", "-1s", "1.5s", "s", ""] {
        assert_eq!(Duration::from_text(bad), None, "{bad:?}");
    }
    let shown = |ms| {
        Duration::from_millis(ms)
            .to_toml()
            .and_then(|v| v.as_str().map(str::to_owned))
    };
    assert_eq!(shown(300_000).as_deref(), Some("5m"));
    assert_eq!(shown(90_000).as_deref(), Some("90s"));
    assert_eq!(shown(1500).as_deref(), Some("1500ms"));
    assert_eq!(shown(0).as_deref(), Some("0ms"));
}
