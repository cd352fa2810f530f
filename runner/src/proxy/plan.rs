//! From a profile and a task's intent to what the proxy needs: the API,
//! the real upstream, the real key (and secret headers), the model's
//! prices, every credential value to redact, and the Pi configuration the
//! task gets instead, which names the proxy and a token but no key.
//!
//! Keys are looked up as Pi would: `auth.json`, then the provider's
//! standard variable in the profile's env file, then `models.json`'s
//! `apiKey` (a literal, or the name of a variable of the env file).
//! An OAuth login in `auth.json` (Pi's `/login`: `access`, `refresh`,
//! `expires` in ms) serves the Anthropic messages API: its access token
//! goes upstream as a bearer until it expires; the runner does not refresh
//! it (that needs the provider's token endpoint and writes auth.json).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::api::Api;
use super::meter::Prices;

/// A built-in provider the proxy can serve without a models.json entry.
struct BuiltIn {
    name: &'static str,
    api: Api,
    base_url: &'static str,
    key_var: &'static str,
}

const BUILT_INS: [BuiltIn; 3] = [
    BuiltIn {
        name: "anthropic",
        api: Api::AnthropicMessages,
        base_url: "https://api.anthropic.com",
        key_var: "ANTHROPIC_API_KEY",
    },
    BuiltIn {
        name: "openai",
        api: Api::OpenAiResponses,
        base_url: "https://api.openai.com/v1",
        key_var: "OPENAI_API_KEY",
    },
    BuiltIn {
        name: "google",
        api: Api::GoogleGenerative,
        base_url: "https://generativelanguage.googleapis.com/v1beta",
        key_var: "GEMINI_API_KEY",
    },
];

/// The `anthropic-beta` an OAuth access token needs.
const OAUTH_BETA: &str = "oauth-2025-04-20";

/// The reason an expired OAuth login is refused.
fn oauth_expired(at: SystemTime) -> String {
    let at = jiff::Timestamp::try_from(at).map_or_else(|_| format!("{at:?}"), |t| t.to_string());
    format!(
        "its OAuth access token (auth.json) expired at {at} and the runner does not refresh it; \
         log in again with Pi (`/login`, PI_CODING_AGENT_DIR set to the profile's directory) or give the profile an API key"
    )
}

/// Variable names whose values count as credentials, whatever they hold.
const SECRET_NAME_PARTS: [&str; 6] = ["KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH"];

/// Why a profile's provider cannot be served through the proxy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "auth profile {profile:?} cannot serve provider {provider:?} through the credential proxy: {reason}; \
     fix the profile, or (process mode only, unsafe: the key is then readable by the task) set \
     `credentials = \"materialise\"` in its profile.toml"
)]
pub struct Unproxiable {
    pub profile: String,
    pub provider: String,
    pub reason: String,
}

/// The profile's Pi files and variables as read (each `None` when absent).
#[derive(Clone, Debug, Default)]
pub struct ProfileFiles {
    pub models: Option<Value>,
    pub auth: Option<Value>,
    pub env: Vec<(String, String)>,
}

/// What the proxy serves for one task.
#[derive(Clone, Debug)]
pub struct Plan {
    pub api: Api,
    pub provider: String,
    pub model: String,
    /// The real upstream's origin (`https://host[:port]`), without a path.
    pub upstream_origin: String,
    /// The path of the provider's base URL (e.g. `/v1`), kept on both
    /// sides so Pi's URLs need no rewriting.
    pub base_path: String,
    /// The real key (or OAuth access token), when the provider needs one.
    pub key: Option<String>,
    /// When `key` is an OAuth access token: when it expires.
    pub oauth_expires: Option<SystemTime>,
    /// Headers models.json adds (values resolved): sent upstream only.
    pub headers: Vec<(String, String)>,
    pub prices: Prices,
    /// Every credential value of the profile, for redaction.
    pub secrets: BTreeSet<String>,
    files: ProfileFiles,
}

impl Plan {
    /// The plan for `provider`/`model` of the profile `profile` with `files`.
    pub fn new(profile: &str, provider: &str, model: &str, files: ProfileFiles) -> Result<Plan, Unproxiable> {
        Plan::new_at(profile, provider, model, files, SystemTime::now())
    }

