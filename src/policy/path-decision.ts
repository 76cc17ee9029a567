import { relative, resolve } from "node:path";
import picomatch from "picomatch";
import { SECRET_STORES, SYSTEM_READ } from "./defaults.js";
import { expandHostPath } from "./normalise.js";
import type { Policy } from "./types.js";

/** The access a host path has inside the sandbox. */
export type PathAccess = "hidden" | "read" | "write";

export interface PathDecision {
  access: PathAccess;
  /** Clause that decided, in words: "filesystem.deny /x", "protected by .git/hooks/**", ... */
  reason: string;
}

function isWithin(path: string, parent: string): boolean {
  if (parent === "/") return true;
  return path === parent || path.startsWith(`${parent}/`);
}

/**
 * Compiles workspace protect globs into a function that returns the glob covering a
 * workspace-relative path, or null. A glob covers what it matches and everything below that.
 * Matching ignores case, for case-insensitive filesystems and tools (git on macOS treats
 * .GIT/hooks as .git/hooks).
 */
export function compileProtect(globs: readonly string[]): (relativePath: string) => string | null {
  const matchers = globs.map((glob) => {
    const exact = picomatch(glob, { dot: true, nocase: true });
    const inside = picomatch(`${glob}/**`, { dot: true, nocase: true });
    return (path: string) => exact(path) || inside(path);
  });
  return (relativePath) => {
    for (const [index, matches] of matchers.entries()) {
      if (matches(relativePath)) return globs[index] as string;
    }
    return null;
  };
}

/** Decides filesystem visibility for host paths under one policy. Build once per policy. */
export class PathRules {
  readonly #policy: Policy;
  readonly #secretStores: string[];
  // Compiled on first use, because picomatch compiles two patterns per glob and a run's mount
  // plan usually needs no protect glob at all.
  #protectedBy: ((relativePath: string) => string | null) | null = null;

  constructor(policy: Policy, home: string) {
    this.#policy = policy;
    this.#secretStores = SECRET_STORES.map((store) => expandHostPath(store, home) as string);
  }

  /** Returns the protect glob that covers a workspace-relative path, or null. */
  protectedBy(relativePath: string): string | null {
    this.#protectedBy ??= compileProtect(this.#policy.workspace.protect);
    return this.#protectedBy(relativePath);
  }

  /**
   * Decides one absolute host path. Deny always wins; secret stores stay hidden unless a read
   * entry names the store or a path inside it; otherwise the most specific of workspace, read
   * and write entries decides, then the system directories; everything else is hidden.
   */
  decide(rawPath: string): PathDecision {
    const path = resolve(rawPath);
    const { workspace, filesystem } = this.#policy;

    const denied = filesystem.deny.find((entry) => isWithin(path, entry));
    if (denied !== undefined) return { access: "hidden", reason: `filesystem.deny ${denied}` };

    const store = this.#secretStores.find((entry) => isWithin(path, entry));
    if (store !== undefined) {
      const named = filesystem.read.find((entry) => isWithin(entry, store) && isWithin(path, entry));
      if (named === undefined) return { access: "hidden", reason: `secret store ${store} (name it in filesystem.read to show it read-only)` };
      return { access: "read", reason: `filesystem.read ${named} (secret store, read-only)` };
    }

    let best: { length: number; decision: PathDecision } | null = null;
    const consider = (entry: string, decision: PathDecision) => {
      if (!isWithin(path, entry)) return;
      if (best === null || entry.length >= best.length) best = { length: entry.length, decision };
    };
    for (const entry of filesystem.read) consider(entry, { access: "read", reason: `filesystem.read ${entry}` });
    for (const entry of filesystem.write) consider(entry, { access: "write", reason: `filesystem.write ${entry}` });
    consider(workspace.path, this.#workspaceDecision(path));

    const chosen = best as { length: number; decision: PathDecision } | null;
    if (chosen !== null) return chosen.decision;

    const system = SYSTEM_READ.find((entry) => isWithin(path, entry));
    if (system !== undefined) return { access: "read", reason: `system directory ${system}` };
    return { access: "hidden", reason: "not named by the policy" };
  }

  #workspaceDecision(path: string): PathDecision {
    const { workspace } = this.#policy;
    if (workspace.mode === "ro") return { access: "read", reason: `workspace ${workspace.path} (mode ro)` };

    const relativePath = relative(workspace.path, path);
    if (relativePath !== "") {
      const glob = this.protectedBy(relativePath);
      if (glob !== null) return { access: "read", reason: `protected by workspace.protect ${glob}` };
    }
    const note = workspace.mode === "overlay" ? " (mode overlay: writes kept aside for review)" : " (mode rw)";
    return { access: "write", reason: `workspace ${workspace.path}${note}` };
  }
}
