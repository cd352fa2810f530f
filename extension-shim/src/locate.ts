// Finding the embark-sidecar binary and this package's own metadata.

import { accessSync, constants, readFileSync, statSync } from "node:fs";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const SIDECAR_NAME = "embark-sidecar";
export const SIDECAR_ENV = "EMBARK_SIDECAR_PATH";

/** No usable sidecar binary; the message says how to get one. */
export class SidecarNotFoundError extends Error {
  readonly searched: string[];
  constructor(message: string, searched: string[]) {
    super(message);
    this.name = "SidecarNotFoundError";
    this.searched = searched;
  }
}

export interface Located {
  path: string;
  /** Where it came from, for messages: "EMBARK_SIDECAR_PATH", "workspace" or "PATH". */
  source: "env" | "workspace" | "path";
}

export interface LocateOptions {
  env?: NodeJS.ProcessEnv;
  /** The embark checkout this package sits in (its parent directory). */
  workspaceRoot?: string;
  platform?: NodeJS.Platform;
}

/**
 * Order: `$EMBARK_SIDECAR_PATH` (must exist when set: a typo should not
 * silently pick another binary), then the newer of the workspace's
 * `target/release` and `target/debug` builds, then `embark-sidecar` on PATH.
 */
export function locateSidecar(options: LocateOptions = {}): Located {
  const env = options.env ?? process.env;
  const workspaceRoot = options.workspaceRoot ?? defaultWorkspaceRoot();
  const exe = (options.platform ?? process.platform) === "win32" ? `${SIDECAR_NAME}.exe` : SIDECAR_NAME;

  const fromEnv = env[SIDECAR_ENV];
  if (fromEnv !== undefined && fromEnv !== "") {
    const path = resolve(fromEnv);
    if (isExecutableFile(path)) return { path, source: "env" };
    throw new SidecarNotFoundError(
      `${SIDECAR_ENV} is set to ${JSON.stringify(fromEnv)}, but that is not an executable file. ` +
        `Point it at a built ${SIDECAR_NAME}, or unset it to use the workspace build. ${buildHint(workspaceRoot)}`,
      [path],
    );
  }

  // The newer of the two workspace builds: a stale release build must not
  // shadow the debug build a developer just made (or the reverse).
  const searched = ["release", "debug"].map((profile) => join(workspaceRoot, "target", profile, exe));
  const built = searched
    .filter(isExecutableFile)
    .map((path) => ({ path, mtime: statSync(path).mtimeMs }))
    .sort((a, b) => b.mtime - a.mtime);
  if (built[0]) return { path: built[0].path, source: "workspace" };
  for (const dir of (env.PATH ?? "").split(delimiter)) {
    if (dir === "") continue;
    const path = join(dir, exe);
    if (isExecutableFile(path)) return { path, source: "path" };
  }
  searched.push(`${exe} on PATH`);
  throw new SidecarNotFoundError(
    `embark: the ${SIDECAR_NAME} binary was not found (looked in ${searched.join(", ")}). ${buildHint(workspaceRoot)}`,
    searched,
  );
}

export function buildHint(workspaceRoot: string): string {
  return (
    `Build it with \`cargo build --release -p ${SIDECAR_NAME}\` (run in ${workspaceRoot}), ` +
    `or set ${SIDECAR_ENV} to the path of an ${SIDECAR_NAME} binary.`
  );
}

function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The directory of the nearest package.json above this module: the package
 * root both when loaded from `src/` by Pi and when compiled for tests.
 */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      if (statSync(join(dir, "package.json")).isFile()) return dir;
    } catch {
      // keep walking up
    }
    const parent = dirname(dir);
    if (parent === dir) return dirname(fileURLToPath(import.meta.url));
    dir = parent;
  }
}

/** The embark checkout: `extension-shim/..`. */
export function defaultWorkspaceRoot(): string {
  return dirname(packageRoot());
}

/** This package's name and version, for the hello handshake. */
export function packageInfo(): { name: string; version: string } {
  try {
    const pkg = JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as {
      name?: unknown;
      version?: unknown;
    };
    return {
      name: typeof pkg.name === "string" ? pkg.name : "pi-embark",
      version: typeof pkg.version === "string" ? pkg.version : "unknown",
    };
  } catch {
    return { name: "pi-embark", version: "unknown" };
  }
}
