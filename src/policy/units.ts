const SIZE_UNITS: Readonly<Record<string, number>> = {
  B: 1,
  K: 1024,
  KiB: 1024,
  KB: 1000,
  M: 1024 ** 2,
  MiB: 1024 ** 2,
  MB: 1000 ** 2,
  G: 1024 ** 3,
  GiB: 1024 ** 3,
  GB: 1000 ** 3,
  T: 1024 ** 4,
  TiB: 1024 ** 4,
  TB: 1000 ** 4,
};

/** Parses a size (`512MiB`, `2G`, or a byte count) into bytes; null when malformed. */
export function parseSize(value: number | string): number | null {
  if (typeof value === "number") return Number.isSafeInteger(value) && value >= 0 ? value : null;

  const match = /^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$/.exec(value.trim());
  if (match === null) return null;
  const multiplier = SIZE_UNITS[match[2] === "" ? "B" : (match[2] as string)];
  if (multiplier === undefined) return null;

  const bytes = Math.round(Number(match[1]) * multiplier);
  return Number.isSafeInteger(bytes) ? bytes : null;
}

const DURATION_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses a duration (`90s`, `1h30m`, or seconds as a number) into milliseconds; null when malformed. */
export function parseDuration(value: number | string): number | null {
  if (typeof value === "number") return Number.isFinite(value) && value >= 0 ? Math.round(value * 1000) : null;

  const text = value.trim();
  if (!/^(?:[0-9]+(?:ms|s|m|h))+$/.test(text)) return null;
  let total = 0;
  for (const part of text.matchAll(/([0-9]+)(ms|s|m|h)/g)) {
    total += Number(part[1]) * (DURATION_UNITS[part[2] as string] as number);
  }
  return Number.isSafeInteger(total) ? total : null;
}

/** Formats bytes for people: `512 MiB`. */
export function formatSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1 && value % 1024 === 0) {
    value /= 1024;
    unit++;
  }
  return `${value} ${units[unit]}`;
}

/** Formats milliseconds for people: `1h30m`, `90s`, `250ms`. */
export function formatDuration(ms: number): string {
  if (ms % 1000 !== 0) return `${ms}ms`;
  let seconds = ms / 1000;
  const hours = Math.floor(seconds / 3600);
  seconds -= hours * 3600;
  const minutes = Math.floor(seconds / 60);
  seconds -= minutes * 60;
  const parts = [hours > 0 ? `${hours}h` : "", minutes > 0 ? `${minutes}m` : "", seconds > 0 ? `${seconds}s` : ""];
  const text = parts.join("");
  return text === "" ? "0s" : text;
}
