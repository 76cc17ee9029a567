import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildManifest, type Manifest } from "./manifest.js";

/** Layout of an overlay run's review material inside its run directory. */
export function overlayPaths(runDir: string) {
  const root = join(runDir, "overlay");
  return {
    root,
    /** The copy the box wrote to. */
    workspace: join(root, "workspace"),
    /** Manifest of the copy as the run started. */
    baseline: join(root, "baseline.json"),
    /** Host workspace path and protect globs of the run. */
    review: join(root, "review.json"),
    /** Present once the changes were applied or discarded: what was done and when. */
    outcome: join(root, "outcome.json"),
  };
}

export interface OverlayReview {
  v: 1;
  /** Host workspace the copy was made from and the changes go back to. */
  workspace: string;
  protect: string[];
}

/**
 * Records the state of a fresh overlay copy, so diff and apply can tell the run's changes from
 * changes made on the host meanwhile. Call it right after the copy is made.
 */
export function recordOverlayBaseline(runDir: string, workspace: string, protect: readonly string[]): Manifest {
  const paths = overlayPaths(runDir);
  const baseline = buildManifest(paths.workspace);
  writeFileSync(paths.baseline, JSON.stringify(baseline), { mode: 0o600 });
  const review: OverlayReview = { v: 1, workspace, protect: [...protect] };
  writeFileSync(paths.review, `${JSON.stringify(review, null, 2)}\n`, { mode: 0o600 });
  return baseline;
}

export interface OverlayRecord {
  review: OverlayReview;
  baseline: Manifest;
  workspaceCopy: string;
  /** Outcome of the review so far, or null while the changes wait for it. */
  outcome: { action: "applied" | "discarded"; time: string } | null;
}

/** Reads an overlay run's review material; throws an error that names what is missing. */
export function readOverlayRecord(runDir: string, runId: string): OverlayRecord {
  const paths = overlayPaths(runDir);
  if (!existsSync(paths.review) || !existsSync(paths.baseline)) {
    throw new Error(`run ${runId} has no overlay changes to review: it did not run in overlay mode (start one with ringfence run --mode overlay)`);
  }
  const outcome = existsSync(paths.outcome) ? (JSON.parse(readFileSync(paths.outcome, "utf8")) as OverlayRecord["outcome"]) : null;
  if (outcome?.action === "discarded") throw new Error(`the changes of run ${runId} were discarded at ${outcome.time}`);
  return {
    review: JSON.parse(readFileSync(paths.review, "utf8")) as OverlayReview,
    baseline: JSON.parse(readFileSync(paths.baseline, "utf8")) as Manifest,
    workspaceCopy: paths.workspace,
    outcome,
  };
}

/** Marks the changes as applied or discarded; discarding also deletes the copy. */
export function recordOverlayOutcome(runDir: string, action: "applied" | "discarded", details: unknown = null): void {
  const paths = overlayPaths(runDir);
  if (action === "discarded") rmSync(paths.workspace, { recursive: true, force: true });
  writeFileSync(paths.outcome, `${JSON.stringify({ action, time: new Date().toISOString(), details }, null, 2)}\n`, { mode: 0o600 });
}