    /// [`Plan::new`] at the time `now` (an OAuth token expired by then is refused).
    pub fn new_at(
        profile: &str,
        provider: &str,
        model: &str,
        files: ProfileFiles,
        now: SystemTime,
    ) -> Result<Plan, Unproxiable> {
        let refuse = |reason: String| Unproxiable {
            profile: profile.to_owned(),
            provider: provider.to_owned(),
            reason,
        };
        let env_value = |name: &str| files.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let entry = files
            .models
            .as_ref()
            .and_then(|m| m.pointer(&format!("/providers/{}", pointer_escape(provider))))
            .cloned()
            .unwrap_or(Value::Null);
        let built_in = BUILT_INS.iter().find(|b| b.name == provider);
        let model_entry = entry.get("models").and_then(Value::as_array).and_then(|models| {
            models
                .iter()
                .find(|m| m.get("id").and_then(Value::as_str) == Some(model))
        });

        let api_name = model_entry
            .and_then(|m| m.get("api"))
            .or_else(|| entry.get("api"))
            .and_then(Value::as_str);
        let api = match (api_name, built_in) {
            (Some(name), _) => Api::parse(name).ok_or_else(|| {
                refuse(format!(
                    "its API {name:?} is not one the proxy speaks ({})",
                    Api::ALL.map(Api::name).join(", ")
                ))
            })?,
            (None, Some(b)) => b.api,
            (None, None) => {
                return Err(refuse(
                    "it is neither a built-in provider the proxy knows (anthropic, openai, google) nor one models.json gives an `api` for".to_owned(),
                ));
            }
        };
        let base_url = entry
            .get("baseUrl")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| built_in.map(|b| b.base_url.to_owned()))
            .ok_or_else(|| refuse("models.json gives it no `baseUrl`".to_owned()))?;
        let url = url::Url::parse(&base_url).map_err(|e| refuse(format!("its baseUrl is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(refuse("its baseUrl is not an http(s) URL with a host".to_owned()));
        }
        let upstream_origin = url.origin().ascii_serialization();
        let base_path = url.path().trim_end_matches('/').to_owned();

        // A value from models.json: a literal or a variable of the env file; never a command.
        let resolve = |what: &str, value: &str| -> Result<String, Unproxiable> {
            if value.starts_with('!') {
                return Err(refuse(format!(
                    "its {what} is a shell command, which the runner does not run for a proxied task"
                )));
            }
            Ok(env_value(value).unwrap_or_else(|| value.to_owned()))
        };
        let mut oauth_expires = None;
        let key = match files.auth.as_ref().and_then(|a| a.get(provider)) {
            Some(auth) => match auth.get("type").and_then(Value::as_str) {
                Some("api_key") => auth.get("key").and_then(Value::as_str).map(str::to_owned),
                Some("oauth") if api == Api::AnthropicMessages => {
                    let access = auth
                        .get("access")
                        .and_then(Value::as_str)
                        .ok_or_else(|| refuse("its auth.json OAuth entry has no `access` token".to_owned()))?;
                    let expires = auth
                        .get("expires")
                        .and_then(Value::as_u64)
                        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
                        .ok_or_else(|| refuse("its auth.json OAuth entry has no `expires` time".to_owned()))?;
                    if expires <= now {
                        return Err(refuse(oauth_expired(expires)));
                    }
                    oauth_expires = Some(expires);
                    Some(access.to_owned())
                }
                Some("oauth") => {
                    return Err(refuse(format!(
                        "its auth.json entry is an OAuth login, which the proxy serves for the anthropic-messages API only (this provider speaks {})",
                        api.name()
                    )));
                }
                Some(other) => {
                    return Err(refuse(format!(
                        "its auth.json entry is of type {other:?}; the proxy swaps in API keys and OAuth access tokens only"
                    )));
                }
                None => return Err(refuse("its auth.json entry has no `type`".to_owned())),
            },
            None => None,
        };
        let key = match key.or_else(|| built_in.and_then(|b| env_value(b.key_var))) {
            Some(key) => Some(key),
            None => match entry.get("apiKey").and_then(Value::as_str) {
                Some(value) => Some(resolve("apiKey", value)?),
                None => None,
            },
        };
        let mut headers = Vec::new();
        if let Some(map) = entry.get("headers").and_then(Value::as_object) {
            for (name, value) in map {
                let value = value
                    .as_str()
                    .ok_or_else(|| refuse(format!("its header {name:?} is not a string")))?;
                headers.push((name.to_ascii_lowercase(), resolve(&format!("header {name:?}"), value)?));
            }
        }
        let prices = model_entry
            .and_then(|m| m.get("cost"))
            .map(Prices::from_cost)
            .unwrap_or_default();
        let secrets = credential_values(&files, key.as_deref(), &headers);
        Ok(Plan {
            api,
            provider: provider.to_owned(),
            model: model.to_owned(),
            upstream_origin,
            base_path,
            key,
            oauth_expires,
            headers,
            prices,
            secrets,
            files,
        })
    }

    /// How the task's token starts. For an Anthropic OAuth login it looks
    /// like an OAuth token to Pi, which then shapes its requests as that
    /// login requires (a bearer, the OAuth beta, Claude Code's identity);
    /// the proxy swaps in the real access token.
    pub fn token_prefix(&self) -> &'static str {
        if self.oauth_expires.is_some() {
            "sk-ant-oat01-embark-proxy-"
        } else {
            "embark-proxy-"
        }
    }

