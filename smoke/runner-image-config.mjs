#!/usr/bin/env node
// smoke:runner-image-config — the contract of docker/pi-runner/Dockerfile
// and its .dockerignore, checked statically (no Docker engine here): the
// base image and Pi pinned, Pi's version the one the runner is tested with
// (smoke/package.json) and the runner's default image tag, git and ripgrep
// installed, a non-root final USER, nothing secret copied, baked in or sent
// in the build context. The same checks run against broken variants first,
// so each one is known to bite.

import { readFileSync } from "node:fs";
import { join } from "node:path";

import { ROOT } from "./lib/stack.mjs";

const NAME = "smoke:runner-image-config";
const step = (msg) => process.stdout.write(`[${NAME}] ${msg}\n`);

const IGNORED = ["**/auth.json", "**/models.json", "**/env", "**/.env", "**/*.pem", "**/*.key", "**/id_rsa*", "**/profiles", "**/spaces", "**/.git", "**/node_modules", "**/target"];
const SECRET_NAME = /(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)/i;
const SECRET_FILE = /(auth\.json|models\.json|\.env|(^|\/)env$|\.pem|\.key|id_rsa|id_ed25519|profiles|\.ssh|\.pi)/;

/** Dockerfile instructions, continuation lines joined, comments dropped. */
function instructions(text) {
  const joined = text.replace(/\\\n/g, " ");
  return joined
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"))
    .map((l) => {
      const [op, ...rest] = l.split(/\s+/);
      return { op: op.toUpperCase(), args: rest.join(" ") };
    });
}

/** Every way `dockerfile` and `ignore` break the contract (empty: none). */
function problems({ dockerfile, ignore, piVersion, defaultImage }) {
  const found = [];
  const ins = instructions(dockerfile);
  const from = ins.filter((i) => i.op === "FROM");
  if (!from.length) found.push("no FROM");
  for (const f of from) if (!/:[0-9][^ ]*/.test(f.args) || /:latest\b/.test(f.args)) found.push(`base image not pinned: FROM ${f.args}`);
  const args = Object.fromEntries(ins.filter((i) => i.op === "ARG").map((i) => i.args.split("=")));
  const runs = ins.filter((i) => i.op === "RUN").map((i) => i.args.replace(/\$\{?PI_VERSION\}?/g, args.PI_VERSION ?? "$PI_VERSION"));
  const piInstall = runs.find((r) => r.includes("@mariozechner/pi-coding-agent"));
  const pinned = piInstall?.match(/@mariozechner\/pi-coding-agent@([0-9][0-9.]*)/)?.[1];
  if (!piInstall) found.push("Pi is not installed");
  else if (pinned !== piVersion) found.push(`Pi is not pinned to ${piVersion} (the tested version): ${piInstall}`);
  const image = defaultImage.split(":")[1];
  if (image !== piVersion) found.push(`the runner's default image ${defaultImage} does not carry Pi's version ${piVersion}`);
  if (!dockerfile.includes(`-t ${defaultImage}`)) found.push(`the build command in the Dockerfile does not tag ${defaultImage}`);
  for (const tool of ["git", "ripgrep"]) {
    if (!runs.some((r) => /apt-get install/.test(r) && new RegExp(`\\b${tool}\\b`).test(r))) found.push(`${tool} is not installed`);
  }
  const users = ins.filter((i) => i.op === "USER");
  const last = users.at(-1)?.args.split(":")[0];
  if (!last) found.push("no USER: the image would run as root");
  else if (last === "root" || last === "0") found.push(`the final USER is root (${users.at(-1).args})`);
  for (const i of ins.filter((i) => ["COPY", "ADD"].includes(i.op))) {
    if (SECRET_FILE.test(i.args) || /(^|\s)\.(\s|$)/.test(i.args)) found.push(`${i.op} ${i.args} may copy secrets into the image`);
  }
  for (const i of ins.filter((i) => ["ENV", "ARG"].includes(i.op))) {
    const names = i.args.split(/\s+/).map((kv) => kv.split("=")[0]);
    for (const name of names) if (SECRET_NAME.test(name)) found.push(`${i.op} ${name} bakes a secret into the image`);
  }
  const entries = ignore.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  if (!entries.includes("*")) found.push(".dockerignore does not start from ignoring everything (*)");
  const allowed = entries.filter((e) => e.startsWith("!"));
  if (allowed.some((e) => e !== "!Dockerfile")) found.push(`.dockerignore lets more than the Dockerfile in: ${allowed}`);
  for (const entry of IGNORED) if (!entries.includes(entry)) found.push(`.dockerignore lacks ${entry}`);
  return found;
}

function main() {
  const dockerfile = readFileSync(join(ROOT, "docker", "pi-runner", "Dockerfile"), "utf8");
  const ignore = readFileSync(join(ROOT, "docker", "pi-runner", ".dockerignore"), "utf8");
  const piVersion = JSON.parse(readFileSync(join(ROOT, "smoke", "package.json"), "utf8")).dependencies["@mariozechner/pi-coding-agent"];
  const config = readFileSync(join(ROOT, "runner", "src", "config.rs"), "utf8");
  const defaultImage = config.match(/DEFAULT_DOCKER_IMAGE: &str = "([^"]+)"/)?.[1];
  if (!defaultImage) throw new Error("runner/src/config.rs has no DEFAULT_DOCKER_IMAGE");
  const real = { dockerfile, ignore, piVersion, defaultImage };

  // Each check bites: a broken variant of the real files is caught.
  const variants = {
    "a root USER": { ...real, dockerfile: `${dockerfile}\nUSER root\n` },
    "no USER": { ...real, dockerfile: dockerfile.replace(/^USER .*$/m, "") },
    "an unpinned Pi": { ...real, dockerfile: dockerfile.replace(/pi-coding-agent@\$\{PI_VERSION\}/, "pi-coding-agent") },
    "another Pi": { ...real, dockerfile: dockerfile.replace(/PI_VERSION=\S+/, "PI_VERSION=0.1.0") },
    "an unpinned base": { ...real, dockerfile: dockerfile.replace(/^FROM .*$/m, "FROM node:latest") },
    "no ripgrep": { ...real, dockerfile: dockerfile.replace(/ripgrep/g, "") },
    "a copied profile": { ...real, dockerfile: `${dockerfile}\nCOPY profiles/default/auth.json /home/pi/\n` },
    "a copied context": { ...real, dockerfile: `${dockerfile}\nCOPY . /src\n` },
    "a baked key": { ...real, dockerfile: `${dockerfile}\nENV ANTHROPIC_API_KEY=sk-x\n` },
    "a leaky .dockerignore": { ...real, ignore: ignore.replace("**/auth.json\n", "") },
    "an open .dockerignore": { ...real, ignore: `${ignore}\n!profiles\n` },
  };
  for (const [what, variant] of Object.entries(variants)) {
    if (!problems(variant).length) throw new Error(`the checks miss ${what}`);
  }
  step(`${Object.keys(variants).length} broken variants caught`);

  const found = problems(real);
  if (found.length) throw new Error(`docker/pi-runner breaks the contract:\n- ${found.join("\n- ")}`);
  step(`Dockerfile: base pinned, Pi ${piVersion} pinned, git and ripgrep, final USER non-root, nothing secret copied or baked; .dockerignore keeps all but the Dockerfile out`);
}

try {
  main();
  process.stdout.write("smoke: 1 passed, 0 failed\n");
} catch (err) {
  process.stderr.write(`[${NAME}] FAILED: ${err.stack ?? err}\n`);
  process.exit(1);
}
