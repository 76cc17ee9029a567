// The credential broker of one run.
//
//   const broker = await createCredentialBroker({ policy, runDir, env: process.env });
//   // broker.placeholders: { ANTHROPIC_API_KEY: "rfph_anthropic_…" } for the sandbox environment
//   // broker.trustEnv("/path/inside/box/ca-bundle.pem"): SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, …
//   const gateway = await startGateway({ policy, runId, socketPath, interceptor: broker.interceptor, onCredentialEvent });
//   …
//   await gateway.close(); broker.close();
//
// createCredentialBroker resolves every secret on the host before anything starts, and rejects
// with a CredentialError naming the credential and its source when one is missing. It makes the
// run's certificate authority (key in memory only, see certificate-authority.ts) and writes two
// public files into runDir: ca.pem (the run CA) and ca-bundle.pem (the host's CA bundle plus the
// run CA, for SSL_CERT_FILE and friends). The interceptor goes to startGateway.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createSecureContext, rootCertificates } from "node:tls";
import type { ChunkMatcher, Interceptor, InterceptedRequestHead, RequestExamination, ResponseScrubber } from "../gateway/interceptor.js";
import type { CanonicalHost } from "../policy/host.js";
import { hostPatternMatches, type HostPattern } from "../policy/host-pattern.js";
import type { Policy } from "../policy/types.js";
import { scrubHeaders, scrubPipeline, scrubText } from "./body-transform.js";
import { AES_128_FIRST_CIPHERS, createRunCertificateAuthority } from "./certificate-authority.js";
import { CredentialSet, type RunCredential } from "./credential-set.js";
import { makePlaceholder } from "./placeholder.js";
import { redactionsOf, redactText, type Redaction } from "./redaction.js";
import { contentCodings, requestBodyCheck } from "./request-body-check.js";
import { planRequest } from "./request-rewrite.js";
import { resolveSecrets } from "./secret-source.js";
import { StreamMatcher, type Needle } from "./stream-matcher.js";

/** Host CA bundles, in the order they are tried: Debian and Ubuntu, Fedora and RHEL, Alpine and macOS, openSUSE. */
export const SYSTEM_CA_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem", "/etc/ssl/ca-bundle.pem"] as const;

export interface CredentialBrokerOptions {
  policy: Policy;
  /** Host-only run directory; created with mode 0700 if missing. ca.pem and ca-bundle.pem are written here. */
  runDir: string;
  /** Host environment, for `env` sources and as the environment of `command` sources. */
  env: NodeJS.ProcessEnv;
  /** Run id, shown in the CA certificate's subject. Default: "run". */
  runId?: string;
  /** Time limit for each `command` source, in milliseconds. Default: 30 s. */
  commandTimeoutMs?: number;
  /** Aborted, it kills the `command` sources still running, and the broker is not created. */
  signal?: AbortSignal;
  /** Callback for lines to the user about resolving secrets (ResolveOptions.onNotice). */
  onNotice?: (line: string) => void;
  /** Extra CA certificates (PEM) trusted for upstream TLS beside the host's, for internal services and tests. */
  upstreamCaPems?: readonly string[];
  /** Host CA bundle to trust upstream and to combine with the run CA; null uses Node's built-in roots. Default: the first of SYSTEM_CA_BUNDLES that exists. */
  systemCaBundle?: string | null;
}

export interface CredentialBroker {
  /** Placeholder per sandbox environment variable (the credentials' placeholder_env). */
  placeholders: Readonly<Record<string, string>>;
  /** Placeholder per credential name, including credentials without placeholder_env. */
  placeholdersByCredential: Readonly<Record<string, string>>;
  /** Host path of the run CA certificate (PEM). */
  caCertPath: string;
  /** Host path of the host's CA bundle followed by the run CA, for the sandbox's trust variables. */
  caBundlePath: string;
  /** Pass to startGateway. */
  interceptor: Interceptor;
  /** Environment variables that make common TLS clients trust the bundle at `bundlePath` (its path inside the sandbox). */
  trustEnv(bundlePath: string): Record<string, string>;
  /** Drops the broker's references to the secrets; the gateway must be closed first. */
  close(): void;
}

