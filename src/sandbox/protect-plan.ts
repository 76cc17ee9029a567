import { join } from "node:path";
import picomatch from "picomatch";
import type { HostView } from "./host-view.js";

/**
 * The plan that keeps workspace.protect globs read-only in a writable workspace, as host paths
 * under the directory that is mounted at the workspace path.
 *
 * - `readOnly`: existing protected paths, bind-mounted read-only onto themselves. A mount point
 *   cannot be renamed, unlinked or replaced from inside (EBUSY), and link() across mounts fails
 *   (EXDEV), so no new hard link to a protected file can be made in the box.
 * - `placeholders`: protected directories (and files below the root) that do not exist yet. The
 *   run creates them empty before the box starts, mounts them read-only, and removes them
 *   afterwards if still empty, so a new `.git/hooks/pre-commit` cannot be written. Missing
 *   directories on the way to one (`.git` before `git init`) are created too, as kind `parent`:
 *   those stay writable and are pinned, so the box can fill them but not replace them.
 * - `pins`: directories between the workspace root and a protected path, bind-mounted onto
 *   themselves (still writable) so they cannot be renamed away: without that, `mv .git x` and a
 *   fresh `.git/hooks/` would sidestep the read-only mount.
 * - `problems`: cases the box cannot protect, which stop the run (fail closed).
 * - `redirects`: protected paths, or directories on the way to one, that are symlinks, and files
 *   where a directory is expected (a `.git` file names another git directory). Symlinks are
 *   problems before a run, and such files are mounted read-only. After a run, new redirects are moved out like other new protected
 *   paths, because `ln -s planted .git` or a `.git` file would give git hooks the box wrote.
 * - `uncovered`: globs whose new matches cannot be blocked in advance (a wildcard in a name, a
 *   missing file at the root). The run moves matches that appear during the run out of the
 *   workspace afterwards, and so it does with new names in another case (`.GIT/hooks`).
 */
export interface ProtectPlan {
  readOnly: string[];
  placeholders: { path: string; kind: "dir" | "file" | "parent" }[];
  pins: string[];
  problems: string[];
  redirects: string[];
  uncovered: string[];
}

/** Files inside protected directories checked for extra hard links, at most. */
export const MAX_PROTECTED_ENTRIES = 20_000;

const GLOB_CHARACTERS = /[*?[\]{}()!+@]/;

/**
 * Globs whose missing path gets no placeholder, because its mere presence changes what a tool
 * does: git reads any `.git/commondir` as a pointer to another git directory, and stops with
 * "failed to read .git/commondir" when it is empty. The run moves such a path out afterwards.
 */
const PRESENCE_CHANGES_BEHAVIOUR: ReadonlySet<string> = new Set([".git/commondir"]);

/** Whether `glob` names such a path, at the root or in a nested repository (`sub/.git/commondir`). */
function changesBehaviourWhenPresent(glob: string): boolean {
  const lower = glob.toLowerCase();
  return [...PRESENCE_CHANGES_BEHAVIOUR].some((path) => lower === path || lower.endsWith(`/${path}`));
}

/**
 * Plans protection for `globs` (workspace-relative, matched without regard to case) inside
 * `root`, the host directory mounted at the workspace path.
 */
export function planProtection(root: string, globs: readonly string[], view: HostView): ProtectPlan {
  const plan: ProtectPlan = { readOnly: [], placeholders: [], pins: [], problems: [], redirects: [], uncovered: [] };
  // Most globs start in the same few directories; list each once.
  const listings = new Map<string, string[]>();
  const cached: HostView = {
    facts: (path) => view.facts(path),
    readlink: (path) => view.readlink(path),
    list: (dir) => {
      let names = listings.get(dir);
      if (names === undefined) {
        names = view.list(dir);
        listings.set(dir, names);
      }
      return names;
    },
  };

  for (const glob of globs) {
    const segments = glob.split("/").filter((segment) => segment !== "" && segment !== ".");
    const wholeDirectory = segments[segments.length - 1] === "**";
    const named = wholeDirectory ? segments.slice(0, -1) : segments;
    if (named.length === 0) continue;

    walk(plan, cached, root, root, named, wholeDirectory, glob);
  }

  plan.readOnly = unique(plan.readOnly);
  plan.pins = unique(plan.pins).filter((pin) => !plan.readOnly.some((path) => isWithin(pin, path)));
  const { placeholders, droppedParents } = tidyPlaceholders(plan.placeholders);
  plan.placeholders = placeholders;
  const reserved = placeholders.filter((entry) => entry.kind !== "parent").map((entry) => entry.path);
  plan.pins = plan.pins.filter((pin) => !droppedParents.has(pin) && !reserved.some((path) => isWithin(pin, path)));
  plan.problems = unique(plan.problems);
  plan.redirects = unique(plan.redirects);
  plan.uncovered = unique(plan.uncovered);
  return plan;
}

/**
 * Removes duplicate placeholders and orders them parents first, so they can be created in this
 * order and removed in the reverse. A path that one glob reserves and another only passes
 * through stays reserved (read-only). A parent that contains nothing reserved (only a wildcard
 * glob below it) or lies inside a reserved directory is dropped, because it would protect
 * nothing.
 */
