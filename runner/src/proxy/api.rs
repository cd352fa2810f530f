//! The provider APIs the proxy speaks, as far as it has to understand them:
//! which requests are model calls, which model a call asks for, where the
//! key goes, and where an answer states its usage. Everything else in a
//! request or an answer passes through unread.

use serde_json::Value;

use super::meter::Tokens;

/// A provider API Pi speaks (models.json `api`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `openai-completions`: `POST …/chat/completions`, key as a bearer token.
    OpenAiCompletions,
    /// `openai-responses`: `POST …/responses`, key as a bearer token.
    OpenAiResponses,
    /// `anthropic-messages`: `POST …/v1/messages`, key in `x-api-key`.
    AnthropicMessages,
    /// `google-generative-ai`: `POST …/models/{model}:(stream)generateContent`, key in `x-goog-api-key`.
    GoogleGenerative,
}

/// The headers a key may come in (the token in place of it, from Pi).
pub const KEY_HEADERS: [&str; 3] = ["authorization", "x-api-key", "x-goog-api-key"];

impl Api {
    pub const ALL: [Api; 4] = [
        Api::OpenAiCompletions,
        Api::OpenAiResponses,
        Api::AnthropicMessages,
        Api::GoogleGenerative,
    ];

    pub fn parse(name: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|api| api.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::OpenAiCompletions => "openai-completions",
            Api::OpenAiResponses => "openai-responses",
            Api::AnthropicMessages => "anthropic-messages",
            Api::GoogleGenerative => "google-generative-ai",
        }
    }

    /// The header the real key goes in, and its value.
    pub fn key_header(self, key: &str) -> (&'static str, String) {
        match self {
            Api::OpenAiCompletions | Api::OpenAiResponses => ("authorization", format!("Bearer {key}")),
            Api::AnthropicMessages => ("x-api-key", key.to_owned()),
            Api::GoogleGenerative => ("x-goog-api-key", key.to_owned()),
        }
    }

    /// The model a model call at `path` with `body` asks for; `Err` with
    /// the reason when the request is not one of this API's model calls.
    pub fn requested_model(self, method: &str, path: &str, body: &[u8]) -> Result<String, String> {
        let call = match self {
            Api::OpenAiCompletions => "/chat/completions",
            Api::OpenAiResponses => "/responses",
            Api::AnthropicMessages => "/v1/messages",
            Api::GoogleGenerative => ":generateContent or :streamGenerateContent",
        };
        let not_a_call = || {
            format!(
                "{method} {path} is not a model call of the {} API ({call})",
                self.name()
            )
        };
        if method != "POST" {
            return Err(not_a_call());
        }
        if self == Api::GoogleGenerative {
            // …/models/{model}:streamGenerateContent
            let (head, verb) = path.rsplit_once(':').ok_or_else(not_a_call)?;
            if !matches!(verb, "generateContent" | "streamGenerateContent") {
                return Err(not_a_call());
            }
            let (_, model) = head.rsplit_once("/models/").ok_or_else(not_a_call)?;
            return Ok(model.to_owned());
        }
        if !path.ends_with(call) {
            return Err(not_a_call());
        }
        let json: Value = serde_json::from_slice(body)
            .map_err(|e| format!("the request body is not JSON ({e}), so its model cannot be checked"))?;
        json.get("model")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| "the request names no model (no string `model` field)".to_owned())
    }

    /// The usage one JSON answer (or one streamed event of it) states, if
    /// any. Counts are cumulative within an answer, so the meter keeps the
    /// largest of each.
    pub fn usage(self, value: &Value) -> Option<Tokens> {
        let n = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
        match self {
            // Both OpenAI shapes count cached prompt tokens inside the prompt's.
            Api::OpenAiCompletions => openai_usage(
                value.get("usage")?,
                ["prompt_tokens", "completion_tokens", "prompt_tokens_details"],
            ),
            Api::OpenAiResponses => openai_usage(
                value
                    .get("response")
                    .and_then(|r| r.get("usage"))
                    .or_else(|| value.get("usage"))?,
                ["input_tokens", "output_tokens", "input_tokens_details"],
            ),
            Api::AnthropicMessages => {
                // message_start: message.usage; message_delta and a whole answer: usage.
                let usage = value
                    .get("message")
                    .and_then(|m| m.get("usage"))
                    .or_else(|| value.get("usage"))
                    .filter(|u| u.is_object())?;
                Some(Tokens {
                    input: n(usage, "input_tokens"),
                    output: n(usage, "output_tokens"),
                    cache_read: n(usage, "cache_read_input_tokens"),
                    cache_write: n(usage, "cache_creation_input_tokens"),
                })
            }
            Api::GoogleGenerative => {
                let usage = value.get("usageMetadata").filter(|u| u.is_object())?;
                let cached = n(usage, "cachedContentTokenCount");
                Some(Tokens {
                    input: n(usage, "promptTokenCount").saturating_sub(cached),
                    output: n(usage, "candidatesTokenCount") + n(usage, "thoughtsTokenCount"),
                    cache_read: cached,
                    cache_write: 0,
                })
            }
        }
    }
}

