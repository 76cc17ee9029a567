import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { PassThrough, type Writable } from "node:stream";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { createGunzip } from "node:zlib";
import { connectThrough, curl } from "../gateway/support/harness.js";
import { startHttpUpstream, type Upstream } from "../gateway/support/upstream.js";
import { nodeRequestsOverOneTunnel } from "./support/clients.js";
import { startBrokerRig, tempFile, type BrokerRig } from "./support/setup.js";

const ANTHROPIC_SECRET = "sk-ant-REAL-0123456789abcdef";
const GITHUB_SECRET = "ghp_REALTOKEN_9876543210zyxw";
const MAPS_SECRET = "maps/REAL+key=0042";

let rig: BrokerRig;
let plain: Upstream;
let port: number;
let cafile: string;
let anthropic: string;
let github: string;
let maps: string;

function policy(upstreamPort: number, plainPort: number): string {
  const pinned = (host: string, extra = "") => `    - host: ${host}
      ports: [${upstreamPort}]
      addresses: [127.0.0.1]
${extra}      action: allow
`;
  return `version: 1
network:
  upstream_proxy: none
  rules:
${pinned("api.example.com")}${pinned("basic.example.com")}${pinned("query.example.com")}${pinned("other.example.com")}${pinned("readonly.example.com", '      methods: [GET]\n      paths: ["/echo", "/echo/**"]\n')}    - host: plain.example.com
      ports: [${plainPort}]
      addresses: [127.0.0.1]
      action: allow
credentials:
  - name: anthropic
    source: {env: ANTHROPIC_KEY}
    hosts: [api.example.com]
    inject: {header: x-api-key}
    placeholder_env: ANTHROPIC_API_KEY
  - name: github
    source: {file: ${tempFile("token", `${GITHUB_SECRET}\n`)}}
    hosts: [basic.example.com]
    placeholder_env: GITHUB_TOKEN
  - name: maps
    source: {command: [sh, -c, 'printf "%s" "$MAPS_FROM_ENV"']}
    hosts: [query.example.com]
    inject: {query: key}
    placeholder_env: MAPS_KEY
audit:
  capture: [other.example.com]
`;
}

before(async () => {
  plain = await startHttpUpstream("plain");
  rig = await startBrokerRig((upstreamPort) => policy(upstreamPort, plain.port), { ANTHROPIC_KEY: ANTHROPIC_SECRET, MAPS_FROM_ENV: MAPS_SECRET, PATH: process.env.PATH });
  port = rig.upstream.port;
  cafile = rig.broker.caCertPath;
  anthropic = rig.broker.placeholders.ANTHROPIC_API_KEY as string;
  github = rig.broker.placeholders.GITHUB_TOKEN as string;
  maps = rig.broker.placeholders.MAPS_KEY as string;
});

after(async () => {
  await rig.close();
  await plain.close();
  // Nothing the gateway emitted may contain a real secret.
  const emitted = JSON.stringify([rig.gw.events, rig.credentialEvents]);
  for (const secret of [ANTHROPIC_SECRET, GITHUB_SECRET, MAPS_SECRET, encodeURIComponent(MAPS_SECRET)]) assert.equal(emitted.includes(secret), false, "an event contains a secret");
});

function via(url: string, ...args: string[]) {
  return curl(["-x", rig.proxy, "--cacert", cafile, ...args, url]);
}