function tidyPlaceholders(all: ProtectPlan["placeholders"]): { placeholders: ProtectPlan["placeholders"]; droppedParents: Set<string> } {
  const reserved = all.filter((entry) => entry.kind !== "parent").map((entry) => entry.path);
  const droppedParents = new Set<string>();
  for (const entry of all) {
    if (entry.kind !== "parent") continue;
    const holdsReserved = reserved.some((path) => path.startsWith(`${entry.path}/`));
    const insideReserved = reserved.some((path) => isWithin(entry.path, path));
    if (!holdsReserved || insideReserved) droppedParents.add(entry.path);
  }
  const placeholders = all
    .filter((entry) => entry.kind !== "parent" || !droppedParents.has(entry.path))
    .filter((entry, index, list) => list.findIndex((other) => other.path === entry.path) === index)
    .sort((a, b) => depth(a.path) - depth(b.path));
  return { placeholders, droppedParents };
}

function walk(plan: ProtectPlan, view: HostView, root: string, dir: string, remaining: readonly string[], wholeDirectory: boolean, glob: string): void {
  const [segment, ...rest] = remaining as [string, ...string[]];
  const isLast = rest.length === 0;
  const entries = view.list(dir).filter(segmentMatcher(segment));

  if (entries.length === 0) {
    if (GLOB_CHARACTERS.test(segment)) {
      plan.uncovered.push(glob);
      return;
    }
    // Missing: reserve the name with an empty read-only mount point so the box cannot create
    // it. Git ignores empty directories and everything in `.git`, so these placeholders change
    // nothing it shows. A file at the workspace root gets none, because `git add -A` in the box
    // would commit an empty `.envrc`, and tools would read an empty `.mcp.json` as broken.
    // Those are checked after the run.
    const path = join(dir, segment);
    if (!isLast) {
      plan.placeholders.push({ path, kind: "parent" });
      plan.pins.push(path);
      walk(plan, view, root, path, rest, wholeDirectory, glob);
    } else if ((wholeDirectory || dir !== root) && !changesBehaviourWhenPresent(glob)) {
      plan.placeholders.push({ path, kind: wholeDirectory ? "dir" : "file" });
    } else {
      plan.uncovered.push(glob);
    }
    return;
  }
  if (GLOB_CHARACTERS.test(segment)) plan.uncovered.push(glob);

  for (const name of entries) {
    const path = join(dir, name);
    const facts = view.facts(path);

    if (facts.kind === "symlink") {
      plan.redirects.push(path);
      plan.problems.push(
        `protected path ${path} is a symlink to ${view.readlink(path) ?? "?"}; a symlink cannot be mounted read-only in place, so replace it with a copy of its target or remove it`,
      );
      continue;
    }
    if (isLast) {
      plan.readOnly.push(path);
      checkHardLinks(plan, view, path);
      continue;
    }
    if (facts.kind !== "dir") {
      // A file where a directory is expected, such as a worktree's `.git` file, stays read-only:
      // rewritten, it would point git at hooks the box planted.
      plan.redirects.push(path);
      plan.readOnly.push(path);
      continue;
    }
    plan.pins.push(path);
    walk(plan, view, root, path, rest, wholeDirectory, glob);
  }
}

/** Matches one path segment without regard to case; literal segments skip picomatch, which is slow to compile. */
function segmentMatcher(segment: string): (name: string) => boolean {
  if (!GLOB_CHARACTERS.test(segment)) {
    const lower = segment.toLowerCase();
    return (name) => name.toLowerCase() === lower;
  }
  const matches = picomatch(segment, { dot: true, nocase: true });
  return (name) => matches(name);
}

/** Reports protected files with more than one hard link, since the other name could change them. */
function checkHardLinks(plan: ProtectPlan, view: HostView, path: string): void {
  const pending = [path];
  let seen = 0;
  while (pending.length > 0 && seen < MAX_PROTECTED_ENTRIES) {
    const current = pending.pop() as string;
    const facts = view.facts(current);
    seen += 1;
    if (facts.kind === "file" && facts.links > 1) {
      plan.problems.push(`protected file ${current} has ${facts.links} hard links, so it could be changed through another name; replace it with a copy of itself (cp -p FILE FILE.new && mv FILE.new FILE) or delete the other links`);
    }
    if (facts.kind === "dir") for (const name of view.list(current)) pending.push(join(current, name));
  }
}

function isWithin(path: string, parent: string): boolean {
  return path === parent || path.startsWith(`${parent}/`);
}

function unique(values: readonly string[]): string[] {
  return [...new Set(values)].sort((a, b) => depth(a) - depth(b) || compareCodeUnits(a, b));
}

// The order only has to be stable. localeCompare would do, but its first call costs
// milliseconds of ICU collator set-up at the start of every run.
function compareCodeUnits(a: string, b: string): number {
  if (a === b) return 0;
  return a < b ? -1 : 1;
}

function depth(path: string): number {
  return path.split("/").length;
}
