#!/usr/bin/env node
// smoke:tui — the real interactive Pi TUI in tmux (send-keys, capture-pane),
// with the /embark extension, the real sidecar, broker and runner, and the
// scripted fake model: submit, then type nothing: the live footer goes from
// running to cleared and the result lands on its own; `/embark status` keeps
// its state table AND its events on screen (one notification); `/embark tasks`
// opens the picker, the arrow key moves, Enter attaches the chosen task (its
// widget below the editor), and its result lands once.
// Lean (< 60 s); tmux runs on its own socket under the smoke's directory and
// only that server is killed.

import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { smokeScript } from "./lib/process.mjs";
import { ROOT, buildBinaries, emptyConfig, fakeModels, fixtureRepo, requirePi, startBrokerAndRunner, startFakeModel, PI_SETTINGS } from "./lib/stack.mjs";
import { sleep } from "./lib/tasks.mjs";

const NAME = "smoke:tui";
const FINAL_TEXT = "done: tui.txt written";
const { dir, step, fail, run } = smokeScript(NAME, "embark-smoke-tui-");
const socket = join(dir, "tmux.sock");

const tmux = (...args) => {
  const out = spawnSync("tmux", ["-S", socket, ...args], { encoding: "utf8" });
  if (out.status !== 0) fail(`tmux ${args[0]} failed: ${out.stderr}`);
  return out.stdout;
};
const screen = () => tmux("capture-pane", "-t", "pi", "-p", "-S", "-200");
const keys = (...k) => tmux("send-keys", "-t", "pi", ...k);

/** Waits (bounded) until the screen matches `pattern`; returns the screen. */
async function seen(pattern, what, timeoutMs = 20_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const text = screen();
    if (pattern.test(text)) return text;
    if (Date.now() > end) fail(`${what}: not on screen within ${timeoutMs} ms:\n${text}`);
    await sleep(200);
  }
}

/** Types an /embark line once the editor is idle, and presses Enter. */
async function type(line) {
  keys("-l", line);
  await sleep(300);
  keys("Enter");
}

async function main() {
  if (spawnSync("tmux", ["-V"]).status !== 0) fail("tmux is not installed (apt-get install tmux)");
  const piBin = requirePi();
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const model = await startFakeModel(dir, {
    turns: [{ tool_calls: [{ name: "bash", arguments: { command: "echo tui > tui.txt" } }] }, { text: FINAL_TEXT }],
  });
  const { broker, secrets } = await startBrokerAndRunner(dir, bin, {
    label: "tui",
    profile: { "models.json": fakeModels(model.baseUrl) },
    runnerName: "tui-runner",
  });
  const agent = join(dir, "laptop-agent");
  const home = join(dir, "laptop-home");
  mkdirSync(agent, { recursive: true });
  mkdirSync(home, { recursive: true });
  writeFileSync(join(agent, "settings.json"), JSON.stringify(PI_SETTINGS));
  const env = {
    HOME: home,
    PI_CODING_AGENT_DIR: agent,
    PI_OFFLINE: "1",
    EMBARK_SIDECAR_PATH: join(bin, "embark-sidecar"),
    EMBARK_CONFIG: emptyConfig(dir, "laptop"),
    EMBARK_BROKER_URL: broker.url,
    EMBARK_CLIENT_SECRET: secrets.client,
    EMBARK_PROVIDER: "fake",
    EMBARK_MODEL: "fake-model",
  };
  const envArgs = Object.entries(env).flatMap(([k, v]) => ["-e", `${k}=${v}`]);
  tmux("new-session", "-d", "-s", "pi", "-x", "140", "-y", "60", ...envArgs, "-c", repo.work, piBin, "-e", join(ROOT, "extension-shim"));
  await seen(/\(main\)/, "the Pi TUI footer", 30_000);
  await sleep(1000); // the editor takes keys a moment after the first frame

  await type('/embark "write tui.txt"');
  const submitted = await seen(/Embarked task ([0-9a-f]{8})/, "the submit answer");
  const id = submitted.match(/Embarked task ([0-9a-f]{8})/)[1];
  step(`submitted ${id}`);

  // Type nothing: the footer follows the task and the result arrives by itself.
  await seen(/embark: 1 task running/, "the live footer saying running", 30_000);
  await seen(new RegExp(FINAL_TEXT), "the result in the conversation, with no command typed", 30_000);
  const settled = await seen(/task \S+ succeeded/, "the line saying the task succeeded");
  if (/embark: 1 task (running|queued)/.test(settled.slice(settled.lastIndexOf(FINAL_TEXT)))) {
    fail(`the footer still counts the finished task:\n${settled}`);
  }
  step("the footer went from running to cleared and the result landed without typing");
  // The result message's heading (the status table's title has no state after the id).
  const results = (text) => text.split(new RegExp(`embark task ${id} succeeded`)).length - 1;

  await type(`/embark status ${id}`);
  const status = await seen(new RegExp(`embark task ${id}[\\s\\S]*state\\s+succeeded[\\s\\S]*Recent events`), "the status table with its events");
  if (results(status) !== 1) fail(`the result landed ${results(status)} times`);
  step("/embark status shows the state table and the events on screen");

  // A second task to pick between, then the picker: Down to the older one, Enter.
  await type('/embark "and another"');
  await seen(/Embarked task [0-9a-f]{8}[\s\S]*Embarked task [0-9a-f]{8}/, "the second submit");
  await type("/embark tasks");
  await seen(/pick a task[\s\S]*↑↓/, "the picker");
  const before = results(screen());
  keys("Down");
  await sleep(300);
  keys("Enter");
  const shown = await seen(new RegExp(`Attached to task ${id}[\\s\\S]*embark ${id} · succeeded`), "the picked task attached, its widget below the editor");
  if (results(shown) !== before) fail(`the result landed again after picking the finished task (${before} → ${results(shown)})`);
  step("/embark tasks: arrows move, Enter attaches the task (widget on screen); its result landed once");
}

run(main, {
  onFailure: () => {
    const last = spawnSync("tmux", ["-S", socket, "capture-pane", "-t", "pi", "-p"], { encoding: "utf8" }).stdout;
    return `\nlast screen:\n${last}`;
  },
  always: () => {
    spawnSync("tmux", ["-S", socket, "kill-server"]);
  },
});
