#!/usr/bin/env node
// Scripted fake model server: speaks the OpenAI chat-completions streaming
// wire format (SSE) on 127.0.0.1 so real Pi can run against it offline, and
// (text turns) the OpenAI responses, Anthropic messages and Google
// generative shapes, for the credential proxy's tests.
// It is the one fake in embark's tests; see README.md for the script format.
//
// Stateless turn selection: the turn answered is the number of assistant
// messages already in the request, so every conversation starts at turn 0
// and concurrent conversations do not disturb each other.

import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    script: { type: "string" },
    port: { type: "string", default: "0" },
    host: { type: "string", default: "127.0.0.1" },
  },
});

if (!args.script) {
  process.stderr.write("usage: server.mjs --script <file.json> [--port N] [--host 127.0.0.1]\n");
  process.exit(2);
}
if (!["127.0.0.1", "localhost", "::1"].includes(args.host)) {
  process.stderr.write(`refusing to listen on ${args.host}: the fake model serves loopback only\n`);
  process.exit(2);
}

const script = loadScript(args.script);

function loadScript(path) {
  let parsed;
  try {
    parsed = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    process.stderr.write(`cannot read script ${path}: ${err.message}\n`);
    process.exit(2);
  }
  if (!Array.isArray(parsed.turns) || parsed.turns.length === 0) {
    process.stderr.write(`script ${path} needs a non-empty "turns" array\n`);
    process.exit(2);
  }
  parsed.turns.forEach((turn, i) => {
    const kinds = ["text", "tool_calls", "error"].filter((k) => k in turn);
    if (kinds.length !== 1) {
      process.stderr.write(`script turn ${i} needs exactly one of text, tool_calls, error (has ${kinds.join(",") || "none"})\n`);
      process.exit(2);
    }
  });
  return parsed;
}

function log(record) {
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), ...record }) + "\n");
}

function textOf(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.filter((p) => p?.type === "text").map((p) => p.text).join("");
  return "";
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > 32 * 1024 * 1024) {
        reject(new Error("request body over 32 MiB"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Replaces {{last_user_text}} in scripted text (and tool call arguments) with the conversation's last user message.
function fill(text, messages, key = "") {
  const lastUser = [...messages].reverse().find((m) => m.role === "user");
  return text.replaceAll("{{last_user_text}}", textOf(lastUser?.content)).replaceAll("{{api_key}}", key);
}

// Splits text into small pieces so clients see a real token-by-token stream.
/** {@link fill} in every string of a tool call's arguments. */
function fillAll(value, messages, key) {
  if (typeof value === "string") return fill(value, messages, key);
  if (Array.isArray(value)) return value.map((v) => fillAll(v, messages, key));
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fillAll(v, messages, key)]));
  return value;
}

// A turn's text in pieces: `chunks` equal pieces when the turn says how many, else pieces of 6 characters.
function turnPieces(turn, text) {
  if (!turn.chunks) return pieces(text);
  const out = [];
  for (let i = 0; i < turn.chunks; i++) out.push(text);
  return out;
}

// The usage a turn reports: the script's `usage` (per turn, or for every turn), else 10 in / 5 out.
function usageOf(turn) {
  const u = { input: 10, output: 5, cache_read: 0, cache_write: 0, ...(script.usage ?? {}), ...(turn.usage ?? {}) };
  return u;
}

function pieces(text, size = 6) {
  const out = [];
  const chars = Array.from(text);
  for (let i = 0; i < chars.length; i += size) out.push(chars.slice(i, i + size).join(""));
  return out.length ? out : [""];
}

