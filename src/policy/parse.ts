import { LineCounter, parseDocument } from "yaml";
import type { z } from "zod";
import { fieldName, SourceMap, type Diagnostic } from "./diagnostic.js";
import { PolicyFileSchema, type PolicyFile } from "./schema.js";

export type ParseResult =
  | { ok: true; policy: PolicyFile; source: SourceMap }
  | { ok: false; diagnostics: Diagnostic[] };

/** Largest policy file accepted; a policy is a page of YAML, not a data set. */
export const MAX_POLICY_BYTES = 1024 * 1024;

/** Parses and shape-checks one policy document. Semantic checks happen in validate.ts. */
export function parsePolicyText(text: string, file: string): ParseResult {
  const lines = new LineCounter();

  if (Buffer.byteLength(text) > MAX_POLICY_BYTES) {
    const source = new SourceMap(file, null, lines);
    return { ok: false, diagnostics: [source.diagnostic([], `policy file is larger than ${MAX_POLICY_BYTES} bytes`)] };
  }

  // uniqueKeys: a repeated key is an error, not "last one wins". No custom tags and no merge
  // keys, so the document means exactly what it reads as.
  const document = parseDocument(text, { lineCounter: lines, uniqueKeys: true, merge: false, prettyErrors: false, strict: true });
  const source = new SourceMap(file, document, lines);

  const yamlProblems = [...document.errors, ...document.warnings];
  if (yamlProblems.length > 0) {
    const diagnostics = yamlProblems.map((problem) => {
      const { line, col } = lines.linePos(problem.pos[0]);
      return { file, line, column: col, severity: "error" as const, message: `invalid YAML: ${firstLine(problem.message)}` };
    });
    return { ok: false, diagnostics };
  }

  let data: unknown;
  try {
    data = document.toJS({ maxAliasCount: 100 });
  } catch (cause) {
    // The yaml package refuses documents whose aliases expand too far (a "billion laughs" file).
    return { ok: false, diagnostics: [source.diagnostic([], `invalid YAML: ${firstLine((cause as Error).message)}`)] };
  }
  if (data === null || data === undefined) {
    return { ok: false, diagnostics: [source.diagnostic([], "policy file is empty; start with 'version: 1' (ringfence init writes a starter file)")] };
  }

  const result = PolicyFileSchema.safeParse(data);
  if (!result.success) {
    const diagnostics = result.error.issues.flatMap((issue) => issueDiagnostics(issue, data, source));
    return { ok: false, diagnostics };
  }
  return { ok: true, policy: result.data, source };
}

function firstLine(message: string): string {
  return message.split("\n")[0] ?? message;
}

function valueAt(data: unknown, path: readonly PropertyKey[]): unknown {
  let value = data;
  for (const part of path) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<PropertyKey, unknown>)[part];
  }
  return value;
}

function show(value: unknown): string {
  if (value === undefined) return "nothing";
  const text = JSON.stringify(value);
  if (text === undefined) return String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

// Turns one zod issue into messages that name the field, the bad value and the fix.
function issueDiagnostics(issue: z.core.$ZodIssue, data: unknown, source: SourceMap): Diagnostic[] {
  const path = issue.path;
  const field = fieldName(path);
  const value = valueAt(data, path);

  switch (issue.code) {
    case "unrecognized_keys":
      return issue.keys.map((key) => {
        const known = knownKeys(path);
        const hint = known.length > 0 ? `; known keys here: ${known.join(", ")}` : "";
        return source.diagnostic(path, `unknown key ${JSON.stringify(key)} in ${field}${hint}`, "error", key);
      });
    case "invalid_type":
      if (value === undefined) return [source.diagnostic(path, `${field} is required (expected ${issue.expected})`)];
      return [source.diagnostic(path, `${field} must be ${issue.expected}, not ${show(value)}`)];
    case "invalid_value":
      if (value === undefined) return [source.diagnostic(path, `${field} is required; allowed values: ${issue.values.map((v) => show(v)).join(", ")}`)];
      return [source.diagnostic(path, `${field} is ${show(value)}; allowed values: ${issue.values.map((v) => show(v)).join(", ")}`)];
    case "invalid_format":
      return [source.diagnostic(path, `${field} is ${show(value)}, which is not ${formatHint(field)}`)];
    case "too_small":
      return [source.diagnostic(path, `${field} is ${show(value)}; it must ${issue.origin === "array" ? "have at least" : "be at least"} ${String(issue.minimum)}${issue.origin === "array" ? " entries" : ""}`)];
    case "too_big":
      return [source.diagnostic(path, `${field} is ${show(value)}; it must be at most ${String(issue.maximum)}`)];
    case "invalid_union":
      return [source.diagnostic(path, `${field} is ${show(value)}, which is not ${unionHint(field)}`)];
    default:
      return [source.diagnostic(path, `${field}: ${issue.message} (value ${show(value)})`)];
  }
}

function formatHint(field: string): string {
  if (/memory|tmp_size/.test(field)) return "a size such as 512MiB or 2GiB";
  if (/timeout/.test(field)) return "a duration such as 90s, 30m or 1h30m";
  if (/methods/.test(field)) return "an upper-case HTTP method such as GET";
  if (/env|pass|placeholder_env|set/.test(field)) return "an environment variable name (letters, digits, underscore)";
  if (/header/.test(field)) return "a header name (letters, digits, hyphen)";
  if (/format/.test(field)) return "a format containing {secret}";
  if (/upstream_proxy/.test(field)) return "'none', 'env' or an http:// URL";
  return "in the expected format";
}

function unionHint(field: string): string {
  if (/source$/.test(field)) return "one of {env: NAME}, {file: PATH} or {command: [ARGV...]}";
  if (/inject$/.test(field)) return "one of {header: NAME, format: '... {secret}'} or {query: NAME}";
  if (/memory|tmp_size/.test(field)) return "a size: bytes as an integer, or a string such as 512MiB";
  if (/timeout/.test(field)) return "a duration: seconds as a number, or a string such as 30m";
  if (/upstream_proxy/.test(field)) return "'none', 'env' or an http:// URL";
  return "any of the accepted forms";
}

// Lists the keys the schema accepts at `path`, for "did you mean" help on unknown keys.
function knownKeys(path: readonly PropertyKey[]): string[] {
  let schema: z.ZodType = PolicyFileSchema;
  for (const part of path) {
    schema = unwrap(schema);
    const def = (schema as unknown as { def: { type: string; shape?: Record<string, z.ZodType>; element?: z.ZodType } }).def;
    if (def.type === "object" && typeof part === "string" && def.shape?.[part] !== undefined) schema = def.shape[part];
    else if (def.type === "array" && typeof part === "number" && def.element !== undefined) schema = def.element;
    else return [];
  }
  const def = (unwrap(schema) as unknown as { def: { type: string; shape?: Record<string, unknown> } }).def;
  return def.type === "object" && def.shape !== undefined ? Object.keys(def.shape) : [];
}

function unwrap(schema: z.ZodType): z.ZodType {
  let current = schema as unknown as { def: { type: string; innerType?: z.ZodType } };
  while (current.def.type === "optional" && current.def.innerType !== undefined) {
    current = current.def.innerType as unknown as { def: { type: string; innerType?: z.ZodType } };
  }
  return current as unknown as z.ZodType;
}
