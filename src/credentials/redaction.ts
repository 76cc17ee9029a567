// Redaction of the text the gateway emits (event fields): each placeholder and secret of a run,
// in the forms the leak check looks for, becomes a label that names the credential, so audit
// records and logs never hold a placeholder or a secret.
import type { RunCredential } from "./credential-set.js";
import { encodedForms, percentDecoded } from "./encodings.js";

/** One text to remove and the label written in its place. */
export interface Redaction {
  pattern: string;
  label: string;
  /** True when the pattern is removed in any letter case, as the leak check finds it. */
  ignoreCase: boolean;
  /** The pattern lower-cased, made once for the search in lower-cased text. */
  lowerPattern: string;
}

/**
 * Builds the redactions for a run's credentials: the placeholder and the secret, and every
 * encoded form of both that the leak check looks for (encodedForms). Longer patterns come
 * first, so a whole placeholder is replaced before any fragment of it could match.
 */
export function redactionsOf(credentials: readonly RunCredential[]): Redaction[] {
  const redactions: Redaction[] = [];
  const add = (pattern: string, label: string, ignoreCase: boolean) => redactions.push({ pattern, label, ignoreCase, lowerPattern: pattern.toLowerCase() });
  for (const entry of credentials) {
    add(entry.placeholder, `[placeholder of ${entry.name}]`, true);
    add(entry.secret, `[secret of ${entry.name}]`, true);
    for (const form of encodedForms(entry.placeholder)) add(form.text, `[${labelPrefix(form.encoding)}placeholder of ${entry.name}]`, form.caseInsensitive);
    for (const form of encodedForms(entry.secret)) add(form.text, `[${labelPrefix(form.encoding)}secret of ${entry.name}]`, form.caseInsensitive);
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
  if (decoded === redacted || replaceAll(decoded, redactions) === decoded) return redacted;
  return replaceAll(decoded, redactions);
}

function replaceAll(text: string, redactions: readonly Redaction[]): string {
  // Most text contains no pattern, and one lower-cased copy shows that for every redaction at once.
  // The check is the same one replaceIgnoringCase makes, so text it passes would come back unchanged.
  const lower = text.toLowerCase();
  if (lower.length === text.length && !redactions.some((redaction) => (redaction.ignoreCase ? lower.includes(redaction.lowerPattern) : text.includes(redaction.pattern)))) return text;

  let result = text;
  for (const redaction of redactions) {
    if (!redaction.ignoreCase) {
      if (result.includes(redaction.pattern)) result = result.split(redaction.pattern).join(redaction.label);
      continue;
    }
    result = replaceIgnoringCase(result, redaction.pattern, redaction.lowerPattern, redaction.label);
  }
  return result;
}

// Finds the pattern in a lower-cased copy of `text`. The copy keeps each index only while
// lower-casing keeps every character's length, which is so for the ASCII text of events. When a
// character changes length, only the pattern's own spelling and its lower case are replaced.
function replaceIgnoringCase(text: string, pattern: string, lowerPattern: string, label: string): string {
  const lower = text.toLowerCase();
  if (lower.length !== text.length) return text.split(pattern).join(label).split(lowerPattern).join(label);
  if (!lower.includes(lowerPattern)) return text;

  let result = "";
  let position = 0;
  for (let index = lower.indexOf(lowerPattern); index !== -1; index = lower.indexOf(lowerPattern, position)) {
    result += text.slice(position, index) + label;
    position = index + lowerPattern.length;
  }
  return result + text.slice(position);
}
