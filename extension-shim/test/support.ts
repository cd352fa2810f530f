// Shared test helpers: where things are, and the real sidecar binary.

import { accessSync, constants, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import type { TestContext } from "node:test";
import { buildHint, packageRoot } from "../src/locate.ts";

export const shimDir = packageRoot();
export const workspaceRoot = dirname(shimDir);
export const piBin = join(workspaceRoot, "node_modules", ".bin", "pi");

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/**
 * The real embark-sidecar to test against: $EMBARK_SIDECAR_PATH, else the
 * debug build (what `cargo build -p embark-sidecar` makes), else release.
 */
export function sidecarBinary(): string | undefined {
  const fromEnv = process.env.EMBARK_SIDECAR_PATH;
  if (fromEnv !== undefined && fromEnv !== "") return executable(resolve(fromEnv)) ? resolve(fromEnv) : undefined;
  for (const profile of ["debug", "release"]) {
    const path = join(workspaceRoot, "target", profile, "embark-sidecar");
    if (executable(path)) return path;
  }
  return undefined;
}

/**
 * The sidecar path, or skips the test when it is not built. With
 * EMBARK_REQUIRE_SIDECAR=1 (CI) a missing binary fails instead.
 */
export function requireSidecar(t: TestContext): string | undefined {
  const path = sidecarBinary();
  if (path !== undefined) return path;
  const why = `embark-sidecar is not built. ${buildHint(workspaceRoot)}`;
  if (process.env.EMBARK_REQUIRE_SIDECAR === "1") throw new Error(why);
  t.skip(why);
  return undefined;
}

/** Resolves with `promise`, or rejects after `ms` saying what did not happen. */
export async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
