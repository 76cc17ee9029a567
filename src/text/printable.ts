/**
 * Escapes control characters (except newline and tab) as \xNN, so text from a box cannot move
 * the cursor, erase lines or hide itself with escape sequences when a reviewer prints it.
 */
export function printable(text: string): string {
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, (character) => `\\x${character.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

/** Like printable, and escapes newlines and tabs too, for one-line fields such as paths and host names. */
export function printableLine(text: string): string {
  return printable(text).replace(/\n/g, "\\n").replace(/\t/g, "\\t");
}