async function streamTurn(res, turn, turnIndex, model, messages, key) {
  const id = `chatcmpl-fake-${turnIndex}`;
  const created = Math.floor(Date.now() / 1000);
  const send = (choiceDelta, finish = null) =>
    res.write(
      `data: ${JSON.stringify({
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices: [{ index: 0, delta: choiceDelta, finish_reason: finish }],
      })}\n\n`,
    );
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
  send({ role: "assistant", content: "" });
  let finish = "stop";
  if ("text" in turn) {
    for (const piece of turnPieces(turn, fill(turn.text, messages, key))) {
      send({ content: piece });
      if (turn.chunk_delay_ms) await sleep(turn.chunk_delay_ms);
    }
  } else {
    finish = "tool_calls";
    turn.tool_calls.forEach((call, index) => {
      const argumentsText = JSON.stringify(fillAll(call.arguments ?? {}, messages, key));
      send({
        tool_calls: [
          { index, id: `call_fake_${turnIndex}_${index}`, type: "function", function: { name: call.name, arguments: "" } },
        ],
      });
      for (const piece of pieces(argumentsText, 16)) send({ tool_calls: [{ index, function: { arguments: piece } }] });
    });
  }
  send({}, finish);
  res.write(
    `data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model, choices: [], usage: openAiUsage(usageOf(turn)) })}\n\n`,
  );
  res.end("data: [DONE]\n\n");
}

function openAiUsage(u) {
  const prompt = u.input + u.cache_read;
  return { prompt_tokens: prompt, completion_tokens: u.output, total_tokens: prompt + u.output, prompt_tokens_details: { cached_tokens: u.cache_read } };
}

function sseHead(res) {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
}

// OpenAI responses: output_text deltas, then response.completed with usage (text turns).
async function streamResponses(res, turn, model, key) {
  sseHead(res);
  const event = (type, body) => res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...body })}\n\n`);
  const u = usageOf(turn);
  event("response.created", { response: { id: "resp_fake", model, status: "in_progress" } });
  const text = fill(turn.text, [], key);
  for (const piece of turnPieces(turn, text)) {
    event("response.output_text.delta", { item_id: "msg_fake", output_index: 0, content_index: 0, delta: piece });
    if (turn.chunk_delay_ms) await sleep(turn.chunk_delay_ms);
  }
  event("response.completed", {
    response: { id: "resp_fake", model, status: "completed", usage: { input_tokens: u.input + u.cache_read, output_tokens: u.output, input_tokens_details: { cached_tokens: u.cache_read } } },
  });
  res.end();
}

// Anthropic messages: message_start (input usage), text deltas, message_delta (output usage), message_stop.
async function streamAnthropic(res, turn, model, key) {
  sseHead(res);
  const event = (type, body) => res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...body })}\n\n`);
  const u = usageOf(turn);
  event("message_start", {
    message: { id: "msg_fake", type: "message", role: "assistant", model, content: [], usage: { input_tokens: u.input, output_tokens: 1, cache_read_input_tokens: u.cache_read, cache_creation_input_tokens: u.cache_write } },
  });
  event("content_block_start", { index: 0, content_block: { type: "text", text: "" } });
  for (const piece of turnPieces(turn, fill(turn.text, [], key))) {
    event("content_block_delta", { index: 0, delta: { type: "text_delta", text: piece } });
    if (turn.chunk_delay_ms) await sleep(turn.chunk_delay_ms);
  }
  event("content_block_stop", { index: 0 });
  event("message_delta", { delta: { stop_reason: "end_turn" }, usage: { output_tokens: u.output } });
  event("message_stop", {});
  res.end();
}

// Google generative: one JSON chunk per piece, usageMetadata on each, finishReason on the last.
async function streamGoogle(res, turn, key) {
  sseHead(res);
  const u = usageOf(turn);
  const usageMetadata = { promptTokenCount: u.input + u.cache_read, candidatesTokenCount: u.output, cachedContentTokenCount: u.cache_read, totalTokenCount: u.input + u.cache_read + u.output };
  const all = turnPieces(turn, fill(turn.text, [], key));
  for (const [i, piece] of all.entries()) {
    const last = i === all.length - 1;
    const chunk = { candidates: [{ content: { role: "model", parts: [{ text: piece }] }, ...(last ? { finishReason: "STOP" } : {}) }], usageMetadata };
    res.write(`data: ${JSON.stringify(chunk)}\n\n`);
    if (turn.chunk_delay_ms) await sleep(turn.chunk_delay_ms);
  }
  res.end();
}

