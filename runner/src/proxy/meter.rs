//! Metering: the usage each answer states, read as it streams past
//! ([`Scanner`]), summed per attempt with its cost ([`Meter`]), and the
//! budget that stops further calls.

use std::sync::{Arc, Mutex};

use embark_core::event::{MeteredUsage, TokenTotals};
use serde_json::Value;

use super::api::Api;

/// The longest SSE line or JSON answer scanned for usage; longer ones pass
/// through unread (usage lines are small).
const MAX_SCANNED_BYTES: usize = 8 * 1024 * 1024;

/// One answer's (or a sum of answers') tokens per class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Prompt tokens not read from the cache.
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Tokens {
    /// Field by field the larger: counts grow within one answer.
    fn max(self, other: Tokens) -> Tokens {
        Tokens {
            input: self.input.max(other.input),
            output: self.output.max(other.output),
            cache_read: self.cache_read.max(other.cache_read),
            cache_write: self.cache_write.max(other.cache_write),
        }
    }

    fn add(&mut self, other: Tokens) {
        self.input += other.input;
        self.output += other.output;
        self.cache_read += other.cache_read;
        self.cache_write += other.cache_write;
    }
}

/// A model's prices per million tokens (models.json `cost`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Prices {
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

impl Prices {
    /// From a models.json model's `cost` object; missing fields cost 0.
    pub fn from_cost(cost: &Value) -> Prices {
        let p = |key: &str| {
            cost.get(key)
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        Prices {
            input: p("input").unwrap_or(0.0),
            output: p("output").unwrap_or(0.0),
            cache_read: p("cacheRead").unwrap_or(0.0),
            cache_write: p("cacheWrite").unwrap_or(0.0),
        }
    }

    fn cost(&self, t: Tokens) -> f64 {
        (t.input as f64 * self.input
            + t.output as f64 * self.output
            + t.cache_read as f64 * self.cache_read
            + t.cache_write as f64 * self.cache_write)
            / 1_000_000.0
    }
}

#[derive(Debug, Default)]
struct Totals {
    tokens: Tokens,
    cost: f64,
    calls: u64,
    refused: u64,
    budget_hit: bool,
}

/// The attempt's running totals, shared by the proxy's requests.
#[derive(Clone, Debug)]
pub struct Meter {
    prices: Prices,
    max_cost: Option<f64>,
    totals: Arc<Mutex<Totals>>,
}

impl Meter {
    pub fn new(prices: Prices, max_cost: Option<f64>) -> Meter {
        Meter {
            prices,
            max_cost,
            totals: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Totals> {
        // Plain counters: a panic elsewhere cannot leave them half-written.
        self.totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err` with the sentence to answer when the budget is used up; the
    /// refusal is counted and remembered ([`Meter::budget_exceeded`]).
    pub fn admit(&self) -> Result<(), String> {
        let mut totals = self.lock();
        match self.max_cost {
            Some(max) if totals.cost >= max => {
                totals.refused += 1;
                totals.budget_hit = true;
                Err(format!(
                    "the task's cost budget of {max} is used up ({:.6} spent): raise EMBARK_TASK_MAX_COST or the profile's max_cost to let a task spend more",
                    totals.cost
                ))
            }
            _ => Ok(()),
        }
    }

    /// A refused call (another model, a bad token).
    pub fn refused(&self) {
        self.lock().refused += 1;
    }

    /// A forwarded call and the usage its answer stated.
    pub fn record(&self, tokens: Tokens) {
        let mut totals = self.lock();
        totals.calls += 1;
        totals.tokens.add(tokens);
        totals.cost += self.prices.cost(tokens);
    }

    /// Whether a call was refused for the budget (the call that crossed it
    /// was answered: its work is done).
    pub fn budget_exceeded(&self) -> bool {
        self.lock().budget_hit
    }

    /// The totals as the `metered_usage` event reports them.
    pub fn snapshot(&self) -> MeteredUsage {
        let totals = self.lock();
        let t = totals.tokens;
        MeteredUsage {
            tokens: TokenTotals {
                input: t.input,
                output: t.output,
                cache_read: t.cache_read,
                cache_write: t.cache_write,
                total: t.input + t.output + t.cache_read + t.cache_write,
                ..TokenTotals::default()
            },
            cost: totals.cost,
            calls: totals.calls,
            refused: totals.refused,
            max_cost: self.max_cost,
            ..MeteredUsage::default()
        }
    }
}

/// Reads the usage out of one answer as its bytes pass: SSE `data:` lines
/// one by one, or a whole JSON body at the end.
#[derive(Debug)]
pub struct Scanner {
    api: Api,
    sse: bool,
    pending: Vec<u8>,
    overflowed: bool,
    seen: Option<Tokens>,
}

impl Scanner {
    pub fn new(api: Api, content_type: &str) -> Scanner {
        Scanner {
            api,
            sse: content_type.starts_with("text/event-stream"),
            pending: Vec::new(),
            overflowed: false,
            seen: None,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.sse {
            if self.pending.len() + chunk.len() > MAX_SCANNED_BYTES {
                self.overflowed = true;
                self.pending = Vec::new();
            } else if !self.overflowed {
                self.pending.extend_from_slice(chunk);
            }
            return;
        }
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            if self.overflowed {
                self.overflowed = false;
                self.pending.clear();
            } else if self.pending.is_empty() {
                // A whole line in this chunk: read in place, nothing copied.
                self.line(&rest[..end]);
            } else {
                self.pending.extend_from_slice(&rest[..end]);
                let mut line = std::mem::take(&mut self.pending);
                self.line(&line);
                line.clear();
                self.pending = line;
            }
            rest = &rest[end + 1..];
        }
        if self.pending.len() + rest.len() > MAX_SCANNED_BYTES {
            self.overflowed = true;
            self.pending.clear();
        } else if !self.overflowed {
            self.pending.extend_from_slice(rest);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Only a line that names usage is parsed: most of a stream is text deltas.
        if let Some(data) = line.strip_prefix(b"data:")
            && data.windows(5).any(|w| w == b"usage")
        {
            self.json(data);
        }
    }

    fn json(&mut self, bytes: &[u8]) {
        if let Ok(value) = serde_json::from_slice::<Value>(bytes)
            && let Some(tokens) = self.api.usage(&value)
        {
            self.seen = Some(self.seen.map_or(tokens, |seen| seen.max(tokens)));
        }
    }

    /// The answer ended: the usage it stated (zero when it stated none).
    pub fn finish(mut self) -> Tokens {
        let pending = std::mem::take(&mut self.pending);
        if self.sse {
            self.line(&pending);
        } else if !self.overflowed {
            self.json(&pending);
        }
        self.seen.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_usage_is_read_across_chunk_boundaries() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n\
                      data: {\"type\":\"content_block_delta\"}\n\n\
                      data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\r\n\r\n";
        let mut scanner = Scanner::new(Api::AnthropicMessages, "text/event-stream; charset=utf-8");
        for chunk in stream.as_bytes().chunks(5) {
            scanner.feed(chunk);
        }
        assert_eq!(
            scanner.finish(),
            Tokens {
                input: 11,
                output: 7,
                cache_read: 0,
                cache_write: 0
            }
        );
        let mut whole = Scanner::new(Api::OpenAiCompletions, "application/json");
        whole.feed(br#"{"usage":{"prompt_tokens":3,"#);
        whole.feed(br#""completion_tokens":2}}"#);
        assert_eq!(
            whole.finish(),
            Tokens {
                input: 3,
                output: 2,
                cache_read: 0,
                cache_write: 0
            }
        );
    }

    #[test]
    fn the_meter_sums_prices_and_stops_at_the_budget() {
        let prices = Prices::from_cost(&serde_json::json!({"input": 1.0, "output": 2.0, "cacheRead": 0.5}));
        let meter = Meter::new(prices, Some(0.00003));
        assert!(meter.admit().is_ok());
        meter.record(Tokens {
            input: 10,
            output: 5,
            cache_read: 2,
            cache_write: 0,
        });
        let usage = meter.snapshot();
        assert_eq!((usage.calls, usage.tokens.total), (1, 17));
        assert!((usage.cost - 0.000021).abs() < 1e-12, "{}", usage.cost);
        assert!(!meter.budget_exceeded() && meter.admit().is_ok());
        meter.record(Tokens {
            input: 10,
            output: 0,
            cache_read: 0,
            cache_write: 0,
        });
        assert!(!meter.budget_exceeded(), "the call that crossed it was answered");
        let refusal = meter.admit().expect_err("over budget");
        assert!(refusal.contains("budget of 0.00003 is used up"), "{refusal}");
        assert!(meter.budget_exceeded());
        assert_eq!(meter.snapshot().refused, 1);
    }
}
