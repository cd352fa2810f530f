#!/usr/bin/env node
// Generates src/protocol.gen.ts: the types from schemas/v1/sidecar-protocol.json,
// then the method names, the protocol versions and the error codes (each
// method's list included) from schemas/v1/sidecar.openrpc.json. Both are
// generated from core/src/protocol.rs, so a method, version or error changed
// there changes this file (the --check fails) and, where the shim uses it,
// its compilation.
//
//   node scripts/gen-types.mjs          write the file
//   node scripts/gen-types.mjs --check  regenerate in memory; exit 1 if the committed file differs

import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { compile } from "json-schema-to-typescript";

const here = dirname(fileURLToPath(import.meta.url));
const pkgDir = join(here, "..");
const repoRoot = join(pkgDir, "..");
const schemaPath = join(repoRoot, "schemas", "v1", "sidecar-protocol.json");
const openrpcPath = join(repoRoot, "schemas", "v1", "sidecar.openrpc.json");
const outPath = join(pkgDir, "src", "protocol.gen.ts");

const BANNER = `// generated — do not edit; npm run gen:types
// Source: schemas/v1/sidecar-protocol.json and sidecar.openrpc.json (generated from core/src/protocol.rs).
/* eslint-disable */`;

/** Schemas with no type information accept any JSON value: say `unknown`, not an open object. */
function markUntyped(node) {
  if (Array.isArray(node)) {
    node.forEach(markUntyped);
    return;
  }
  if (node === null || typeof node !== "object") return;
  const typed = ["type", "$ref", "oneOf", "anyOf", "allOf", "enum", "const", "properties", "items", "tsType"];
  for (const [key, value] of Object.entries(node)) {
    if (key === "properties" || key === "$defs" || key === "x-roots") {
      for (const child of Object.values(value)) {
        if (child && typeof child === "object" && !typed.some((k) => k in child)) child.tsType = "unknown";
        markUntyped(child);
      }
    } else {
      markUntyped(value);
    }
  }
}

async function generate() {
  const schema = JSON.parse(readFileSync(schemaPath, "utf8"));
  const roots = schema["x-roots"];
  if (roots === null || typeof roots !== "object" || Object.keys(roots).length === 0) {
    throw new Error(`${schemaPath} has no "x-roots": cannot tell which types are the protocol's`);
  }
  markUntyped(schema);
  // The root itself has no shape; make it the union of the root types so the
  // generated file has no meaningless open interface.
  const root = {
    $defs: schema.$defs,
    title: schema.title,
    description: schema.description,
    anyOf: Object.values(roots),
  };
  const body = await compile(root, schema.title, {
    bannerComment: BANNER,
    unreachableDefinitions: true,
    additionalProperties: false,
    strictIndexSignatures: true,
    cwd: dirname(schemaPath),
    format: true,
    style: { printWidth: 100 },
  });
  const types = body.endsWith("\n") ? body : `${body}\n`;
  return `${types}\n${constants(JSON.parse(readFileSync(openrpcPath, "utf8")))}`;
}

/** `value`, or throws saying what in the OpenRPC document is not as expected. */
function need(ok, value, what) {
  if (!ok) throw new Error(`${openrpcPath}: ${what}, got ${JSON.stringify(value)}`);
  return value;
}

const protocolVersion = (text) => need(/^[1-9][0-9]*$/.test(String(text)), Number(text), "a protocol version is a positive integer");

/** The name a `#/components/<kind>/<name>` reference points at. */
function refName(ref, kind) {
  const prefix = `#/components/${kind}/`;
  return need(typeof ref === "string" && ref.startsWith(prefix), String(ref).slice(prefix.length), `a $ref into ${prefix}`);
}