    /// The headers that carry the real credential upstream; `beta` is the
    /// request's `anthropic-beta`, which an OAuth token needs to name
    /// OAuth.
    pub fn credential_headers(&self, beta: Option<&str>) -> Vec<(String, String)> {
        let Some(key) = self.key.as_deref() else {
            return Vec::new();
        };
        if self.oauth_expires.is_none() {
            let (name, value) = self.api.key_header(key);
            return vec![(name.to_owned(), value)];
        }
        let mut betas: Vec<&str> = beta
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .collect();
        if !betas.contains(&OAUTH_BETA) {
            betas.push(OAUTH_BETA);
        }
        vec![
            ("authorization".to_owned(), format!("Bearer {key}")),
            ("anthropic-beta".to_owned(), betas.join(",")),
        ]
    }

    /// Why a call at `now` is refused because the OAuth token expired.
    pub fn expired_at(&self, now: SystemTime) -> Option<String> {
        self.oauth_expires.filter(|at| *at <= now).map(oauth_expired)
    }

    /// The task's `models.json`: the profile's, with the provider pointed
    /// at `proxy_origin` (`http://127.0.0.1:PORT`) and `token` as its key,
    /// and every other key and secret header taken out.
    pub fn models_json(&self, proxy_origin: &str, token: &str) -> Value {
        let mut models = self.files.models.clone().unwrap_or_else(|| json!({}));
        if !models.is_object() {
            models = json!({});
        }
        let providers = models
            .as_object_mut()
            .expect("an object")
            .entry("providers")
            .or_insert_with(|| json!({}));
        if !providers.is_object() {
            *providers = json!({});
        }
        let providers = providers.as_object_mut().expect("an object");
        for entry in providers.values_mut().filter_map(Value::as_object_mut) {
            entry.remove("apiKey");
            entry.remove("headers");
        }
        let entry = providers
            .entry(self.provider.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(entry) = entry.as_object_mut() {
            entry.insert("baseUrl".into(), json!(format!("{proxy_origin}{}", self.base_path)));
            entry.insert("apiKey".into(), json!(token));
        }
        models
    }

    /// The profile's variables Pi still gets: those that are not credentials.
    pub fn pi_env(&self) -> Vec<(String, String)> {
        self.files
            .env
            .iter()
            .filter(|(name, value)| !is_secret_name(name) && !self.secrets.contains(value))
            .cloned()
            .collect()
    }
}

fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_PARTS.iter().any(|part| upper.contains(part))
}

