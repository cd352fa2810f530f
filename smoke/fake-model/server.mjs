#!/usr/bin/env node
// Scripted fake model server: speaks the OpenAI chat-completions streaming
// wire format (SSE) on 127.0.0.1 so real Pi can run against it offline.
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
function fill(text, messages) {
  const lastUser = [...messages].reverse().find((m) => m.role === "user");
  return text.replaceAll("{{last_user_text}}", textOf(lastUser?.content));
}

// Splits text into small pieces so clients see a real token-by-token stream.
/** {@link fill} in every string of a tool call's arguments. */
function fillAll(value, messages) {
  if (typeof value === "string") return fill(value, messages);
  if (Array.isArray(value)) return value.map((v) => fillAll(v, messages));
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fillAll(v, messages)]));
  return value;
}

function pieces(text, size = 6) {
  const out = [];
  const chars = Array.from(text);
  for (let i = 0; i < chars.length; i += size) out.push(chars.slice(i, i + size).join(""));
  return out.length ? out : [""];
}

async function streamTurn(res, turn, turnIndex, model, messages) {
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
    for (const piece of pieces(fill(turn.text, messages))) {
      send({ content: piece });
      if (turn.chunk_delay_ms) await sleep(turn.chunk_delay_ms);
    }
  } else {
    finish = "tool_calls";
    turn.tool_calls.forEach((call, index) => {
      const argumentsText = JSON.stringify(fillAll(call.arguments ?? {}, messages));
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
    `data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model, choices: [], usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 } })}\n\n`,
  );
  res.end("data: [DONE]\n\n");
}

const server = createServer(async (req, res) => {
  try {
    if (req.method === "GET" && req.url === "/health") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ status: "ok" }));
      return;
    }
    if (req.method !== "POST" || !req.url.endsWith("/chat/completions")) {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: `fake model serves POST /v1/chat/completions, not ${req.method} ${req.url}` } }));
      return;
    }
    const body = JSON.parse(await readBody(req));
    const messages = Array.isArray(body.messages) ? body.messages : [];
    const turnIndex = messages.filter((m) => m.role === "assistant").length;
    const turn = script.turns[turnIndex];
    log({ event: "request", turn: turnIndex, model: body.model, messages: messages.length, stream: body.stream === true });
    if (!turn) {
      res.writeHead(500, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: `fake model script has no turn ${turnIndex} (it has ${script.turns.length})`, type: "server_error" } }));
      return;
    }
    if (turn.delay_ms) await sleep(turn.delay_ms);
    if ("error" in turn) {
      res.writeHead(turn.error.status ?? 500, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: turn.error.message ?? "fake error", type: "server_error" } }));
      return;
    }
    await streamTurn(res, turn, turnIndex, body.model ?? "fake-model", messages);
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