describe("injection", () => {
  it("sends the real key upstream for a placeholder", async () => {
    const result = await via(`https://api.example.com:${port}/echo`, "-H", `x-api-key: ${anthropic}`, "-H", `Authorization: Bearer ${anthropic}`);
    assert.equal(result.status, 200, result.stderr);

    const seen = rig.upstream.requests.at(-1);
    assert.equal(seen?.headers["x-api-key"], ANTHROPIC_SECRET);
    assert.equal(seen?.headers.authorization, `Bearer ${ANTHROPIC_SECRET}`);
    assert.equal(seen?.servername, "api.example.com");

    const reflected = JSON.parse(result.stdout) as { headers: Record<string, string> };
    assert.equal(reflected.headers["x-api-key"], anthropic);
    assert.equal(result.stdout.includes(ANTHROPIC_SECRET), false);

    const injected = rig.credentialEvents.filter((event) => event.action === "injected" && event.credential === "anthropic");
    assert.ok(injected.some((event) => event.location === "header x-api-key"));
    assert.ok(injected.some((event) => event.location === "header authorization"));
  });

  it("adds the policy header without a placeholder", async () => {
    const result = await via(`https://api.example.com:${port}/echo`);
    assert.equal(result.status, 200, result.stderr);
    assert.equal(rig.upstream.requests.at(-1)?.headers["x-api-key"], ANTHROPIC_SECRET);
  });

  it("injects inside Basic credentials", async () => {
    const result = await via(`https://basic.example.com:${port}/echo`, "-u", `x-access-token:${github}`);
    assert.equal(result.status, 200, result.stderr);
    const expected = `Basic ${Buffer.from(`x-access-token:${GITHUB_SECRET}`).toString("base64")}`;
    assert.equal(rig.upstream.requests.at(-1)?.headers.authorization, expected);

    // The reflected header comes back encoded with the placeholder.
    const reflected = JSON.parse(result.stdout) as { headers: Record<string, string> };
    assert.equal(reflected.headers.authorization, `Basic ${Buffer.from(`x-access-token:${github}`).toString("base64")}`);
  });

  it("injects the query parameter", async () => {
    const result = await via(`https://query.example.com:${port}/geo?q=1`);
    assert.equal(result.status, 200, result.stderr);
    assert.equal(rig.upstream.requests.at(-1)?.url, `/geo?q=1&key=${encodeURIComponent(MAPS_SECRET)}`);
    assert.equal(result.stdout.includes(encodeURIComponent(MAPS_SECRET)), false);
    assert.ok(result.stdout.includes(maps));
  });

  it("works for a Node client with keep-alive", async () => {
    const connectionsBefore = rig.upstream.connections;
    const connectsBefore = rig.gw.events.filter((event) => event.protocol === "connect").length;
    const responses = await nodeRequestsOverOneTunnel(rig.gw.port, "api.example.com", port, readFileSync(rig.broker.caCertPath, "utf8"), [
      { path: "/echo", headers: { "x-api-key": anthropic } },
      { path: "/echo/chunked", headers: { authorization: `Bearer ${anthropic}` } },
      { method: "POST", path: "/echo", body: "a".repeat(100_000) },
    ]);

    assert.deepEqual(responses.map((response) => response.status), [200, 200, 200]);
    for (const response of responses) assert.equal(response.body.includes(ANTHROPIC_SECRET), false);
    assert.ok((responses[1]?.body ?? "").includes(`Bearer ${anthropic}`));
    assert.equal(rig.upstream.requests.at(-1)?.bodySha256.length, 64);
    // The gateway pools upstream connections, so the three requests open at most one.
    assert.ok(rig.upstream.connections - connectionsBefore <= 1, "the three requests share one upstream connection");
    // The tunnel's event is emitted when it closes, after the client has gone.
    await rig.gw.nextEvent((event) => event.protocol === "connect" && event.host === "api.example.com" && rig.gw.events.indexOf(event) >= connectsBefore);
  });

  it("keeps a curl connection alive across requests", async () => {
    const before = rig.upstream.requests.length;
    const result = await curl(["-v", "-x", rig.proxy, "--cacert", cafile, `https://api.example.com:${port}/echo?n=1`, `https://api.example.com:${port}/echo?n=2`, `https://api.example.com:${port}/echo?n=3`]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(rig.upstream.requests.length - before, 3);
    assert.equal(result.stderr.match(/CONNECT api\.example\.com/g)?.length, 1, "curl sent one CONNECT for three requests");
    assert.equal(result.stderr.match(/Re-using existing connection/g)?.length, 2);
  });
});

describe("response scrubbing", () => {
  const paths = ["/echo", "/echo/chunked", "/echo/gzip", "/echo/deflate", "/echo/br"];
  for (const path of paths) {
    it(`returns the placeholder for ${path}`, async () => {
      const result = await via(`https://api.example.com:${port}${path}`, "--compressed", "-H", `Authorization: Bearer ${anthropic}`);
      assert.equal(result.status, 200, result.stderr);
      assert.equal(result.stdout.includes(ANTHROPIC_SECRET), false);
      const reflected = JSON.parse(result.stdout) as { headers: Record<string, string> };
      assert.equal(reflected.headers.authorization, `Bearer ${anthropic}`);
      assert.equal(reflected.headers["x-api-key"], anthropic);
    });
  }

  it("scrubs response headers", async () => {
    const result = await via(`https://api.example.com:${port}/echo/header`, "-i");
    assert.equal(result.status, 200, result.stderr);
    assert.match(result.stdout, new RegExp(`x-echo-api-key: ${anthropic}`, "i"));
    assert.equal(result.stdout.includes(ANTHROPIC_SECRET), false);
    const event = rig.credentialEvents.find((candidate) => candidate.action === "scrubbed" && candidate.location === "response header");
    assert.equal(event?.credential, "anthropic");
  });

  it("streams a large body intact", async () => {
    const size = 3 * 1024 * 1024 + 17;
    const [response] = await nodeRequestsOverOneTunnel(rig.gw.port, "api.example.com", port, readFileSync(cafile, "utf8"), [{ path: `/bytes/${size}` }]);
    assert.equal(response?.status, 200);
    assert.equal(response?.body.length, size);
    assert.equal(response?.body, "a".repeat(size));
  });

  for (const path of ["/stream", "/stream/gzip"]) {
    it(`passes ${path} events before the response ends`, async () => {
      // The upstream holds the response open after its first event, so a gateway that
      // buffered the body would never deliver it and the test would time out.
      const { socket } = await connectThrough(rig.gw.port, `api.example.com:${port}`);
      const tls = tlsConnect({ socket, servername: "api.example.com", ca: readFileSync(cafile, "utf8") });
      socket.resume();
      const decoded = path.endsWith("gzip") ? createGunzip() : new PassThrough();
      let text = "";
      decoded.on("data", (chunk: Buffer) => {
        text += chunk.toString();
      });
      const bodyStart = new Promise<void>((resolve) => {
        let head = Buffer.alloc(0);
        const onData = (chunk: Buffer) => {
          head = Buffer.concat([head, chunk]);
          const end = head.indexOf("\r\n\r\n");
          if (end === -1) return;
          tls.off("data", onData);
          feedChunked(tls, head.subarray(end + 4), decoded);
          resolve();
        };
        tls.on("data", onData);
      });
      tls.write(`GET ${path} HTTP/1.1\r\nHost: api.example.com:${port}\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n`);
      await bodyStart;

      await new Promise<void>((resolve) => {
        const check = () => (text.includes("data: first") ? resolve() : decoded.once("data", check));
        check();
      });
      assert.equal(text, `data: first ${anthropic}\n\n`);
      rig.upstream.release();

      await new Promise<void>((resolve) => decoded.once("end", () => resolve()));
      assert.equal(text, `data: first ${anthropic}\n\ndata: last\n\n`);
      tls.destroy();
    });
  }

  it("refuses a coding it cannot scrub", async () => {
    const result = await via(`https://api.example.com:${port}/echo/unknown-encoding`);
    assert.equal(result.status, 502);
    assert.match(result.stdout, /Content-Encoding "zstd"/);
    assert.equal(result.stdout.includes(ANTHROPIC_SECRET), false);
  });
});

describe("leak blocking", () => {
  const bigBody = join(mkdtempSync(join(tmpdir(), "ringfence-leak-")), "body");

  const cases: { name: string; url: () => string; args: () => string[]; credential: string; location: string }[] = [
    { name: "placeholder in a header to an unbound host", url: () => `https://other.example.com:${port}/x`, args: () => ["-H", `x-api-key: ${anthropic}`], credential: "anthropic", location: "header x-api-key" },
    { name: "placeholder in the query to an unbound host", url: () => `https://other.example.com:${port}/x?token=${github}`, args: () => [], credential: "github", location: "query" },
    { name: "placeholder in the path to an unbound host", url: () => `https://other.example.com:${port}/keys/${maps}`, args: () => [], credential: "maps", location: "path" },
    { name: "placeholder in a body to an unbound host", url: () => `https://other.example.com:${port}/upload`, args: () => ["--data-binary", `{"key":"${anthropic}"}`], credential: "anthropic", location: "body" },
    { name: "placeholder at the end of a large body", url: () => `https://other.example.com:${port}/upload`, args: () => ["--data-binary", `@${bigBody}`], credential: "github", location: "body" },
    { name: "real secret in a header to an unbound host", url: () => `https://other.example.com:${port}/x`, args: () => ["-H", `x-stolen: ${GITHUB_SECRET}`], credential: "github", location: "header x-stolen" },
    { name: "placeholder bound elsewhere to a credential host", url: () => `https://api.example.com:${port}/x`, args: () => ["-H", `x-other: ${github}`], credential: "github", location: "header x-other" },
    { name: "placeholder in a GET body to a credential host", url: () => `https://api.example.com:${port}/x`, args: () => ["-X", "GET", "--data-binary", `{"key":"${github}"}`], credential: "github", location: "body" },
    { name: "placeholder in a chunked body to a credential host", url: () => `https://api.example.com:${port}/x`, args: () => ["-H", "Transfer-Encoding: chunked", "--data-binary", `{"key":"${github}"}`], credential: "github", location: "body" },
    { name: "placeholder over plain HTTP", url: () => `http://plain.example.com:${plain.port}/x`, args: () => ["-H", `x-api-key: ${anthropic}`], credential: "anthropic", location: "header x-api-key" },
    { name: "placeholder in a plain HTTP body", url: () => `http://plain.example.com:${plain.port}/x`, args: () => ["--data-binary", `key=${anthropic}`], credential: "anthropic", location: "body" },
  ];

  before(() => {
    writeFileSync(bigBody, Buffer.concat([Buffer.alloc(2 * 1024 * 1024, 0x62), Buffer.from(github)]));
  });

  for (const testCase of cases) {
    it(`blocks ${testCase.name}`, async () => {
      const eventsBefore = rig.credentialEvents.length;
      const result = await via(testCase.url(), ...testCase.args());
      assert.equal(result.status, 403, result.stderr);
      assert.match(result.stdout, new RegExp(`credential ${testCase.credential}`));

      const event = rig.credentialEvents.slice(eventsBefore).find((candidate) => candidate.action === "blocked");
      assert.equal(event?.credential, testCase.credential);
      assert.equal(event?.location, testCase.location);

      const upstreams = [...rig.upstream.requests.map((seen) => JSON.stringify(seen)), ...plain.seen.map((seen) => JSON.stringify(seen))];
      for (const text of upstreams) {
        for (const value of [anthropic, github, maps]) assert.equal(text.includes(value), false, "an upstream received a placeholder");
        assert.equal(text.includes(GITHUB_SECRET), text.includes("basic.example.com") || text.includes("x-access-token") ? text.includes(GITHUB_SECRET) : false);
      }
    });
  }

  it("records the block as a denied request", async () => {
    await via(`https://other.example.com:${port}/audit`, "-H", `x-api-key: ${anthropic}`);
    const event = await rig.gw.nextEvent((candidate) => candidate.protocol === "https" && candidate.path === "/audit");
    assert.equal(event.decision, "deny");
    assert.match(event.reason ?? "", /credential anthropic in the header x-api-key; credential anthropic may only be sent over TLS to api\.example\.com/);
  });
});

describe("method and path rules inside TLS", () => {
  const cases: { name: string; args: string[]; path: string; status: number }[] = [
    { name: "GET on an allowed path", args: [], path: "/echo/ok", status: 200 },
    { name: "POST on an allowed path", args: ["-X", "POST"], path: "/echo/ok", status: 403 },
    { name: "GET on another path", args: [], path: "/admin", status: 403 },
    { name: "dot segments out of the allowed path", args: ["--path-as-is"], path: "/echo/../admin", status: 403 },
    { name: "encoded dot segments", args: ["--path-as-is"], path: "/echo/%2e%2e/admin", status: 403 },
  ];
  for (const testCase of cases) {
    it(`answers ${testCase.status} to ${testCase.name}`, async () => {
      const result = await via(`https://readonly.example.com:${port}${testCase.path}`, ...testCase.args);
      assert.equal(result.status, testCase.status, result.stdout + result.stderr);
    });
  }

  it("checks each request on a kept-alive connection", async () => {
    const responses = await nodeRequestsOverOneTunnel(rig.gw.port, "readonly.example.com", port, readFileSync(rig.broker.caCertPath, "utf8"), [
      { path: "/echo" },
      { method: "DELETE", path: "/echo" },
      { path: "/echo/again" },
    ]);
    assert.deepEqual(responses.map((response) => response.status), [200, 403, 200]);
  });
});

describe("interception checks", () => {
  it("refuses a Host header for another host", async () => {
    const result = await via(`https://api.example.com:${port}/echo`, "-H", "Host: other.example.com");
    assert.equal(result.status, 400);
    assert.match(result.stdout, /does not match the request target api\.example\.com/);
  });

  it("refuses SNI for another host", async () => {
    const result = await via(`https://api.example.com:${port}/fronted`, "--connect-to", `api.example.com:${port}:other.example.com:${port}`);
    assert.notEqual(result.code, 0);
    assert.equal(rig.upstream.requests.some((seen) => seen.url === "/fronted"), false);
  });

  it("leaves hosts that need no interception end-to-end", async () => {
    // plain.example.com is not intercepted: a TLS client sees the upstream's own certificate.
    const result = await curl(["-x", rig.proxy, "--cacert", cafile, `https://plain.example.com:${plain.port}/`]);
    assert.notEqual(result.code, 0);
  });
});

// Decodes a chunked HTTP/1.1 body from `first` and the rest of the socket into `out`, and ends
// `out` at the last chunk. Enough for the tests' own responses, not a general parser.
function feedChunked(tls: TLSSocket, first: Buffer, out: Writable): void {
  let buffer = first;
  const drain = () => {
    for (;;) {
      const lineEnd = buffer.indexOf("\r\n");
      if (lineEnd === -1) return;
      const size = parseInt(buffer.subarray(0, lineEnd).toString("latin1"), 16);
      if (size === 0) {
        out.end();
        return;
      }
      if (buffer.length < lineEnd + 2 + size + 2) return;
      out.write(buffer.subarray(lineEnd + 2, lineEnd + 2 + size));
      buffer = buffer.subarray(lineEnd + 2 + size + 2);
    }
  };
  tls.on("data", (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    drain();
  });
  drain();
}
