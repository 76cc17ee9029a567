import type { CanonicalHost } from "../policy/host.js";
import { hostPatternMatches } from "../policy/host-pattern.js";
import type { Credential } from "../policy/types.js";
import { encodedForms, LINE_WRAPPED_ENCODINGS, percentEncoded } from "./encodings.js";
import { freezeNeedles, type Needle } from "./stream-matcher.js";

/** The bound list for plain HTTP, where no credential is bound; a constant so caches keyed by it hit. */
export const NONE_BOUND: readonly RunCredential[] = Object.freeze([]);

/** A credential of one run: its policy entry, its secret and its placeholder. */
export interface RunCredential {
  credential: Credential;
  name: string;
  secret: string;
  placeholder: string;
}

/** The credentials of one run, with the needle lists the gateway searches for. Build once per run. */
export class CredentialSet {
  readonly all: readonly RunCredential[];
  readonly #leakNeedles = new Map<RunCredential, Needle[]>();
  readonly #boundCache = new Map<string, readonly RunCredential[]>();
  readonly #othersCache = new WeakMap<readonly RunCredential[], readonly Needle[]>();
  readonly #scrubCache = new WeakMap<readonly RunCredential[], readonly Needle[]>();

  constructor(credentials: readonly RunCredential[]) {
    this.all = credentials;
    for (const entry of credentials) this.#leakNeedles.set(entry, leakNeedlesOf(entry));
  }

  /** Credentials whose secret may go to this host. Over plain HTTP no credential is bound. */
  boundTo(host: CanonicalHost): readonly RunCredential[] {
    const key = host.kind === "name" ? host.name : `[${host.address}]`;
    let bound = this.#boundCache.get(key);
    if (bound === undefined) {
      bound = this.all.filter((entry) => entry.credential.hosts.some((pattern) => hostPatternMatches(pattern, host)));
      // The cache is bounded by the hosts a sandbox may reach; clear it rather than grow without end.
      if (this.#boundCache.size > 4096) this.#boundCache.clear();
      this.#boundCache.set(key, bound);
    }
    return bound;
  }

  /** Needles whose presence in a request is a leak: every form of the placeholder and secret of each credential given. */
  leakNeedles(credentials: readonly RunCredential[]): Needle[] {
    return credentials.flatMap((entry) => this.#leakNeedles.get(entry) ?? []);
  }

  /**
   * Leak needles of every credential not in `bound`, a list returned by boundTo (or NONE_BOUND).
   * The result is cached per list and frozen, so the same array comes back for the same host.
   */
  leakNeedlesExcept(bound: readonly RunCredential[]): readonly Needle[] {
    let needles = this.#othersCache.get(bound);
    if (needles === undefined) {
      needles = freezeNeedles(this.leakNeedles(this.all.filter((entry) => !bound.includes(entry))));
      this.#othersCache.set(bound, needles);
    }
    return needles;
  }

  /** scrubNeedles of `bound`, a list returned by boundTo, cached per list and frozen like leakNeedlesExcept. */
  scrubNeedlesOf(bound: readonly RunCredential[]): readonly Needle[] {
    let needles = this.#scrubCache.get(bound);
    if (needles === undefined) {
      needles = freezeNeedles(scrubNeedles(bound));
      this.#scrubCache.set(bound, needles);
    }
    return needles;
  }
}

// The plain value is matched in any letter case, which also covers an upper-cased placeholder.
function leakNeedlesOf(entry: RunCredential): Needle[] {
  const needles = new Map<string, Needle>();
  for (const value of [entry.placeholder, entry.secret]) {
    const folded = value.toLowerCase();
    if (!needles.has(folded)) needles.set(folded, { pattern: Buffer.from(value, "utf8"), replacement: null, tag: entry.name, caseInsensitive: true });
    for (const form of encodedForms(value)) {
      if (needles.has(form.text)) continue;
      needles.set(form.text, { pattern: Buffer.from(form.text, "utf8"), replacement: null, tag: entry.name, wrappable: LINE_WRAPPED_ENCODINGS.has(form.encoding), caseInsensitive: form.caseInsensitive });
    }
  }
  return [...needles.values()];
}

/** Needles that turn each bound secret in a response back into its placeholder. */
export function scrubNeedles(bound: readonly RunCredential[]): Needle[] {
  const needles: Needle[] = [];
  for (const entry of bound) {
    needles.push({ pattern: Buffer.from(entry.secret, "utf8"), replacement: Buffer.from(entry.placeholder, "utf8"), tag: entry.name });
    const encoded = percentEncoded(entry.secret);
    if (encoded !== null) needles.push({ pattern: Buffer.from(encoded, "utf8"), replacement: Buffer.from(entry.placeholder, "utf8"), tag: entry.name });
  }
  return needles;
}