/// Every credential value the profile holds: auth.json's strings, every
/// provider's `apiKey` and header values in models.json (resolved through
/// the env file), the env file's variables with secret-looking names, and
/// the key and headers the plan resolved.
pub fn credential_values(files: &ProfileFiles, key: Option<&str>, headers: &[(String, String)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    fn strings(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::String(s) => {
                out.insert(s.clone());
            }
            Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            Value::Object(map) => map
                .iter()
                .filter(|(k, _)| k.as_str() != "type")
                .for_each(|(_, v)| strings(v, out)),
            _ => {}
        }
    }
    if let Some(auth) = &files.auth {
        strings(auth, &mut out);
    }
    let env_value = |name: &str| files.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if let Some(providers) = files
        .models
        .as_ref()
        .and_then(|m| m.get("providers"))
        .and_then(Value::as_object)
    {
        for entry in providers.values() {
            let mut values: Vec<&str> = entry.get("apiKey").and_then(Value::as_str).into_iter().collect();
            if let Some(map) = entry.get("headers").and_then(Value::as_object) {
                values.extend(map.values().filter_map(Value::as_str));
            }
            for value in values {
                out.insert(env_value(value).unwrap_or_else(|| value.to_owned()));
            }
        }
    }
    for (name, value) in &files.env {
        if is_secret_name(name) {
            out.insert(value.clone());
        }
    }
    out.extend(key.map(str::to_owned));
    out.extend(headers.iter().map(|(_, v)| v.clone()));
    out.retain(|v| !v.trim().is_empty());
    out
}

