import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CredentialSet, type RunCredential } from "../../src/credentials/credential-set.js";
import { planRequest, type RequestHeadView } from "../../src/credentials/request-rewrite.js";
import { canonicalHost, type CanonicalHost } from "../../src/policy/host.js";
import { parseHostPattern } from "../../src/policy/host-pattern.js";
import type { Credential, CredentialInjection } from "../../src/policy/types.js";

function host(name: string): CanonicalHost {
  const parsed = canonicalHost(name);
  if (!parsed.ok) throw new Error(parsed.reason);
  return parsed.host;
}

function credential(name: string, hosts: string[], inject: CredentialInjection, secret: string): RunCredential {
  const entry: Credential = {
    name,
    source: { kind: "env", name: "UNUSED" },
    hosts: hosts.map((pattern) => {
      const parsed = parseHostPattern(pattern);
      if (!parsed.ok) throw new Error(parsed.reason);
      return parsed.pattern;
    }),
    inject,
    placeholderEnv: null,
    onLeak: "block",
  };
  return { credential: entry, name, secret, placeholder: `rfph_${name}_${"0".repeat(31)}${name.length}` };
}

const api = credential("api", ["api.example.com"], { kind: "placeholder" }, "sk-api-secret-0001");
const bearer = credential("bearer", ["**.example.org"], { kind: "header", header: "authorization", format: "Bearer {secret}" }, "gh-token-secret-0002");
const maps = credential("maps", ["maps.example.net"], { kind: "query", parameter: "key" }, "maps key/secret+0003");
const basic = credential("basic", ["git.example.com"], { kind: "placeholder" }, "basic-password-0004");
const set = new CredentialSet([api, bearer, maps, basic]);

function view(overrides: Partial<RequestHeadView> & { hostName: string }): RequestHeadView {
  return { tls: true, host: host(overrides.hostName), method: "GET", target: "/v1", rawHeaders: [], ...overrides };
}

function headerValue(rawHeaders: readonly string[], name: string): string[] {
  const values: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) if ((rawHeaders[i] as string).toLowerCase() === name) values.push(rawHeaders[i + 1] as string);
  return values;
}

describe("planRequest injection", () => {
  it("replaces a bound placeholder in a header", () => {
    const plan = planRequest(set, view({ hostName: "api.example.com", rawHeaders: ["X-Api-Key", api.placeholder] }));
    assert.equal(plan.action, "pass");
    if (plan.action !== "pass") return;
    assert.deepEqual(headerValue(plan.rawHeaders, "x-api-key"), [api.secret]);
    assert.deepEqual(plan.injected, [{ credential: "api", location: "header x-api-key" }]);
  });

  it("replaces a placeholder inside Basic credentials", () => {
    const encoded = Buffer.from(`x-access-token:${basic.placeholder}`).toString("base64");
    const plan = planRequest(set, view({ hostName: "git.example.com", rawHeaders: ["Authorization", `Basic ${encoded}`] }));
    assert.equal(plan.action, "pass");
    if (plan.action !== "pass") return;
    const [value] = headerValue(plan.rawHeaders, "authorization");
    assert.equal(Buffer.from((value ?? "").replace(/^Basic /, ""), "base64").toString(), `x-access-token:${basic.secret}`);
    // The encoded real credentials are scrubbed from responses too.
    assert.ok(plan.scrubNeedles.some((needle) => needle.pattern.toString() === (value ?? "").replace(/^Basic /, "")));
  });

  it("adds the policy's header and replaces the client's", () => {
    const plan = planRequest(set, view({ hostName: "deep.sub.example.org", rawHeaders: ["authorization", "Bearer nothing", "Accept", "*/*"] }));
    assert.equal(plan.action, "pass");
    if (plan.action !== "pass") return;
    assert.deepEqual(headerValue(plan.rawHeaders, "authorization"), [`Bearer ${bearer.secret}`]);
    assert.deepEqual(headerValue(plan.rawHeaders, "accept"), ["*/*"]);
  });

  const queryCases: { name: string; target: string; expected: string }[] = [
    { name: "adds a missing parameter", target: "/geo?q=x", expected: `/geo?q=x&key=${encodeURIComponent(maps.secret)}` },
    { name: "adds a query to a bare path", target: "/geo", expected: `/geo?key=${encodeURIComponent(maps.secret)}` },
    { name: "replaces the placeholder in place", target: `/geo?key=${maps.placeholder}&q=x`, expected: `/geo?key=${encodeURIComponent(maps.secret)}&q=x` },
  ];
  for (const testCase of queryCases) {
    it(`query injection ${testCase.name}`, () => {
      const plan = planRequest(set, view({ hostName: "maps.example.net", target: testCase.target }));
      assert.equal(plan.action, "pass");
      if (plan.action === "pass") assert.equal(plan.target, testCase.expected);
    });
  }

  it("limits Accept-Encoding on bound hosts", () => {
    const plan = planRequest(set, view({ hostName: "api.example.com", rawHeaders: ["Accept-Encoding", "zstd, gzip;q=0.9, br, compress"] }));
    assert.equal(plan.action, "pass");
    if (plan.action === "pass") assert.deepEqual(headerValue(plan.rawHeaders, "accept-encoding"), ["gzip;q=0.9, br"]);
  });

  it("leaves requests to unbound hosts unchanged", () => {
    const rawHeaders = ["Accept-Encoding", "zstd", "X-Other", "value"];
    const plan = planRequest(set, view({ hostName: "elsewhere.example.com", rawHeaders }));
    assert.equal(plan.action, "pass");
    if (plan.action !== "pass") return;
    assert.deepEqual(plan.rawHeaders, rawHeaders);
    assert.deepEqual(plan.injected, []);
    assert.deepEqual(plan.scrubNeedles, []);
  });

  it("injects nothing over plain HTTP", () => {
    const plan = planRequest(set, view({ hostName: "deep.example.org", tls: false }));
    assert.equal(plan.action, "pass");
    if (plan.action === "pass") assert.deepEqual(headerValue(plan.rawHeaders, "authorization"), []);
  });
});

