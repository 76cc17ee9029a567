import { posix } from "node:path";
import { PathRules } from "../policy/path-decision.js";
import type { Policy } from "../policy/types.js";

/** PathRules' reason for a path that no policy entry names. */
const UNNAMED_REASON = "not named by the policy";

/** Kind of access a file operation needs. */
export type FileAccess = "read" | "write";

export type FileAccessDecision = { allowed: true; path: string } | { allowed: false; path: string; reason: string };

/**
 * Decides whether the SDK may read or write a path in the box, by the rules the box's mounts
 * enforce: protected workspace paths and read-only entries take no writes, hidden paths take
 * nothing. /tmp and the home directory are the box's own empty directories, so both are open.
 * The mounts still enforce the same rules when the agent performs the operation; this check
 * exists to reject early with the rule's name.
 */
export class FileAccessRules {
  readonly #rules: PathRules;
  readonly #privateDirs: readonly string[];
  readonly #cwd: string;

  constructor(policy: Policy, home: string, cwd: string) {
    this.#rules = new PathRules(policy, home);
    this.#privateDirs = ["/tmp", home];
    this.#cwd = cwd;
  }

  /** Resolves `path` against the box's working directory and decides one access. */
  decide(path: string, access: FileAccess): FileAccessDecision {
    if (path === "" || path.includes("\0")) return { allowed: false, path, reason: "the path is empty or contains a NUL byte" };
    const absolute = posix.resolve(this.#cwd, path);

    // Policy entries come first: a workspace under /tmp keeps its protected paths. Only a path
    // no entry names falls to the box's own /tmp and home.
    const decision = this.#rules.decide(absolute);
    const inPrivateDir = this.#privateDirs.some((dir) => absolute === dir || absolute.startsWith(`${dir}/`));
    if (decision.access === "hidden" && decision.reason === UNNAMED_REASON && inPrivateDir) return { allowed: true, path: absolute };
    if (decision.access === "hidden") return { allowed: false, path: absolute, reason: `${absolute} is not visible in the box (${decision.reason})` };
    if (access === "write" && decision.access !== "write") return { allowed: false, path: absolute, reason: `${absolute} is read-only in the box (${decision.reason})` };
    return { allowed: true, path: absolute };
  }
}
