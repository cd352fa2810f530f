#!/usr/bin/env node
// Generates src/protocol.gen.ts from schemas/v1/sidecar-protocol.json.
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
const outPath = join(pkgDir, "src", "protocol.gen.ts");

const BANNER = `// generated — do not edit; npm run gen:types
// Source: schemas/v1/sidecar-protocol.json (itself generated from core/src/protocol.rs).
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
  return body.endsWith("\n") ? body : `${body}\n`;
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
      `${rel} is out of date with schemas/v1/sidecar-protocol.json (first difference at line ${i + 1}:\n` +
        `  committed: ${JSON.stringify(a[i] ?? "<end of file>")}\n` +
        `  generated: ${JSON.stringify(b[i] ?? "<end of file>")}).\n` +
        "Run `npm run gen:types -w extension-shim` and commit the result.",
    );
    process.exit(1);
  }
  console.log(`${rel} matches schemas/v1/sidecar-protocol.json`);
} else {
  writeFileSync(outPath, generated);
  console.log(`wrote ${rel}`);
}