/// A JSON pointer token for `name` (`~` and `/` escaped).
fn pointer_escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(models: Value, auth: Value, env: &[(&str, &str)]) -> ProfileFiles {
        ProfileFiles {
            models: Some(models),
            auth: Some(auth),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn a_custom_provider_is_pointed_at_the_proxy_with_the_token_and_no_key() {
        let models = json!({"providers": {
            "fake": {"baseUrl": "http://127.0.0.1:9/v1", "api": "openai-completions", "apiKey": "FAKE_KEY",
                     "headers": {"x-org": "org-secret-1"},
                     "models": [{"id": "fake-model", "cost": {"input": 3, "output": 15}}]},
            "other": {"baseUrl": "http://x", "apiKey": "other-secret-2"}}});
        let plan = Plan::new(
            "default",
            "fake",
            "fake-model",
            files(
                models,
                json!({"anthropic": {"type": "api_key", "key": "sk-ant-3"}}),
                &[("FAKE_KEY", "sk-fake-real"), ("REGION", "eu")],
            ),
        )
        .expect("proxiable");
        assert_eq!(plan.api, Api::OpenAiCompletions);
        assert_eq!(
            (plan.upstream_origin.as_str(), plan.base_path.as_str()),
            ("http://127.0.0.1:9", "/v1")
        );
        assert_eq!(plan.key.as_deref(), Some("sk-fake-real"));
        assert_eq!(plan.headers, [("x-org".to_owned(), "org-secret-1".to_owned())]);
        assert_eq!(plan.prices.output, 15.0);
        for secret in ["sk-fake-real", "org-secret-1", "other-secret-2", "sk-ant-3"] {
            assert!(plan.secrets.contains(secret), "{secret} in {:?}", plan.secrets);
        }
        assert_eq!(plan.pi_env(), [("REGION".to_owned(), "eu".to_owned())]);
        let rewritten = plan.models_json("http://127.0.0.1:4444", "tok-1").to_string();
        assert!(
            rewritten.contains(r#""baseUrl":"http://127.0.0.1:4444/v1""#),
            "{rewritten}"
        );
        assert!(rewritten.contains(r#""apiKey":"tok-1""#), "{rewritten}");
        for secret in ["FAKE_KEY", "org-secret-1", "other-secret-2"] {
            assert!(!rewritten.contains(secret), "{secret} left in {rewritten}");
        }
    }

    #[test]
    fn built_in_providers_take_their_key_from_auth_or_env() {
        let plan = Plan::new(
            "p",
            "anthropic",
            "claude-x",
            files(
                json!({}),
                json!({"anthropic": {"type": "api_key", "key": "sk-ant-9"}}),
                &[],
            ),
        )
        .expect("proxiable");
        assert_eq!(plan.api, Api::AnthropicMessages);
        assert_eq!(plan.upstream_origin, "https://api.anthropic.com");
        assert_eq!(plan.key.as_deref(), Some("sk-ant-9"));
        let plan = Plan::new(
            "p",
            "openai",
            "gpt",
            files(json!({}), json!({}), &[("OPENAI_API_KEY", "sk-oa-1")]),
        )
        .expect("proxiable");
        assert_eq!((plan.api, plan.key.as_deref()), (Api::OpenAiResponses, Some("sk-oa-1")));
        assert!(plan.pi_env().is_empty(), "the key variable does not reach Pi");
    }

    #[test]
    fn what_cannot_be_proxied_is_refused_with_the_reason() {
        let cases = [
            (json!({}), json!({}), "groq", "neither a built-in provider"),
            (
                json!({"providers": {"x": {"baseUrl": "http://h", "api": "bedrock-converse"}}}),
                json!({}),
                "x",
                "not one the proxy speaks",
            ),
            (
                json!({"providers": {"x": {"baseUrl": "http://h", "api": "openai-completions", "apiKey": "!op read k"}}}),
                json!({}),
                "x",
                "shell command",
            ),
            (
                json!({}),
                json!({"openai": {"type": "oauth", "access": "a", "refresh": "r", "expires": 1}}),
                "openai",
                "anthropic-messages API only",
            ),
            (
                json!({}),
                json!({"anthropic": {"type": "oauth", "access": "a", "refresh": "r"}}),
                "anthropic",
                "no `expires`",
            ),
            (
                json!({}),
                json!({"anthropic": {"type": "oauth", "access": "a", "refresh": "r", "expires": 1_000}}),
                "anthropic",
                "expired at 1970-01-01T00:00:01Z",
            ),
            (
                json!({}),
                json!({"anthropic": {"type": "magic"}}),
                "anthropic",
                "API keys and OAuth access tokens only",
            ),
        ];
        for (models, auth, provider, reason) in cases {
            let err = Plan::new("p", provider, "m", files(models, auth, &[])).expect_err(provider);
            let text = err.to_string();
            assert!(
                text.contains(reason) && text.contains("credentials = \"materialise\""),
                "{text}"
            );
        }
    }

    #[test]
    fn an_anthropic_oauth_login_is_a_bearer_with_the_oauth_beta_until_it_expires() {
        let expires = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let auth = json!({"anthropic": {"type": "oauth", "access": "sk-ant-oat01-acc", "refresh": "rt-1", "expires": 2_000_000_000_000u64}});
        let plan = Plan::new_at(
            "p",
            "anthropic",
            "claude-x",
            files(json!({}), auth, &[]),
            expires - Duration::from_secs(60),
        )
        .expect("valid for another minute");
        assert_eq!(plan.oauth_expires, Some(expires));
        assert_eq!(plan.token_prefix(), "sk-ant-oat01-embark-proxy-");
        assert!(plan.secrets.contains("sk-ant-oat01-acc") && plan.secrets.contains("rt-1"));
        assert_eq!(
            plan.credential_headers(Some("claude-code-20250219, fine-grained-tool-streaming-2025-05-14")),
            [
                ("authorization".to_owned(), "Bearer sk-ant-oat01-acc".to_owned()),
                (
                    "anthropic-beta".to_owned(),
                    "claude-code-20250219,fine-grained-tool-streaming-2025-05-14,oauth-2025-04-20".to_owned()
                ),
            ]
        );
        assert_eq!(
            plan.credential_headers(Some("oauth-2025-04-20"))[1].1,
            "oauth-2025-04-20",
            "named once"
        );
        assert_eq!(plan.expired_at(expires - Duration::from_secs(1)), None);
        let why = plan.expired_at(expires).expect("expired");
        assert!(
            why.contains("expired at 2033-05-18T03:33:20Z") && why.contains("/login"),
            "{why}"
        );

        let key = Plan::new(
            "p",
            "anthropic",
            "c",
            files(json!({}), json!({"anthropic": {"type": "api_key", "key": "k"}}), &[]),
        )
        .expect("proxiable");
        assert_eq!((key.token_prefix(), key.oauth_expires), ("embark-proxy-", None));
        assert_eq!(key.credential_headers(None), [("x-api-key".to_owned(), "k".to_owned())]);
    }
}