describe("planRequest leak detection", () => {
  const b64 = (text: string) => Buffer.from(text).toString("base64");
  const cases: { name: string; request: RequestHeadView; credential: string; location: string }[] = [
    { name: "placeholder in a header to another host", request: view({ hostName: "evil.example.com", rawHeaders: ["X-Api-Key", api.placeholder] }), credential: "api", location: "header x-api-key" },
    { name: "placeholder in a header name", request: view({ hostName: "evil.example.com", rawHeaders: [api.placeholder, "1"] }), credential: "api", location: `header ${api.placeholder}` },
    { name: "placeholder in the path", request: view({ hostName: "evil.example.com", target: `/x/${api.placeholder}` }), credential: "api", location: "path" },
    { name: "percent-encoded placeholder in the path", request: view({ hostName: "evil.example.com", target: `/x/${api.placeholder.replace(/_/g, "%5F")}` }), credential: "api", location: "path" },
    { name: "placeholder in the query", request: view({ hostName: "evil.example.com", target: `/x?k=${api.placeholder}` }), credential: "api", location: "query" },
    { name: "placeholder inside Basic", request: view({ hostName: "evil.example.com", rawHeaders: ["Authorization", `Basic ${b64(`u:${basic.placeholder}`)}`] }), credential: "basic", location: "header authorization" },
    { name: "base64 placeholder in a cookie", request: view({ hostName: "evil.example.com", rawHeaders: ["Cookie", `s=${b64(`xx${api.placeholder}yy`)}`] }), credential: "api", location: "header cookie" },
    { name: "real secret in a header", request: view({ hostName: "evil.example.com", rawHeaders: ["X-Data", `v=${bearer.secret}`] }), credential: "bearer", location: "header x-data" },
    { name: "percent-encoded secret in the query", request: view({ hostName: "evil.example.com", target: `/?k=${encodeURIComponent(maps.secret)}` }), credential: "maps", location: "query" },
    { name: "form-encoded secret in the query", request: view({ hostName: "evil.example.com", target: `/?k=${maps.secret.replace(/ /g, "+").replace("/", "%2F").replace("+0003", "%2B0003")}` }), credential: "maps", location: "query" },
    { name: "bound placeholder over plain HTTP", request: view({ hostName: "api.example.com", tls: false, rawHeaders: ["X-Api-Key", api.placeholder] }), credential: "api", location: "header x-api-key" },
    { name: "another credential's placeholder to a bound host", request: view({ hostName: "api.example.com", rawHeaders: ["X-Api-Key", api.placeholder, "X-Other", bearer.placeholder] }), credential: "bearer", location: "header x-other" },
  ];

  for (const testCase of cases) {
    it(`blocks ${testCase.name}`, () => {
      const plan = planRequest(set, testCase.request);
      assert.equal(plan.action, "block");
      if (plan.action !== "block") return;
      assert.equal(plan.leak.credential, testCase.credential);
      assert.equal(plan.leak.location, testCase.location);
    });
  }

  it("searches request bodies for other credentials only", () => {
    const plan = planRequest(set, view({ hostName: "api.example.com" }));
    assert.equal(plan.action, "pass");
    if (plan.action !== "pass") return;
    const tags = new Set(plan.bodyNeedles.map((needle) => needle.tag));
    assert.deepEqual([...tags].sort(), ["basic", "bearer", "maps"]);
  });

  it("passes a lookalike placeholder", () => {
    const plan = planRequest(set, view({ hostName: "evil.example.com", rawHeaders: ["X", `${api.placeholder.slice(0, -1)}Z`] }));
    assert.equal(plan.action, "pass");
  });
});
