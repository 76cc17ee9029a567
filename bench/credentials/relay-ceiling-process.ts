// A minimal TLS-terminating relay, the ceiling for the intercepted path. It terminates each
// client connection's TLS with a leaf from the credential broker (the run CA, ECDSA leaf and
// cipher order the gateway uses). It pipes the plaintext to a verified TLS connection to the
// upstream, made with the broker's upstream trust. There is no CONNECT, no HTTP parsing and no
// scrubbing: the client reaches it with curl's --connect-to. Prints one JSON line: the relay
// port and the run CA file.
//
// Usage: relay-ceiling-process.ts HOST UPSTREAM_PORT UPSTREAM_CA_FILE
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect, TLSSocket } from "node:tls";
import { createCredentialBroker } from "../../src/credentials/broker.js";
import { canonicalHost } from "../../src/policy/host.js";
import { loadPolicyFile } from "../../src/policy/load.js";

const [host, upstreamPort, upstreamCaFile] = process.argv.slice(2) as [string, string, string];
const dir = mkdtempSync(join(tmpdir(), "ringfence-bench-relay-"));
writeFileSync(
  join(dir, "ringfence.yaml"),
  `version: 1
network:
  upstream_proxy: none
  rules:
    - host: "${host}"
      ports: [${upstreamPort}]
      addresses: [127.0.0.1]
      action: allow
credentials:
  - name: bench
    source: {env: BENCH_SECRET}
    hosts: [${host}]
    inject: {header: x-api-key}
    placeholder_env: BENCH_KEY
`,
);

const policy = loadPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir });
const broker = await createCredentialBroker({ policy, runDir: join(dir, "run"), env: { BENCH_SECRET: "sk-bench-secret-0123456789abcdef" }, runId: "bench", upstreamCaPems: [readFileSync(upstreamCaFile, "utf8")] });
const canonical = canonicalHost(host);
if (!canonical.ok) throw new Error(`relay host ${JSON.stringify(host)} is not a valid host name`);
const secureContext = await broker.interceptor.secureContextFor(canonical.host);

const server = createServer((client) => {
  client.setNoDelay(true);
  const tls = new TLSSocket(client, { isServer: true, secureContext, ALPNProtocols: ["http/1.1"] });
  const upstream = tlsConnect({ host: "127.0.0.1", port: Number(upstreamPort), servername: host, secureContext: broker.interceptor.upstreamTrust, ALPNProtocols: ["http/1.1"], minVersion: "TLSv1.2" });
  upstream.setNoDelay(true);
  const close = () => {
    tls.destroy();
    upstream.destroy();
  };
  tls.on("error", close);
  upstream.on("error", close);
  tls.pipe(upstream);
  upstream.pipe(tls);
});
server.listen(0, "127.0.0.1", () => process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port, caCertPath: broker.caCertPath })}\n`));
process.on("SIGTERM", () => process.exit(0));
