#!/usr/bin/env node
// smoke:dirty-sync — the laptop's working tree reaches the runner exactly,
// with the real sidecar, broker, runner, git and Pi: tracked edits (binary
// bytes and CRLF included), a deletion, a mode change, untracked files and
// an unpushed commit arrive byte for byte (the runner's Pi lists and hashes
// every file of its workspace with a bash tool call, compared with the
// laptop's own view); ignored files and node_modules do not; the runner
// reports the fingerprint the sidecar sent; an unchanged tree resubmitted
// reuses the runner's cached overlay; a changed file changes the fingerprint.

import { createHash } from "node:crypto";
import { chmodSync, mkdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { smokeScript } from "./lib/process.mjs";
import { buildBinaries, fakeModels, fixtureRepo, git, requirePi, sidecarCommands, startBrokerAndRunner, startFakeModel } from "./lib/stack.mjs";
import { api, events, waitFinished } from "./lib/tasks.mjs";

const { dir, step, fail, run } = smokeScript("smoke:dirty-sync", "embark-smoke-dirty-");

// Run by the runner's Pi in its workspace: "<exec bit> <sha256> <path>" for every file but .git's.
const LIST = `find . -path ./.git -prune -o -type f -print | LC_ALL=C sort | while read -r f; do x=0; [ -x "$f" ] && x=1; printf '%s %s %s\\n' "$x" "$(sha256sum < "$f" | cut -d' ' -f1)" "\${f#./}"; done\n`;

/** The same listing of the laptop's tree as git sees it: tracked and untracked-not-ignored files on disk, minus node_modules. */
function laptopListing(work) {
  const paths = git(work, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0").filter(Boolean);
  const rows = [];
  for (const path of [...new Set(paths)].sort()) {
    if (path.startsWith("node_modules/")) continue;
    let st;
    try {
      st = statSync(join(work, path));
    } catch {
      continue; // deleted in the working tree
    }
    const hash = createHash("sha256").update(readFileSync(join(work, path))).digest("hex");
    rows.push(`${st.mode & 0o100 ? 1 : 0} ${hash} ${path}`);
  }
  return rows.join("\n");
}

async function main() {
  requirePi();
  step("building binaries");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const work = repo.work;
  // Pushed: the files the dirty state changes, the lister, an ignore rule.
  writeFileSync(join(work, "keep.txt"), "kept\n");
  writeFileSync(join(work, "gone.txt"), "to be deleted\n");
  writeFileSync(join(work, "run.sh"), "#!/bin/sh\necho run\n");
  writeFileSync(join(work, "list.sh"), LIST);
  writeFileSync(join(work, ".gitignore"), "*.log\n");
  git(work, "add", ".");
  git(work, "commit", "-q", "-m", "base");
  git(work, "push", "-q", "origin", "main");
  // Committed, not pushed: travels as a bundle.
  writeFileSync(join(work, "unpushed.txt"), "only on the laptop\n");
  git(work, "add", "unpushed.txt");
  git(work, "commit", "-q", "-m", "unpushed");
  // Uncommitted: an edit with CRLF and binary bytes, a deletion, a mode change, untracked files; ignored ones.
  writeFileSync(join(work, "keep.txt"), Buffer.from([0x6b, 0x0d, 0x0a, 0x00, 0xff, 0xfe, 0x0a]));
  unlinkSync(join(work, "gone.txt"));
  chmodSync(join(work, "run.sh"), 0o755);
  mkdirSync(join(work, "new dir"), { recursive: true });
  writeFileSync(join(work, "new dir", "untracked file.txt"), "untracked\n");
  writeFileSync(join(work, "debug.log"), "ignored by .gitignore\n");
  mkdirSync(join(work, "node_modules", "pkg"), { recursive: true });
  writeFileSync(join(work, "node_modules", "pkg", "index.js"), "excluded by default\n");

  const model = await startFakeModel(dir, { turns: [{ tool_calls: [{ name: "bash", arguments: { command: "{{last_user_text}}" } }] }, { text: "listed" }] });
  const { broker, secrets } = await startBrokerAndRunner(dir, bin, { label: "dirty", profile: { "models.json": fakeModels(model.baseUrl) }, runnerName: "dirty-runner" });
  const env = { EMBARK_BROKER_URL: broker.url, EMBARK_CLIENT_SECRET: secrets.client, EMBARK_PROVIDER: "fake", EMBARK_MODEL: "fake-model", GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null" };
  const session = "dirty-sync";

  /** Submits `sh list.sh` from the laptop; answers the finished task, the runner's listing, its synced detail and the sidecar's fingerprint. */
  const handOff = async () => {
    const [answer] = await sidecarCommands(bin, dir, env, work, ['"sh list.sh"'], session);
    if (answer.error) fail(`submit: ${JSON.stringify(answer.error)}`);
    const text = answer.result.blocks.map((b) => b.text ?? "").join("\n");
    const sent = /Synced fingerprint (\S+):/.exec(text)?.[1] ?? fail(`no fingerprint in the answer: ${text}`);
    const [task] = (await api(broker.url, secrets.client, `/v1/tasks?session_id=${session}`)).tasks;
    const done = await waitFinished(broker, secrets, task.id);
    if (done.state !== "succeeded") fail(`the task ended ${done.state}: ${done.outcome?.reason}; see ${dir}/runner.log`);
    const log = await events(broker, secrets, task.id);
    const listed = log.find((e) => e.kind === "tool_end")?.payload.output?.trim() ?? fail(`no tool_end: ${JSON.stringify(log.map((e) => e.kind))}`);
    const synced = log.find((e) => e.kind === "lifecycle" && e.payload.phase === "synced")?.payload.detail ?? fail("no synced event");
    return { sent, listed, synced };
  };

  const first = await handOff();
  const expected = laptopListing(work);
  if (first.listed !== expected) fail(`the runner's workspace differs from the laptop's tree:\n--- runner\n${first.listed}\n--- laptop\n${expected}`);
  for (const absent of ["debug.log", "node_modules/", "gone.txt"]) if (first.listed.includes(absent)) fail(`${absent} reached the runner`);
  for (const present of ["1 ", "unpushed.txt", "new dir/untracked file.txt"]) if (!first.listed.includes(present)) fail(`${present} is missing on the runner`);
  if (!first.synced.startsWith(`fingerprint ${first.sent}`)) fail(`the runner verified another fingerprint: ${first.synced} (sent ${first.sent})`);
  if (!first.synced.includes("1 unpushed commit(s) from the bundle")) fail(`the unpushed commit did not come from the bundle: ${first.synced}`);
  step(`${expected.split("\n").length} files byte for byte (edit with CRLF and binary bytes, deletion, mode change, untracked, unpushed commit); ignored and node_modules left out; fingerprint ${first.sent} verified`);

  const again = await handOff();
  if (again.sent !== first.sent) fail(`an unchanged tree changed its fingerprint: ${first.sent} → ${again.sent}`);
  if (!again.synced.includes("overlay from the runner's cache")) fail(`the unchanged overlay was not reused: ${again.synced}`);
  step("resubmitted unchanged: the same fingerprint, the overlay from the runner's cache");

  writeFileSync(join(work, "new dir", "untracked file.txt"), "changed\n");
  const changed = await handOff();
  if (changed.sent === first.sent) fail("a changed file kept the fingerprint");
  if (changed.listed !== laptopListing(work)) fail(`after the change the runner's workspace differs:\n${changed.listed}`);
  step(`a changed file: fingerprint ${first.sent} → ${changed.sent}, the runner has the new bytes`);
}

run(main);
