// The gateway's local-service hook: requests for a reserved host name go to an in-process
// handler, never dialled, and still get network events.
import assert from "node:assert/strict";
import { request } from "node:http";
import { test } from "node:test";
import { policyFromYaml, startTestGateway } from "../gateway/support/harness.js";

function proxyGet(port: number, url: string, body = ""): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const host = new URL(url).host;
    const outgoing = request({ host: "127.0.0.1", port, method: body === "" ? "GET" : "POST", path: url, headers: { host } }, (response) => {
      let text = "";
      response.setEncoding("utf8").on("data", (chunk: string) => (text += chunk));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body: text }));
    });
    outgoing.on("error", reject);
    outgoing.end(body);
  });
}

test("local service handles its reserved name", async () => {
  const seen: string[] = [];
  const services = new Map([
    [
      "crew.ringfence.invalid",
      (incoming: import("node:http").IncomingMessage, response: import("node:http").ServerResponse) => {
        seen.push(`${incoming.method} ${incoming.url}`);
        incoming.resume();
        incoming.on("end", () => response.end("from the local service"));
      },
    ],
  ]);
  const gateway = await startTestGateway(policyFromYaml("version: 1\n"), { localServices: services });
  try {
    const answer = await proxyGet(gateway.port, "http://crew.ringfence.invalid/v1/list", "hello");
    assert.equal(answer.status, 200);
    assert.equal(answer.body, "from the local service");
    assert.deepEqual(seen, ["POST http://crew.ringfence.invalid/v1/list"]);

    const event = await gateway.nextEvent((candidate) => candidate.host === "crew.ringfence.invalid");
    assert.equal(event.decision, "allow");
    assert.equal(event.rule, "local service crew.ringfence.invalid");
    assert.equal(event.address, null);
    assert.equal(event.bytesUp, 5);
    assert.equal(event.bytesDown, "from the local service".length);
  } finally {
    await gateway.close();
  }
});

test("local service leaves other names to the policy", async () => {
  const gateway = await startTestGateway(policyFromYaml("version: 1\n"), { localServices: new Map([["crew.ringfence.invalid", (_incoming, response) => response.end("no")]]) });
  try {
    const answer = await proxyGet(gateway.port, "http://other.ringfence.invalid/");
    assert.equal(answer.status, 403);
    const event = await gateway.nextEvent((candidate) => candidate.host === "other.ringfence.invalid");
    assert.equal(event.decision, "deny");
  } finally {
    await gateway.close();
  }
});

test("local service serves port 80 only", async () => {
  const seen: string[] = [];
  const services = new Map([["crew.ringfence.invalid", (incoming: import("node:http").IncomingMessage, response: import("node:http").ServerResponse) => {
    seen.push(String(incoming.url));
    response.end("served");
  }]]);
  const gateway = await startTestGateway(policyFromYaml("version: 1\n"), { localServices: services });
  try {
    for (const url of ["http://crew.ringfence.invalid:8080/v1/list", "http://crew.ringfence.invalid:443/v1/list"]) {
      const answer = await proxyGet(gateway.port, url);
      assert.equal(answer.status, 403, url);
      assert.match(answer.body, /port 80 only/, url);
      const event = await gateway.nextEvent((candidate) => candidate.host === "crew.ringfence.invalid");
      assert.equal(event.decision, "deny", url);
      assert.equal(event.port, Number(new URL(url).port), url);
    }
    const explicit = await proxyGet(gateway.port, "http://crew.ringfence.invalid:80/v1/list");
    assert.equal(explicit.status, 200);
    assert.deepEqual(seen, ["http://crew.ringfence.invalid:80/v1/list"]);
  } finally {
    await gateway.close();
  }
});