/** Resolves secrets, makes placeholders and the run CA, and returns the broker. */
export async function createCredentialBroker(options: CredentialBrokerOptions): Promise<CredentialBroker> {
  const { policy } = options;
  const secrets = await resolveSecrets(policy.credentials, {
    env: options.env,
    ...(options.commandTimeoutMs === undefined ? {} : { commandTimeoutMs: options.commandTimeoutMs }),
    ...(options.signal === undefined ? {} : { signal: options.signal }),
    ...(options.onNotice === undefined ? {} : { onNotice: options.onNotice }),
  });

  let runCredentials: RunCredential[] = policy.credentials.map((credential) => ({
    credential,
    name: credential.name,
    secret: secrets.get(credential.name) as string,
    placeholder: makePlaceholder(credential.name),
  }));
  secrets.clear();
  let credentials = new CredentialSet(runCredentials);
  let redactions: Redaction[] = redactionsOf(runCredentials);

  const placeholders: Record<string, string> = {};
  const placeholdersByCredential: Record<string, string> = {};
  for (const entry of runCredentials) {
    placeholdersByCredential[entry.name] = entry.placeholder;
    if (entry.credential.placeholderEnv !== null) placeholders[entry.credential.placeholderEnv] = entry.placeholder;
  }

  const authority = await createRunCertificateAuthority(options.runId ?? "run");
  const systemBundle = options.systemCaBundle === undefined ? (SYSTEM_CA_BUNDLES.find((path) => existsSync(path)) ?? null) : options.systemCaBundle;
  const systemPem = systemBundle === null ? rootCertificates.join("\n") : readFileSync(systemBundle, "utf8");

  mkdirSync(options.runDir, { recursive: true, mode: 0o700 });
  const caCertPath = join(options.runDir, "ca.pem");
  const caBundlePath = join(options.runDir, "ca-bundle.pem");
  writeFileSync(caCertPath, authority.certPem, { mode: 0o644 });
  writeFileSync(caBundlePath, `${systemPem.trimEnd()}\n${authority.certPem}`, { mode: 0o644 });

  const upstreamTrustSetup = { ca: [systemPem, ...(options.upstreamCaPems ?? [])], ciphers: AES_128_FIRST_CIPHERS };
  const upstreamTrust = createSecureContext(upstreamTrustSetup);
  const interceptHosts: HostPattern[] = [...policy.credentials.flatMap((credential) => credential.hosts), ...policy.audit.capture];

  const interceptor: Interceptor = {
    wants: (host: CanonicalHost) => interceptHosts.some((pattern) => hostPatternMatches(pattern, host)),
    secureContextFor: (host) => authority.secureContextFor(host),
    upstreamTrust,
    upstreamTrustSetup,
    examine: (head) => examine(credentials, head),
    redact: (text) => redactText(text, redactions),
  };

  return {
    placeholders,
    placeholdersByCredential,
    caCertPath,
    caBundlePath,
    interceptor,
    trustEnv: (bundlePath) => trustEnv(bundlePath),
    close() {
      // NOTE: JavaScript strings cannot be wiped; this only drops the references for the collector.
      runCredentials = [];
      credentials = new CredentialSet([]);
      redactions = [];
    },
  };
}

/** Variables that point OpenSSL, curl, git, Python requests and Node at one CA bundle. */
export function trustEnv(bundlePath: string): Record<string, string> {
  return {
    SSL_CERT_FILE: bundlePath,
    NODE_EXTRA_CA_CERTS: bundlePath,
    REQUESTS_CA_BUNDLE: bundlePath,
    CURL_CA_BUNDLE: bundlePath,
    GIT_SSL_CAINFO: bundlePath,
  };
}

function examine(credentials: CredentialSet, head: InterceptedRequestHead): RequestExamination {
  const plan = planRequest(credentials, head);
  if (plan.action === "block") {
    const { credential, location } = plan.leak;
    const entry = credentials.all.find((candidate) => candidate.name === credential);
    const hosts = entry?.credential.hosts.map((pattern) => pattern.text).join(", ") ?? "its bound hosts";
    const channel = head.tls ? "" : " over plain HTTP";
    const reason = `the request carries a placeholder or secret of credential ${credential} in the ${location}${channel}; credential ${credential} may only be sent over TLS to ${hosts}`;
    return { action: "block", leak: plan.leak, reason };
  }

  const bodyNeedles = plan.bodyNeedles;
  return {
    action: "pass",
    target: plan.target,
    rawHeaders: plan.rawHeaders,
    injected: plan.injected,
    requestBody: bodyNeedles.length === 0 ? null : () => requestBodyCheck(contentCodings(head.rawHeaders), bodyNeedles),
    response: plan.scrubNeedles.length === 0 ? null : responseScrubber(plan.scrubNeedles),
    messageMatcher: bodyNeedles.length === 0 ? null : () => chunkMatcher(bodyNeedles),
  };
}

function chunkMatcher(needles: readonly Needle[]): ChunkMatcher {
  const matcher = new StreamMatcher(needles);
  return {
    write(chunk) {
      const result = matcher.write(chunk);
      return result.kind === "hit" ? { kind: "hit", credential: result.needle.tag } : result;
    },
    end: () => matcher.end(),
    replaced: matcher.replaced,
  };
}

// A scrubber keeps no state between calls, so one per frozen needle list serves every request to its hosts.
const scrubberCache = new WeakMap<readonly Needle[], ResponseScrubber>();

function responseScrubber(needles: readonly Needle[]): ResponseScrubber {
  if (!Object.isFrozen(needles)) return makeResponseScrubber(needles);
  let scrubber = scrubberCache.get(needles);
  if (scrubber === undefined) {
    scrubber = makeResponseScrubber(needles);
    scrubberCache.set(needles, scrubber);
  }
  return scrubber;
}

function makeResponseScrubber(needles: readonly Needle[]): ResponseScrubber {
  return {
    headers: (rawHeaders) => scrubHeaders(rawHeaders, needles),
    text: (text) => scrubText(text, needles),
    wholeBody(body) {
      const matcher = new StreamMatcher(needles);
      const result = matcher.write(body);
      // Scrub needles all have replacements, so the matcher never reports a hit here.
      if (result.kind !== "pass") return { body: Buffer.alloc(0), replaced: matcher.replaced };
      const rest = matcher.end();
      return { body: rest.length === 0 ? result.output : Buffer.concat([result.output, rest]), replaced: matcher.replaced };
    },
    matcher: () => chunkMatcher(needles),
    body(contentEncoding) {
      // The reason quotes the upstream's Content-Encoding, which could carry the secret.
      const pipeline = scrubPipeline(contentEncoding === undefined ? undefined : scrubText(contentEncoding, needles).text, needles);
      if (!pipeline.ok) return pipeline;
      return { ok: true, transforms: pipeline.transforms, replaced: () => pipeline.matcher.replaced };
    },
  };
}
