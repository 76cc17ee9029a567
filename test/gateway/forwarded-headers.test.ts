import assert from "node:assert/strict";
import { test } from "node:test";
import { forwardedHeaders, responseHeaders } from "../../src/gateway/http-proxy.js";

const CASES: { name: string; raw: string[]; forwarded: string[] }[] = [
  { name: "keeps end-to-end headers in order and case", raw: ["Host", "a.example", "X-Api-Key", "k", "Accept", "*/*"], forwarded: ["Host", "a.example", "X-Api-Key", "k", "Accept", "*/*"] },
  { name: "drops hop-by-hop headers in any case", raw: ["Connection", "keep-alive", "KEEP-ALIVE", "timeout=5", "Proxy-Authorization", "Basic eA==", "TE", "trailers", "Accept", "*/*"], forwarded: ["Accept", "*/*"] },
  { name: "drops headers the Connection header names", raw: ["Connection", "close, X-Hop , x-other", "x-hop", "1", "X-Other", "2", "X-Kept", "3"], forwarded: ["X-Kept", "3"] },
  { name: "reads every Connection header", raw: ["Connection", "x-one", "connection", "X-Two", "X-One", "1", "x-two", "2", "X-Three", "3"], forwarded: ["X-Three", "3"] },
  { name: "keeps framing headers that Connection names", raw: ["Connection", "content-length, transfer-encoding, host", "Content-Length", "3", "Host", "a.example"], forwarded: ["Content-Length", "3", "Host", "a.example"] },
];

for (const testCase of CASES) {
  test(`forwardedHeaders ${testCase.name}`, () => assert.deepEqual(forwardedHeaders(testCase.raw), testCase.forwarded));
}

test("responseHeaders drops Transfer-Encoding", () => {
  assert.deepEqual(responseHeaders(["Transfer-Encoding", "chunked", "Content-Type", "text/plain", "Connection", "keep-alive"]), ["Content-Type", "text/plain"]);
});
