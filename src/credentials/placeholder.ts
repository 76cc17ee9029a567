import { randomBytes } from "node:crypto";

/** Prefix every placeholder starts with, so people and leak checks can recognise one. */
export const PLACEHOLDER_PREFIX = "rfph_";

/** Random bytes in each placeholder: 128 bits, so one run cannot guess another run's placeholder. */
const RANDOM_BYTES = 16;

/**
 * Makes a fresh placeholder for one credential, such as `rfph_anthropic_3f2a…` (32 hex digits).
 * Credential names are limited by the policy schema to letters, digits, `_`, `.` and `-`, all of
 * which are unreserved in URLs, so a placeholder reads the same in headers, paths and queries.
 */
export function makePlaceholder(credentialName: string): string {
  return `${PLACEHOLDER_PREFIX}${credentialName}_${randomBytes(RANDOM_BYTES).toString("hex")}`;
}
