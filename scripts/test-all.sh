#!/usr/bin/env bash
# Every test CI runs, in the order CI runs them (README: `npm test`).
# Needs cargo, node >= 20.18.1, git, bubblewrap (bwrap) and python3 on PATH, and schemathesis
# (.ci/run installs it into .venv-fuzz); installs the npm packages itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x node_modules/.bin/pi ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  step "npm ci"
  npm ci --no-audit --no-fund
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (the binaries the integration tests and smoke scripts start)"
cargo build --workspace --locked

if [ -z "${EMBARK_TEST_DATABASE_URL:-}" ]; then
  # The PostgreSQL cases are compiled as ignored and reported as skipped.
  printf '\nnote: EMBARK_TEST_DATABASE_URL is not set: the PostgreSQL tests are skipped (set it to e.g. postgres://postgres@127.0.0.1:5432/postgres to run them)\n'
fi

if cargo nextest --version >/dev/null 2>&1; then
  # Test binaries run in parallel, one process per test; doctests separately (nextest skips them).
  step "cargo nextest run"
  cargo nextest run --workspace --locked --no-fail-fast
  step "cargo test --doc"
  cargo test --workspace --locked --doc
else
  step "cargo test"
  cargo test --workspace --locked
fi

step "fuzz: the OpenAPI document against a live broker (schemathesis, bounded)"
python3 scripts/fuzz-api.py --max-examples 100

step "extension shim: generated types, typecheck, tests"
npm run check:types -w extension-shim
npm run typecheck -w extension-shim
EMBARK_REQUIRE_SIDECAR=1 npm test -w extension-shim

step "smoke: pi-rpc (real Pi, real binaries, scripted fake model)"
npm run smoke:pi-rpc

step "smoke: tui (the real Pi TUI in tmux: status on screen, the /embark tasks picker, the result once)"
npm run smoke:tui

step "smoke: runner-cancel (/embark cancel stops the runner's real Pi mid tool call; prints the latency)"
npm run smoke:runner-cancel

step "smoke: results (submit, wait, /embark diff, /embark apply through real Pi; the file lands in the laptop's tree)"
npm run smoke:results

step "smoke: runner-image-config (the pi-runner Dockerfile contract, static)"
npm run smoke:runner-image-config

step "smoke: task-bundle (per-task bundles, two at once, crash sweep; real Pi)"
npm run smoke:task-bundle

step "smoke: bwrap-isolation (real bubblewrap and Pi probe the sandbox)"
npm run smoke:bwrap-isolation

step "smoke: credential-leak (the credential proxy in bwrap with real Pi: no key in the sandbox, events, logs or broker; intent on the wire; usage; budget; redaction)"
npm run smoke:credential-leak

step "smoke: docker-isolation (docker run argv and container lifecycle, fake docker CLI)"
npm run smoke:docker-isolation

step "smoke: runner-config (profile.toml, approved roots, check, broken config refused before any task)"
npm run smoke:runner-config

step "smoke: execution-contract (capability routing, submit-time refusal, precedence, explicit is binding; real Pi)"
npm run smoke:execution-contract

step "smoke: execution-failures (malformed payloads, intents refused before Pi starts, no container; fake docker)"
npm run smoke:execution-failures

step "smoke: runner-safety (a repository git cannot read without a prompt is never claimed; real git over HTTP 401)"
npm run smoke:runner-safety

step "smoke: dirty-sync (edits, deletions, a mode change, untracked files and an unpushed commit reach the runner byte for byte)"
npm run smoke:dirty-sync