/// An OpenAI usage object with its field names `[prompt, output, details]`.
fn openai_usage(usage: &Value, [prompt, output, details]: [&str; 3]) -> Option<Tokens> {
    usage.as_object()?;
    let n = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
    let cached = usage.get(details).map_or(0, |d| n(d, "cached_tokens"));
    Some(Tokens {
        input: n(usage, prompt).saturating_sub(cached),
        output: n(usage, output),
        cache_read: cached,
        cache_write: 0,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_model_of_each_api_is_read_from_its_request() {
        let body = br#"{"model":"m-1","stream":true}"#;
        assert_eq!(
            Api::OpenAiCompletions.requested_model("POST", "/v1/chat/completions", body),
            Ok("m-1".into())
        );
        assert_eq!(
            Api::OpenAiResponses.requested_model("POST", "/v1/responses", body),
            Ok("m-1".into())
        );
        assert_eq!(
            Api::AnthropicMessages.requested_model("POST", "/v1/messages", body),
            Ok("m-1".into())
        );
        assert_eq!(
            Api::GoogleGenerative.requested_model("POST", "/v1beta/models/gemini-x:streamGenerateContent", b""),
            Ok("gemini-x".into())
        );
        let err = Api::OpenAiCompletions
            .requested_model("GET", "/v1/models", b"")
            .expect_err("not a call");
        assert!(err.contains("GET /v1/models is not a model call"), "{err}");
        let err = Api::AnthropicMessages
            .requested_model("POST", "/v1/messages", b"{}")
            .expect_err("no model");
        assert!(err.contains("names no model"), "{err}");
        assert!(
            Api::GoogleGenerative
                .requested_model("POST", "/v1beta/models/x:countTokens", b"")
                .is_err()
        );
    }

    #[test]
    fn usage_is_read_in_each_api_s_field_names() {
        let openai = json!({"usage": {"prompt_tokens": 12, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}}});
        assert_eq!(
            Api::OpenAiCompletions.usage(&openai),
            Some(Tokens {
                input: 10,
                output: 5,
                cache_read: 2,
                cache_write: 0
            })
        );
        let responses = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 9, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 1}}}});
        assert_eq!(
            Api::OpenAiResponses.usage(&responses),
            Some(Tokens {
                input: 8,
                output: 4,
                cache_read: 1,
                cache_write: 0
            })
        );
        let start = json!({"type": "message_start", "message": {"usage": {"input_tokens": 7, "output_tokens": 1, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2}}});
        assert_eq!(
            Api::AnthropicMessages.usage(&start),
            Some(Tokens {
                input: 7,
                output: 1,
                cache_read: 3,
                cache_write: 2
            })
        );
        let google = json!({"usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 3, "thoughtsTokenCount": 1, "cachedContentTokenCount": 2}});
        assert_eq!(
            Api::GoogleGenerative.usage(&google),
            Some(Tokens {
                input: 4,
                output: 4,
                cache_read: 2,
                cache_write: 0
            })
        );
        assert_eq!(Api::OpenAiCompletions.usage(&json!({"choices": []})), None);
    }
}
