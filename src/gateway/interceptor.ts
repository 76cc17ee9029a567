// The contract between the gateway and whatever decides what intercepted and plain HTTP requests
// may carry (the credential broker). The gateway owns sockets, TLS and HTTP framing; the
// interceptor owns certificates, request rewriting, leak checks and response scrubbing.
import type { UpstreamTlsSetup } from "./upstream-tls-protocol.js";
import type { Transform } from "node:stream";
import type { SecureContext } from "node:tls";
import type { CanonicalHost } from "../policy/host.js";

/** The parts of a request an interceptor examines. */
export interface InterceptedRequestHead {
  /** True inside TLS that the gateway terminated; false for plain HTTP. */
  tls: boolean;
  host: CanonicalHost;
  port: number;
  method: string;
  /** Origin-form request target: path and query. */
  target: string;
  /** Header names and values, alternating, without hop-by-hop headers. */
  rawHeaders: readonly string[];
}

/** A credential and where in a request it was found or put. */
export interface CredentialLocation {
  credential: string;
  location: string;
}

export type RequestExamination =
  | { action: "block"; leak: CredentialLocation; reason: string }
  | {
      action: "pass";
      target: string;
      rawHeaders: string[];
      /** Credentials put into the request. */
      injected: readonly CredentialLocation[];
      /**
       * Makes the transform the request body flows through, or null when there is nothing to
       * look for. On a leak the transform fails with an error whose `credential` property names
       * the credential. When it cannot check the body (a coding it cannot decode, or a body too
       * large once decoded), it fails with an error whose `blockReason` property gives the reason, and
       * the gateway blocks the request with that reason.
       */
      requestBody: (() => Transform) | null;
      /** Scrubs the response, or null when the host is bound to no credential. */
      response: ResponseScrubber | null;
      /**
       * Makes a matcher for the messages a client sends after a WebSocket handshake, which
       * reports a hit for the same placeholders and secrets as the body check; null when there
       * is nothing to look for.
       */
      messageMatcher: (() => ChunkMatcher) | null;
    };

/** Search and replace over a stream that arrives in chunks; a needle may straddle chunks. */
export interface ChunkMatcher {
  /** Processes one chunk. After a hit the matcher must not be used again. */
  write(chunk: Buffer): { kind: "pass"; output: Buffer } | { kind: "hit"; credential: string };
  /** Returns the held-back bytes at the end of a stream or message; the matcher can then start over. */
  end(): Buffer;
  /** Replacements made so far, per credential. */
  readonly replaced: ReadonlyMap<string, number>;
}

export interface ResponseScrubber {
  /** Rewrites header names and values in place; returns replacements per credential. */
  headers(rawHeaders: string[]): ReadonlyMap<string, number>;
  /** Scrubs one piece of text from the upstream, such as the status message. */
  text(text: string): { text: string; replaced: ReadonlyMap<string, number> };
  /** Scrubs a whole uncompressed body at once, for small bodies of known length. */
  wholeBody(body: Buffer): { body: Buffer; replaced: ReadonlyMap<string, number> };
  /** Makes a matcher that replaces secrets with placeholders in a stream, such as WebSocket messages. */
  matcher(): ChunkMatcher;
  /** Transforms for a body with this Content-Encoding, or the reason it cannot be scrubbed. */
  body(contentEncoding: string | undefined): { ok: true; transforms: Transform[]; replaced(): ReadonlyMap<string, number> } | { ok: false; reason: string };
}

export interface Interceptor {
  /** Whether TLS to this host and port must be terminated (credential and capture hosts). */
  wants(host: CanonicalHost, port: number): boolean;
  /** TLS context with a leaf certificate for the host, minted on first use. */
  secureContextFor(host: CanonicalHost): Promise<SecureContext>;
  /** Trust store for upstream TLS: the host's CA bundle plus any extra CAs. */
  upstreamTrust: SecureContext;
  /** The options upstreamTrust was made from, for the upstream TLS thread to make its own; without them, upstream TLS runs on the main thread. */
  upstreamTrustSetup?: UpstreamTlsSetup;
  /** Examines and rewrites one request head. */
  examine(head: InterceptedRequestHead): RequestExamination;
  /**
   * Returns `text` with every placeholder and secret of the run replaced by a label naming its
   * credential. The gateway applies it to every string field of its events.
   */
  redact(text: string): string;
}