// The key a request carries, in whichever place its API puts it.
function keyOf(req) {
  const auth = req.headers["authorization"];
  if (auth) return auth.replace(/^Bearer /, "");
  const key = req.headers["x-api-key"] ?? req.headers["x-goog-api-key"];
  if (key) return key;
  return new URL(req.url, "http://x").searchParams.get("key") ?? "";
}

// Which API a request speaks, by its path.
function apiOf(path) {
  if (path.endsWith("/chat/completions")) return "openai-completions";
  if (path.endsWith("/responses")) return "openai-responses";
  if (path.endsWith("/v1/messages")) return "anthropic-messages";
  if (/\/models\/[^/:]+:(stream)?[gG]enerateContent$/.test(path)) return "google-generative-ai";
  return null;
}

const server = createServer(async (req, res) => {
  try {
    if (req.method === "GET" && req.url === "/health") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ status: "ok" }));
      return;
    }
    const path = new URL(req.url, "http://x").pathname;
    const api = req.method === "POST" ? apiOf(path) : null;
    if (!api) {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: `fake model serves POST /v1/chat/completions, /v1/responses, /v1/messages and /v1beta/models/M:streamGenerateContent, not ${req.method} ${req.url}` } }));
      return;
    }
    const key = keyOf(req);
    const keyOk = script.expect_key === undefined || key === script.expect_key;
    const body = JSON.parse(await readBody(req));
    const messages = [body.messages, body.input, body.contents].find(Array.isArray) ?? [];
    const turnIndex = messages.filter((m) => m.role === "assistant" || m.role === "model").length;
    const turn = script.turns[turnIndex];
    const model = api === "google-generative-ai" ? decodeURIComponent(path.split("/models/")[1].split(":")[0]) : body.model;
    log({ event: "request", api, turn: turnIndex, model, messages: messages.length, stream: body.stream === true || api === "google-generative-ai", key_ok: keyOk, key_headers: Object.keys(req.headers).filter((h) => ["authorization", "x-api-key", "x-goog-api-key"].includes(h)) });
    if (!keyOk) {
      res.writeHead(401, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: "fake model: the request did not carry the expected API key", type: "authentication_error" } }));
      return;
    }
    if (!turn) {
      res.writeHead(500, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: `fake model script has no turn ${turnIndex} (it has ${script.turns.length})`, type: "server_error" } }));
      return;
    }
    // A turn that must see earlier text in its request (a resumed session carries the parent's prompt and answer).
    const missing = (turn.expect_in_request ?? []).filter((text) => !JSON.stringify(messages).includes(text));
    if (missing.length > 0) {
      log({ event: "expectation_failed", turn: turnIndex, missing });
      res.writeHead(422, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: `fake model: turn ${turnIndex}'s request lacks ${JSON.stringify(missing)}`, type: "invalid_request_error" } }));
      return;
    }
    if (turn.delay_ms) await sleep(turn.delay_ms);
    if ("error" in turn) {
      res.writeHead(turn.error.status ?? 500, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: turn.error.message ?? "fake error", type: "server_error" } }));
      return;
    }
    if (api !== "openai-completions" && !("text" in turn)) throw new Error(`the ${api} shape serves text turns only`);
    if (api === "openai-responses") return await streamResponses(res, turn, model, key);
    if (api === "anthropic-messages") return await streamAnthropic(res, turn, model, key);
    if (api === "google-generative-ai") return await streamGoogle(res, turn, key);
    await streamTurn(res, turn, turnIndex, body.model ?? "fake-model", messages, key);
  } catch (err) {
    log({ event: "failure", error: String(err?.stack ?? err) });
    if (!res.headersSent) res.writeHead(400, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: { message: `fake model could not handle the request: ${err.message}` } }));
  }
});

server.listen(Number(args.port), args.host, () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n");
});

for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.close(() => process.exit(0)));
