#!/usr/bin/env python3
"""Fuzzes the broker's OpenAPI document against a live broker with schemathesis.

Starts the debug `embark-broker` (built by `cargo build --workspace`) on
127.0.0.1 with a fresh database, gives schemathesis a credential of every
kind (the client secret, the enrollment secret, a runner token, and the
callback token of a running task), and runs a bounded number of examples per
operation. It fails when the broker answers 5xx or anything the document
does not describe (status, content type, headers, body schema), or when it
accepts input the document rules out.

Usage: scripts/fuzz-api.py [--max-examples N] [--seed N]
schemathesis is found as $EMBARK_SCHEMATHESIS, then .venv-fuzz/bin/schemathesis
(what .ci/run installs), then on PATH.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMATHESIS_VERSION = "4.32.5"
CLIENT_SECRET = "fuzz-client-secret-0123456789"
ENROLLMENT_SECRET = "fuzz-enrollment-secret-0123456789"
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
]


def schemathesis() -> str:
    candidates = [os.environ.get("EMBARK_SCHEMATHESIS"), str(ROOT / ".venv-fuzz/bin/schemathesis"), shutil.which("schemathesis")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    sys.exit(
        f"fuzz-api: schemathesis is not installed: run `python3 -m venv .venv-fuzz && "
        f".venv-fuzz/bin/pip install schemathesis=={SCHEMATHESIS_VERSION}` (.ci/run does), "
        "or set EMBARK_SCHEMATHESIS to its path"
    )


def call(url: str, method: str, path: str, bearer: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("authorization", f"Bearer {bearer}")
    if data is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
        return json.loads(text) if text else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-examples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    tool = schemathesis()
    broker_bin = ROOT / "target/debug/embark-broker"
    if not broker_bin.is_file():
        sys.exit("fuzz-api: target/debug/embark-broker is not built: run `cargo build --workspace` first")

    with tempfile.TemporaryDirectory(prefix="embark-fuzz-") as tmp:
        tmp = Path(tmp)
        (tmp / "broker.toml").write_text("")
        env = {
            **os.environ,
            "EMBARK_CLIENT_SECRET": CLIENT_SECRET,
            "EMBARK_RUNNER_ENROLLMENT_SECRET": ENROLLMENT_SECRET,
            # Fuzzing sends thousands of requests per credential.
            "EMBARK_BROKER_RATE_LIMIT": "0",
            "EMBARK_LOG": "warn",
        }
        log = open(tmp / "broker.log", "w")
        broker = subprocess.Popen(
            [str(broker_bin), "--listen", "127.0.0.1:0", "--db", str(tmp / "broker.db"), "--config", str(tmp / "broker.toml")],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
        )
        try:
            line = broker.stdout.readline()
            url = "http://" + json.loads(line)["listening"]

            # A running task, so every credential kind has a real value.
            task = {
                "repo_url": "https://example.invalid/fuzz.git",
                "commit": "89abcdef0123456789abcdef0123456789abcdef",
                "prompt": "fuzz",
                "intent": {"auth_profile": "default", "provider": "fake", "model": "fake-model"},
                "session_id": "fuzz",
            }
            call(url, "POST", "/v1/tasks", CLIENT_SECRET, task)
            runner = call(url, "POST", "/v1/runners/enroll", ENROLLMENT_SECRET, {"name": "fuzz"})
            claim = call(url, "POST", "/v1/runners/claim", runner["runner_token"], {"wait_ms": 0})
            task_id = claim["task"]["id"]
            # Queued tasks, so fuzzed claims are answered at once instead of long-polling up to 30 s.
            for _ in range(300):
                call(url, "POST", "/v1/tasks", CLIENT_SECRET, task)

            config = tmp / "schemathesis.toml"
            config.write_text(
                "\n".join(
                    f'[auth.openapi.{scheme}]\nbearer = "{token}"\n'
                    for scheme, token in [
                        ("clientSecret", CLIENT_SECRET),
                        ("enrollmentSecret", ENROLLMENT_SECRET),
                        ("runnerToken", runner["runner_token"]),
                        ("callbackToken", claim["callback_token"]),
                    ]
                )
                # The running task's id where a random one could only be refused (the callback
                # token is that task's) or not found; broker_rules.rs breaks the id itself.
                + "".join(
                    f'\n[[operations]]\ninclude-operation-id = "{operation}"\nparameters = {{ "path.id" = "{task_id}" }}\n'
                    for operation in ["appendEvents", "completeTask", "getTask", "readEvents"]
                )
            )
            command = [
                tool,
                "--config-file",
                str(config),
                "run",
                str(ROOT / "schemas/v1/broker.openapi.json"),
                "--url",
                url,
                "--checks",
                ",".join(CHECKS),
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--phases",
                "examples,coverage,fuzzing",
                "--workers",
                "2",
                "--request-timeout",
                "40",
                "--suppress-health-check",
                "all",
            ]
            print("==> " + " ".join(command[1:]), flush=True)
            result = subprocess.run(command, cwd=tmp)
            if broker.poll() is not None:
                print(f"fuzz-api: the broker exited ({broker.returncode}) during the run", file=sys.stderr)
                result.returncode = result.returncode or 1
            if result.returncode != 0:
                print("fuzz-api: broker log:\n" + (tmp / "broker.log").read_text()[-20000:], file=sys.stderr)
            return result.returncode
        finally:
            broker.terminate()
            broker.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
