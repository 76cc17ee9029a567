import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { connect, createServer, TLSSocket } from "node:tls";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { createCredentialBroker } from "../../src/credentials/broker.js";
import { createRunCertificateAuthority } from "../../src/credentials/certificate-authority.js";
import { canonicalHost, type CanonicalHost } from "../../src/policy/host.js";
import { policyFromYaml } from "../gateway/support/harness.js";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";

function host(name: string): CanonicalHost {
  const parsed = canonicalHost(name);
  if (!parsed.ok) throw new Error(parsed.reason);
  return parsed.host;
}

// Completes a real TLS handshake against a context and returns the peer certificate the client verified.
async function handshake(context: Awaited<ReturnType<Awaited<ReturnType<typeof createRunCertificateAuthority>>["secureContextFor"]>>, ca: string, servername: string): Promise<X509Certificate> {
  const server = createServer({ SNICallback: (_name, callback) => callback(null, context) });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const socket: TLSSocket = await new Promise((resolve, reject) => {
      const client = connect({ host: "127.0.0.1", port: (server.address() as AddressInfo).port, ca, servername }, () => resolve(client));
      client.once("error", reject);
    });
    const certificate = socket.getPeerX509Certificate();
    socket.destroy();
    assert.ok(certificate !== undefined);
    return certificate;
  } finally {
    server.close();
  }
}

describe("run certificate authority", () => {
  it("mints a leaf that clients verify", async () => {
    const authority = await createRunCertificateAuthority("t1");
    const leaf = await handshake(await authority.secureContextFor(host("api.example.com")), authority.certPem, "api.example.com");
    assert.equal(leaf.checkHost("api.example.com"), "api.example.com");
    assert.equal(leaf.checkHost("other.example.com"), undefined);
    assert.ok(leaf.verify(new X509Certificate(authority.certPem).publicKey));
  });

  it("mints an IP address leaf", async () => {
    const authority = await createRunCertificateAuthority("t2");
    const context = await authority.secureContextFor(host("127.0.0.1"));
    // Without SNI a tls.Server has no context to choose, so wrap the socket as the gateway does.
    const server = createNetServer((socket) => new TLSSocket(socket, { isServer: true, secureContext: context }).on("error", () => {}));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const verified = await new Promise<boolean>((resolve) => {
      const client = connect({ host: "127.0.0.1", port: (server.address() as AddressInfo).port, ca: authority.certPem }, () => {
        resolve(client.authorized);
        client.destroy();
      });
      client.once("error", () => resolve(false));
    });
    server.close();
    assert.equal(verified, true);
  });

  it("caches leaves per host", async () => {
    const authority = await createRunCertificateAuthority("t3");
    const first = authority.secureContextFor(host("a.example.com"));
    const again = authority.secureContextFor(host("a.example.com"));
    assert.equal(first, again);
    await Promise.all([first, authority.secureContextFor(host("b.example.com"))]);
    assert.equal(authority.minted, 2);
  });

  it("rejects leaves from another run", async () => {
    const mine = await createRunCertificateAuthority("mine");
    const theirs = await createRunCertificateAuthority("theirs");
    await assert.rejects(handshake(await theirs.secureContextFor(host("api.example.com")), mine.certPem, "api.example.com"));
  });

  it("marks the CA as a CA limited to leaves", async () => {
    const authority = await createRunCertificateAuthority("t4");
    const certificate = new X509Certificate(authority.certPem);
    assert.equal(certificate.ca, true);
    assert.match(certificate.subject, /ringfence run CA t4/);
  });
});

describe("broker files", () => {
  it("writes no private key to the run directory", async () => {
    const policy = policyFromYaml(`version: 1
credentials:
  - name: api
    source: {env: API_KEY}
    hosts: [api.example.com]
    placeholder_env: API_KEY
`);
    const runDir = join(mkdtempSync(join(tmpdir(), "ringfence-ca-files-")), "run");
    const broker = await createCredentialBroker({ policy, runDir, env: { API_KEY: "sk-test-value-123456" } });
    try {
      assert.equal(statSync(runDir).mode & 0o777, 0o700);
      const files = readdirSync(runDir).sort();
      assert.deepEqual(files, ["ca-bundle.pem", "ca.pem"]);
      for (const file of files) {
        const text = readFileSync(join(runDir, file), "utf8");
        assert.equal(/PRIVATE KEY/.test(text), false, `${file} contains a private key`);
        assert.equal(text.includes("sk-test-value-123456"), false, `${file} contains the secret`);
      }
      assert.ok(readFileSync(broker.caBundlePath, "utf8").endsWith(readFileSync(broker.caCertPath, "utf8")));
      assert.match(broker.placeholders.API_KEY ?? "", /^rfph_api_[0-9a-f]{32}$/);
    } finally {
      broker.close();
    }
  });

  it("gives each broker fresh placeholders", async () => {
    const policy = policyFromYaml(`version: 1
credentials:
  - name: api
    source: {env: API_KEY}
    hosts: [api.example.com]
    placeholder_env: API_KEY
`);
    const env = { API_KEY: "sk-test-value-123456" };
    const dir = mkdtempSync(join(tmpdir(), "ringfence-ph-"));
    const first = await createCredentialBroker({ policy, runDir: join(dir, "a"), env });
    const second = await createCredentialBroker({ policy, runDir: join(dir, "b"), env });
    assert.notEqual(first.placeholders.API_KEY, second.placeholders.API_KEY);
    first.close();
    second.close();
  });
});
