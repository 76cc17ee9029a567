import { reservedPaths } from "../sandbox/placeholder-record.js";
import { applyOverlay } from "../workspace/apply.js";
import { diffManifests } from "../workspace/changes.js";
import { buildManifest, ManifestError } from "../workspace/manifest.js";
import { overlayPaths, readOverlayRecord, recordOverlayOutcome, type OverlayRecord } from "../workspace/overlay-record.js";
import { renderDiff } from "../workspace/review.js";
import { existsSync } from "node:fs";
import { defaultRunsRoot, findRun, listRuns, type RunListing } from "../audit/run-record.js";
import { EXIT_FAILED, EXIT_OK, EXIT_USAGE } from "./policy.js";
import { printableLine } from "../text/printable.js";

interface ReviewTarget {
  run: RunListing;
  record: OverlayRecord;
}

function open(reference: string, root: string | undefined): ReviewTarget | null {
  try {
    // For review commands, `last` means the newest run that has overlay changes.
    const runsRoot = root ?? defaultRunsRoot();
    const newestOverlay = reference === "last" ? listRuns(runsRoot).find((candidate) => existsSync(overlayPaths(candidate.dir).review)) : undefined;
    const run = newestOverlay ?? findRun(runsRoot, reference);
    return { run, record: readOverlayRecord(run.dir, run.id) };
  } catch (cause) {
    process.stderr.write(`ringfence: ${(cause as Error).message}\n`);
    return null;
  }
}

/** `ringfence diff RUN`: the overlay run's changes as a unified diff against the host workspace. */
export function diffCommand(reference: string, options: { root?: string; stat?: boolean }): number {
  const target = open(reference, options.root);
  if (target === null) return EXIT_USAGE;
  let copy: ReturnType<typeof buildManifest>;
  try {
    copy = buildManifest(target.record.workspaceCopy);
  } catch (cause) {
    if (!(cause instanceof ManifestError)) throw cause;
    process.stderr.write(`ringfence: cannot review run ${target.run.id}: ${cause.message}\n`);
    return EXIT_FAILED;
  }
  const changes = diffManifests(target.record.baseline, copy);
  if (changes.length === 0) {
    process.stdout.write(`run ${target.run.id} changed nothing in ${target.record.review.workspace}\n`);
    return EXIT_OK;
  }
  if (options.stat === true) {
    for (const change of changes) process.stdout.write(`${change.kind.padEnd(8)} ${printableLine(change.path)}\n`);
    return EXIT_OK;
  }
  process.stdout.write(renderDiff(changes, target.record.review.workspace, target.record.workspaceCopy));
  return EXIT_OK;
}

/** `ringfence apply RUN`: writes the changes to the host workspace; exit 1 when any was not applied. */
export function applyCommand(reference: string, options: { root?: string; includeProtected?: string[]; dryRun?: boolean }): number {
  const target = open(reference, options.root);
  if (target === null) return EXIT_USAGE;
  let outcomes: ReturnType<typeof applyOverlay>;
  try {
    outcomes = applyOverlay({
      workspace: target.record.review.workspace,
      overlayRoot: target.record.workspaceCopy,
      baseline: target.record.baseline,
      protect: target.record.review.protect,
      includeProtected: options.includeProtected ?? [],
      reserved: reservedPaths(target.run.dir),
      dryRun: options.dryRun === true,
    });
  } catch (cause) {
    // applyOverlay records the whole copy before it writes anything, so nothing was applied.
    if (!(cause instanceof ManifestError)) throw cause;
    process.stderr.write(`ringfence: cannot apply run ${target.run.id}, so nothing was applied: ${cause.message}\n`);
    return EXIT_FAILED;
  }

  for (const outcome of outcomes) {
    const verb = options.dryRun === true && outcome.result === "applied" ? "would apply" : outcome.result;
    process.stdout.write(`${verb.padEnd(15)} ${outcome.kind.padEnd(8)} ${printableLine(outcome.path)}${outcome.reason === null ? "" : `: ${printableLine(outcome.reason)}`}\n`);
  }
  const left = outcomes.filter((outcome) => outcome.result !== "applied" && outcome.result !== "already-applied");
  if (options.dryRun !== true) recordOverlayOutcome(target.run.dir, "applied", outcomes);
  process.stdout.write(`${outcomes.length - left.length} of ${outcomes.length} changes ${options.dryRun === true ? "would be " : ""}applied to ${target.record.review.workspace}${left.length > 0 ? `; ${left.length} not applied (see above)` : ""}\n`);
  return left.length === 0 ? EXIT_OK : EXIT_FAILED;
}

/** `ringfence discard RUN`: drops the overlay run's changes. */
export function discardCommand(reference: string, options: { root?: string }): number {
  const target = open(reference, options.root);
  if (target === null) return EXIT_USAGE;
  recordOverlayOutcome(target.run.dir, "discarded");
  process.stdout.write(`discarded the changes of run ${target.run.id}\n`);
  return EXIT_OK;
}
