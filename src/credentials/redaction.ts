// Redaction of the text the gateway emits (event fields): each placeholder and secret of a run,
// in the forms the leak check looks for, becomes a label that names the credential, so audit
// records and logs never hold a placeholder or a secret.
import type { RunCredential } from "./credential-set.js";
import { base64Fragments, percentDecoded, percentEncoded } from "./encodings.js";

/** One text to remove and the label written in its place. */
export interface Redaction {
  pattern: string;
  label: string;
}

/**
 * Builds the redactions for a run's credentials: the placeholder, the secret, the
 * percent-encoded secret, and the base64 and base64url fragments of both. Longer patterns come
 * first, so a whole placeholder is replaced before any fragment of it could match.
 */
export function redactionsOf(credentials: readonly RunCredential[]): Redaction[] {
  const redactions: Redaction[] = [];
  for (const entry of credentials) {
    redactions.push({ pattern: entry.placeholder, label: `[placeholder of ${entry.name}]` });
    redactions.push({ pattern: entry.secret, label: `[secret of ${entry.name}]` });
    const encodedSecret = percentEncoded(entry.secret);
    if (encodedSecret !== null) redactions.push({ pattern: encodedSecret, label: `[secret of ${entry.name}]` });
    for (const fragment of base64Fragments(entry.placeholder)) redactions.push({ pattern: fragment, label: `[base64 placeholder of ${entry.name}]` });
    for (const fragment of base64Fragments(entry.secret)) redactions.push({ pattern: fragment, label: `[base64 secret of ${entry.name}]` });
  }
  return redactions.sort((a, b) => b.pattern.length - a.pattern.length);
}

/**
 * Returns `text` with every redaction applied. When only the percent-decoded text contains a
 * pattern (a path such as `/p/rfph%5Fapi_…`), the decoded text is redacted and returned instead,
 * so an escape cannot carry a placeholder past the redaction.
 */
export function redactText(text: string, redactions: readonly Redaction[]): string {
  const redacted = replaceAll(text, redactions);
  if (!redacted.includes("%")) return redacted;

  const decoded = percentDecoded(redacted);
  if (decoded === redacted || !redactions.some((redaction) => decoded.includes(redaction.pattern))) return redacted;
  return replaceAll(decoded, redactions);
}

function replaceAll(text: string, redactions: readonly Redaction[]): string {
  let result = text;
  for (const redaction of redactions) {
    if (result.includes(redaction.pattern)) result = result.split(redaction.pattern).join(redaction.label);
  }
  return result;
}
