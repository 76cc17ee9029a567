// Redaction of the text the gateway emits (event fields): each placeholder and secret of a run,
// in the forms the leak check looks for, becomes a label that names the credential, so audit
// records and logs never hold a placeholder or a secret.
import type { RunCredential } from "./credential-set.js";
import { encodedForms, percentDecoded } from "./encodings.js";

/** One text to remove and the label written in its place. */
export interface Redaction {
  pattern: string;
  label: string;
}

/**
 * Builds the redactions for a run's credentials: the placeholder and the secret, and every
 * encoded form of both that the leak check looks for (encodedForms). Longer patterns come
 * first, so a whole placeholder is replaced before any fragment of it could match.
 */
export function redactionsOf(credentials: readonly RunCredential[]): Redaction[] {
  const redactions: Redaction[] = [];
  for (const entry of credentials) {
    redactions.push({ pattern: entry.placeholder, label: `[placeholder of ${entry.name}]` });
    redactions.push({ pattern: entry.secret, label: `[secret of ${entry.name}]` });
    for (const form of encodedForms(entry.placeholder)) redactions.push({ pattern: form.text, label: `[${labelPrefix(form.encoding)}placeholder of ${entry.name}]` });
    for (const form of encodedForms(entry.secret)) redactions.push({ pattern: form.text, label: `[${labelPrefix(form.encoding)}secret of ${entry.name}]` });
  }
  return redactions.sort((a, b) => b.pattern.length - a.pattern.length);
}

// Binary-to-text encodings are named in the label; escaped spellings of the text read as the text itself.
function labelPrefix(encoding: string): string {
  return encoding === "base64" || encoding === "base32" || encoding === "hex" ? `${encoding} ` : "";
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
