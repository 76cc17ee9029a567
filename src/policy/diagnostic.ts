import { isMap, isScalar, LineCounter, type Document, type Node } from "yaml";

/** One problem found in a policy file, with a position a reader can jump to. */
export interface Diagnostic {
  file: string;
  line: number;
  column: number;
  severity: "error" | "warning";
  message: string;
}

/** Formats a diagnostic as `FILE:LINE:COLUMN: severity: message`, the form editors recognise. */
export function formatDiagnostic(diagnostic: Diagnostic): string {
  return `${diagnostic.file}:${diagnostic.line}:${diagnostic.column}: ${diagnostic.severity}: ${diagnostic.message}`;
}

/** Thrown by loadPolicy when a policy has errors; carries every diagnostic, warnings included. */
export class PolicyError extends Error {
  readonly diagnostics: readonly Diagnostic[];

  constructor(diagnostics: readonly Diagnostic[]) {
    const errors = diagnostics.filter((d) => d.severity === "error");
    super(`invalid policy:\n${errors.map(formatDiagnostic).join("\n")}`);
    this.name = "PolicyError";
    this.diagnostics = diagnostics;
  }
}

/** Maps paths inside one parsed YAML document to line and column positions. */
export class SourceMap {
  readonly file: string;
  readonly #document: Document | null;
  readonly #lines: LineCounter;

  constructor(file: string, document: Document | null, lines: LineCounter) {
    this.file = file;
    this.#document = document;
    this.#lines = lines;
  }

  /** Position of the value at `path`, or of its closest existing parent; 1:1 when nothing exists. */
  position(path: readonly PropertyKey[], key?: string): { line: number; column: number } {
    const node = this.#nodeAt(path, key);
    const offset = node?.range?.[0] ?? 0;
    const { line, col } = this.#lines.linePos(offset);
    // Without a parsed document the line counter knows no lines; point at the file's start.
    return { line: Math.max(1, line), column: Math.max(1, col) };
  }

  /** Builds a diagnostic positioned at `path` (and, for unknown keys, at the key itself). */
  diagnostic(path: readonly PropertyKey[], message: string, severity: Diagnostic["severity"] = "error", key?: string): Diagnostic {
    const { line, column } = this.position(path, key);
    return { file: this.file, line, column, severity, message };
  }

  #nodeAt(path: readonly PropertyKey[], key: string | undefined): Node | null {
    if (this.#document === null) return null;

    for (let depth = path.length; depth >= 0; depth--) {
      const prefix = path.slice(0, depth).map((part) => (typeof part === "symbol" ? String(part) : part));
      const node = (prefix.length === 0 ? this.#document.contents : this.#document.getIn(prefix, true)) as Node | null | undefined;
      if (node === undefined || node === null) continue;

      if (key !== undefined && depth === path.length && isMap(node)) {
        const pair = node.items.find((item) => isScalar(item.key) && item.key.value === key);
        if (pair !== undefined && isScalar(pair.key)) return pair.key;
      }
      return node;
    }
    return null;
  }
}

/** Names a field path for messages: `network.rules[2].host`. */
export function fieldName(path: readonly PropertyKey[]): string {
  let name = "";
  for (const part of path) {
    if (typeof part === "number") name += `[${part}]`;
    else name += name === "" ? String(part) : `.${String(part)}`;
  }
  return name === "" ? "(top level)" : name;
}
