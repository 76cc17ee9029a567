import { LineCounter, parseDocument } from "yaml";
import { z } from "zod";
import { SourceMap, type Diagnostic } from "./diagnostic.js";
import { canonicalHost } from "./host.js";
import { canonicalPath, NetworkRules } from "./network-decision.js";
import { expandHostPath } from "./normalise.js";
import { PathRules } from "./path-decision.js";
import type { Policy } from "./types.js";

// A policy test file: expected decisions that a team keeps in CI next to its policy.
const CasesSchema = z.strictObject({
  network: z
    .array(
      z.strictObject({
        host: z.string().min(1),
        port: z.number().int().min(1).max(65535).optional(),
        method: z.string().regex(/^[A-Z]+$/).optional(),
        path: z.string().min(1).optional(),
        expect: z.enum(["allow", "deny"]),
      }),
    )
    .optional(),
  filesystem: z
    .array(
      z.strictObject({
        path: z.string().min(1),
        expect: z.enum(["hidden", "visible", "readonly", "writable"]),
      }),
    )
    .optional(),
});

const CASE_ACCESS = { hidden: "hidden", read: "readonly", write: "writable" } as const;

export interface CaseResult {
  line: number;
  passed: boolean;
  description: string;
  expected: string;
  actual: string;
  why: string;
}

export type CasesOutcome = { ok: true; results: CaseResult[] } | { ok: false; diagnostics: Diagnostic[] };

/** Evaluates a policy test file against a policy; returns every case's result, or file errors. */
export function runPolicyCases(policy: Policy, text: string, file: string, home: string): CasesOutcome {
  const lines = new LineCounter();
  const document = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
  const source = new SourceMap(file, document, lines);
  if (document.errors.length > 0) {
    return { ok: false, diagnostics: document.errors.map((problem) => source.diagnostic([], `invalid YAML: ${problem.message.split("\n")[0]}`)) };
  }

  const parsed = CasesSchema.safeParse(document.toJS() ?? {});
  if (!parsed.success) {
    const diagnostics = parsed.error.issues.map((issue) => {
      const key = issue.code === "unrecognized_keys" ? issue.keys[0] : undefined;
      return source.diagnostic(issue.path, `${issue.path.join(".") || "(top level)"}: ${issue.message}`, "error", key);
    });
    return { ok: false, diagnostics };
  }

  const results: CaseResult[] = [];
  const network = new NetworkRules(policy);
  for (const [index, row] of (parsed.data.network ?? []).entries()) {
    const line = source.position(["network", index]).line;
    const port = row.port ?? 443;
    const description = `${row.method ?? "connect"} ${row.host}:${port}${row.path ?? ""}`;
    const host = canonicalHost(row.host);
    const path = row.path === undefined ? undefined : canonicalPath(row.path);

    let actual: "allow" | "deny";
    let why: string;
    if (!host.ok) {
      actual = "deny";
      why = host.reason;
    } else if (path === null) {
      actual = "deny";
      why = `path ${JSON.stringify(row.path)} is not a valid origin-form path`;
    } else {
      const decision = network.decide({ host: host.host, port, method: row.method, path });
      actual = decision.action;
      why = decision.action === "allow" ? `allowed by ${decision.rule.label}${decision.inspect ? "; each request is checked against method and path rules" : ""}` : decision.reason;
    }
    results.push({ line, passed: actual === row.expect, description, expected: row.expect, actual, why });
  }

  const paths = new PathRules(policy, home);
  for (const [index, row] of (parsed.data.filesystem ?? []).entries()) {
    const line = source.position(["filesystem", index]).line;
    const absolute = expandHostPath(row.path, home) ?? row.path;
    const decision = paths.decide(absolute);
    const actual = CASE_ACCESS[decision.access];
    const passed = row.expect === "visible" ? actual !== "hidden" : actual === row.expect;
    results.push({ line, passed, description: `path ${absolute}`, expected: row.expect, actual, why: decision.reason });
  }
  return { ok: true, results };
}