/** The constants of the OpenRPC document, as TypeScript. */
function constants(doc) {
  const version = protocolVersion(doc.info?.version);
  const supported = need(Array.isArray(doc.info?.["x-supported-protocols"]), doc.info?.["x-supported-protocols"], "info.x-supported-protocols is an array").map(protocolVersion);
  const errors = Object.entries(need(doc.components?.errors !== undefined, doc.components?.errors ?? {}, "components.errors"));
  const methods = need(Array.isArray(doc.methods) && doc.methods.length > 0, doc.methods, "methods is a non-empty array").map((m) => {
    const name = need(typeof m.name === "string" && /^[a-z]+\.[a-z_]+$/.test(m.name), m.name, "a method name is <namespace>.<word>");
    return {
      name,
      key: name.slice(name.indexOf(".") + 1),
      summary: String(m.summary ?? ""),
      params: refName(m["x-params"]?.$ref, "schemas"),
      result: refName(m.result?.schema?.$ref, "schemas"),
      errors: need(Array.isArray(m.errors), m.errors, `${name}.errors is an array`).map((e) => refName(e.$ref, "errors")),
      notification:
        m["x-notification"] === undefined
          ? undefined
          : {
              name: need(typeof m["x-notification"].name === "string", m["x-notification"].name, `${name}.x-notification.name is a string`),
              item: refName(m["x-notification"].schema?.$ref, "schemas"),
            },
    };
  });
  // The document lists every error under components.errors; the ones no method lists are about the line itself.
  const lineErrors = errors.map(([name]) => name).filter((name) => !methods.some((m) => m.errors.includes(name)));
  const q = (text) => JSON.stringify(text);
  const lines = [
    "// From schemas/v1/sidecar.openrpc.json.",
    "",
    "/** The protocol version these types describe: the one this shim asks for in `embark.hello`. */",
    `export const PROTOCOL_VERSION = ${version};`,
    "/** Every protocol version a sidecar built from the same commit speaks. */",
    `export const SUPPORTED_PROTOCOLS: readonly number[] = [${supported.join(", ")}];`,
    "",
    "/** The method names. */",
    "export const METHOD = {",
    ...methods.map((m) => `  /** ${m.summary} */\n  ${m.key}: ${q(m.name)},`),
    "} as const;",
    "export type MethodName = (typeof METHOD)[keyof typeof METHOD];",
    "",
    "/** The notifications of each subscription, by the subscribing method's key. */",
    "export const NOTIFICATION = {",
    ...methods
      .filter((m) => m.notification !== undefined)
      .map((m) => `  /** What ${m.name} sends, each a {@link ${m.notification.item}}. */\n  ${m.key}: ${q(m.notification.name)},`),
    "} as const;",
    "",
    "/** What each method takes and answers. */",
    "export interface MethodTypes {",
    ...methods.map((m) => `  ${q(m.name)}: { params: ${m.params}; result: ${m.result} };`),
    "}",
    "",
    "/** Each error's `error.code`, by its name (`error.data.kind`). */",
    "export const ERROR_CODES = {",
    ...errors.map(([name, e]) => `  ${name}: ${need(Number.isInteger(e.code), e.code, `components.errors.${name}.code is an integer`)},`),
    "} as const satisfies Record<ErrorCode, number>;",
    "",
    "/** The errors about a line itself (not JSON, not a request, no such method): any line can get them. */",
    `export const LINE_ERRORS = [${lineErrors.map(q).join(", ")}] as const satisfies readonly ErrorCode[];`,
    "",
    "/** The errors each method can answer with, besides the {@link LINE_ERRORS}. */",
    "export const METHOD_ERRORS = {",
    ...methods.flatMap((m) => [`  ${q(m.name)}: [`, ...m.errors.map((e) => `    ${q(e)},`), "  ],"]),
    "} as const satisfies Record<MethodName, readonly ErrorCode[]>;",
  ];
  return `${lines.join("\n")}\n`;
}

const check = process.argv.includes("--check");
const generated = await generate();
const rel = relative(process.cwd(), outPath) || outPath;
if (check) {
  let committed = "";
  try {
    committed = readFileSync(outPath, "utf8");
  } catch {
    committed = "";
  }
  if (committed !== generated) {
    const a = committed.split("\n");
    const b = generated.split("\n");
    let i = 0;
    while (i < a.length && i < b.length && a[i] === b[i]) i++;
    console.error(
      `${rel} is out of date with schemas/v1/sidecar-protocol.json and sidecar.openrpc.json (first difference at line ${i + 1}:\n` +
        `  committed: ${JSON.stringify(a[i] ?? "<end of file>")}\n` +
        `  generated: ${JSON.stringify(b[i] ?? "<end of file>")}).\n` +
        "Run `npm run gen:types -w extension-shim` and commit the result.",
    );
    process.exit(1);
  }
  console.log(`${rel} matches schemas/v1/sidecar-protocol.json and sidecar.openrpc.json`);
} else {
  writeFileSync(outPath, generated);
  console.log(`wrote ${rel}`);
}
