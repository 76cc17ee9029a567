import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from "node:crypto";
import { chmodSync, lstatSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { sha256Hex } from "./hash-chain.js";

/** The host's audit signing key: Ed25519, created on first use, readable by its owner only. */
export interface HostKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** SHA-256 of the raw public key, hex, shown in heads so a reader can tell keys apart. */
  fingerprint: string;
}

const PRIVATE_FILE = "audit-ed25519.pem";
const PUBLIC_FILE = "audit-ed25519.pub.pem";

/**
 * Loads the signing key from `keyDir`, creating it (and the directory, mode 0700) on first use.
 * Refuses a private key file that group or others can read, because anyone who can read it can
 * forge a signed head.
 */
export function loadOrCreateHostKey(keyDir: string): HostKey {
  mkdirSync(keyDir, { recursive: true, mode: 0o700 });
  // A symlinked key directory could point somewhere a box can write; refuse it.
  if (lstatSync(keyDir).isSymbolicLink()) {
    throw new Error(`audit key directory ${keyDir} is a symlink; replace it with a real directory owned by you`);
  }
  const privatePath = join(keyDir, PRIVATE_FILE);

  let pem: string;
  try {
    const mode = statSync(privatePath).mode & 0o777;
    if ((mode & 0o077) !== 0) {
      throw new Error(`audit key ${privatePath} has mode ${mode.toString(8)}, readable by others; run chmod 600 ${privatePath}`);
    }
    pem = readFileSync(privatePath, "utf8");
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== "ENOENT") throw cause;
    const pair = generateKeyPairSync("ed25519");
    pem = pair.privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    // wx: never overwrite a key another process created a moment ago.
    try {
      writeFileSync(privatePath, pem, { mode: 0o600, flag: "wx" });
    } catch (raced) {
      if ((raced as NodeJS.ErrnoException).code !== "EEXIST") throw raced;
      pem = readFileSync(privatePath, "utf8");
    }
    chmodSync(privatePath, 0o600);
  }

  const privateKey = createPrivateKey(pem);
  const publicKey = createPublicKey(privateKey);
  const publicPem = publicKey.export({ type: "spki", format: "pem" }).toString();
  // Written only when missing or different. Rewriting the same bytes truncated and refilled the
  // file before every box started, which is journal work on ext4 that waits behind other writers.
  const publicPath = join(keyDir, PUBLIC_FILE);
  if (readTextIfPresent(publicPath) !== publicPem) writeFileSync(publicPath, publicPem, { mode: 0o644 });
  return { privateKey, publicKey, fingerprint: fingerprintOf(publicKey) };
}

function readTextIfPresent(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw cause;
  }
}

/** Returns the SHA-256 (hex) of the raw 32-byte Ed25519 public key. */
export function fingerprintOf(publicKey: KeyObject): string {
  const spki = publicKey.export({ type: "spki", format: "der" });
  return sha256Hex(spki.subarray(spki.length - 32));
}

/** Builds the exact bytes a head signature covers. */
export function headMessage(runId: string, count: number, lastHash: string): Buffer {
  return Buffer.from(`ringfence-audit-head-v1\n${runId}\n${count}\n${lastHash}\n`);
}

export function signHead(key: HostKey, runId: string, count: number, lastHash: string): string {
  return sign(null, headMessage(runId, count, lastHash), key.privateKey).toString("base64");
}

export function verifyHead(publicKey: KeyObject, runId: string, count: number, lastHash: string, signature: string): boolean {
  return verify(null, headMessage(runId, count, lastHash), publicKey, Buffer.from(signature, "base64"));
}
