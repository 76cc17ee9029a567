// The crew broker on real Unix sockets: identity by socket, channel rules, ordered delivery,
// attachments copied on the host, and a verifiable crew log.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { test } from "node:test";
import { pino } from "pino";
import { AuditLog } from "../../src/audit/audit-log.js";
import { loadOrCreateHostKey } from "../../src/audit/host-key.js";
import { readAuditRecords } from "../../src/audit/run-record.js";
import { verifyRunLog } from "../../src/audit/verify.js";
import { CrewBroker } from "../../src/crew/broker.js";
import type { Channel } from "../../src/crew/types.js";
import { temporaryDirectory } from "./support/temp-dir.js";

const channels: Channel[] = [
  { label: "channels[0] (planner -> coder)", from: "planner", to: "coder", kinds: ["task"], maxBytes: 64, rate: { count: 3, windowMs: 3_600_000 }, attachments: { maxBytes: 32, maxCount: 2 } },
  { label: "channels[1] (coder -> planner)", from: "coder", to: "planner", kinds: ["done"], maxBytes: 64, rate: { count: 100, windowMs: 60_000 }, attachments: null },
];

async function startBroker() {
  const dir = temporaryDirectory("ringfence-broker-");
  const key = loadOrCreateHostKey(join(dir, "keys"));
  const log = AuditLog.create(dir, "crew-test", key);
  const broker = await CrewBroker.start({ rules: { agents: ["planner", "coder", "reviewer"], channels }, log, inboxDir: join(dir, "inbox"), socketDir: dir, logger: pino({ level: "silent" }) });
  return { dir, key, log, broker };
}

function call(socketPath: string, method: string, path: string, body?: string | object): Promise<{ status: number; json: Record<string, unknown> | null; raw: Buffer }> {
  return new Promise((resolve, reject) => {
    let text: string | undefined = undefined;
    if (typeof body === "string") text = body;
    if (typeof body === "object") text = JSON.stringify(body);
    const headers: Record<string, string> = typeof body === "object" ? { "content-type": "application/json" } : {};
    const outgoing = request({ socketPath, method, path, headers }, (response) => {
      const chunks: Buffer[] = [];
      response.on("data", (chunk: Buffer) => chunks.push(chunk));
      response.on("end", () => {
        const raw = Buffer.concat(chunks);
        const json = (response.headers["content-type"] ?? "").includes("json") && raw.length > 0 ? (JSON.parse(raw.toString()) as Record<string, unknown>) : null;
        resolve({ status: response.statusCode ?? 0, json, raw });
      });
    });
    outgoing.on("error", reject);
    outgoing.end(text);
  });
}

test("broker delivers in order once", async () => {
  const { dir, key, log, broker } = await startBroker();
  try {
    const planner = broker.socketPath("planner");
    const coder = broker.socketPath("coder");
    for (const body of ["one", "two"]) {
      const sent = await call(planner, "POST", "/v1/send", { to: "coder", kind: "task", body });
      assert.equal(sent.status, 200, JSON.stringify(sent.json));
    }
    const plain = await call(planner, "POST", "/v1/send?to=coder&kind=task", "three");
    assert.equal(plain.status, 200, JSON.stringify(plain.json));

    const bodies: unknown[] = [];
    for (let i = 0; i < 3; i++) {
      const received = await call(coder, "GET", "/v1/receive?wait=5");
      assert.equal(received.status, 200);
      assert.equal(received.json?.from, "planner");
      bodies.push(received.json?.body);
    }
    assert.deepEqual(bodies, ["one", "two", "three"]);

    const empty = await call(coder, "GET", "/v1/receive?wait=0");
    assert.equal(empty.status, 204);
    assert.deepEqual(broker.traffic("coder"), { sent: 0, received: 3, rejected: 0, pending: 0 });
  } finally {
    await broker.close();
    log.close();
  }
  assert.equal(verifyRunLog(dir, "crew-test", key.publicKey).status, "valid");
  const types = readAuditRecords(dir).map((record) => record.type);
  assert.deepEqual(types, ["crew.message", "crew.message", "crew.message", "crew.deliver", "crew.deliver", "crew.deliver"]);
});

test("broker long poll wakes on send", async () => {
  const { log, broker } = await startBroker();
  try {
    const waiting = call(broker.socketPath("planner"), "GET", "/v1/receive?wait=30");
    const sent = await call(broker.socketPath("coder"), "POST", "/v1/send", { to: "planner", kind: "done", body: "finished" });
    assert.equal(sent.status, 200);
    const received = await waiting;
    assert.equal(received.status, 200);
    assert.equal(received.json?.body, "finished");
    assert.equal(received.json?.from, "coder");
  } finally {
    await broker.close();
    log.close();
  }
});

test("broker ignores spoofed sender fields", async () => {
  const { dir, log, broker } = await startBroker();
  try {
    // The reviewer claims to be the planner; it has no channel, so the claim gets it nothing.
    const spoofed = await call(broker.socketPath("reviewer"), "POST", "/v1/send", { from: "planner", to: "coder", kind: "task", body: "x" });
    assert.equal(spoofed.status, 403);
    assert.equal(spoofed.json?.error, "no-channel");
    const queried = await call(broker.socketPath("reviewer"), "POST", "/v1/send?to=coder&kind=task&from=planner", "x");
    assert.equal(queried.status, 403);

    // The coder claims to be the reviewer on a channel it does have, and the receiver gets the coder as sender.
    const claimed = await call(broker.socketPath("coder"), "POST", "/v1/send", { from: "reviewer", to: "planner", kind: "done", body: "y" });
    assert.equal(claimed.status, 200);
    const received = await call(broker.socketPath("planner"), "GET", "/v1/receive?wait=1");
    assert.equal(received.json?.from, "coder");
  } finally {
    await broker.close();
    log.close();
  }
  const records = readAuditRecords(dir);
  const message = records.find((record) => record.type === "crew.message");
  assert.equal(message?.from, "coder");
  assert.equal(message?.ignoredFrom, "reviewer");
  const rejects = records.filter((record) => record.type === "crew.reject");
  assert.equal(rejects.length, 2);
  assert.ok(rejects.every((record) => record.from === "reviewer" && record.ignoredFrom === "planner"));
});

test("broker rejects each forbidden kind", async () => {
  const { dir, log, broker } = await startBroker();
  const planner = broker.socketPath("planner");
  const cases: { name: string; path: string; body: string | object; status: number; code: string }[] = [
    { name: "unknown agent", path: "/v1/send", body: { to: "mallory", kind: "task", body: "x" }, status: 404, code: "unknown-agent" },
    { name: "no channel", path: "/v1/send", body: { to: "reviewer", kind: "task", body: "x" }, status: 403, code: "no-channel" },
    { name: "unknown kind", path: "/v1/send", body: { to: "coder", kind: "patch", body: "x" }, status: 403, code: "unknown-kind" },
    { name: "too large", path: "/v1/send", body: { to: "coder", kind: "task", body: "x".repeat(65) }, status: 413, code: "too-large" },
    { name: "request over every limit", path: "/v1/send?to=coder&kind=task", body: "x".repeat(200_000), status: 413, code: "too-large" },
    { name: "attachments too large", path: "/v1/send", body: { to: "coder", kind: "task", attachments: [{ name: "a.txt", data: Buffer.alloc(33).toString("base64") }] }, status: 413, code: "attachments-too-large" },
    { name: "bad attachment name", path: "/v1/send", body: { to: "coder", kind: "task", attachments: [{ name: "../a", data: "" }] }, status: 400, code: "invalid-request" },
    { name: "invalid JSON", path: "/v1/send", body: "{", status: 400, code: "invalid-request" },
  ];
  try {
    for (const entry of cases) {
      const headers = entry.name === "invalid JSON" ? { "content-type": "application/json" } : undefined;
      const answer = headers === undefined ? await call(planner, "POST", entry.path, entry.body) : await callJsonText(planner, entry.path, entry.body as string);
      assert.equal(answer.status, entry.status, `${entry.name}: ${JSON.stringify(answer.json)}`);
      assert.equal(answer.json?.error, entry.code, entry.name);
      assert.match(String(answer.json?.message), /^ringfence crew broker rejected the message: /, entry.name);
    }

    // The hourly rate of 3 allows three tasks, and rejects the fourth.
    for (let i = 0; i < 3; i++) assert.equal((await call(planner, "POST", "/v1/send", { to: "coder", kind: "task", body: `t${i}` })).status, 200);
    const limited = await call(planner, "POST", "/v1/send", { to: "coder", kind: "task", body: "t3" });
    assert.equal(limited.status, 429);
    assert.equal(limited.json?.error, "rate-exceeded");
  } finally {
    await broker.close();
    log.close();
  }
  const codes = readAuditRecords(dir)
    .filter((record) => record.type === "crew.reject")
    .map((record) => record.code);
  assert.deepEqual(codes, [...cases.map((entry) => entry.code), "rate-exceeded"]);
});

function callJsonText(socketPath: string, path: string, text: string): Promise<{ status: number; json: Record<string, unknown> | null }> {
  return new Promise((resolve, reject) => {
    const outgoing = request({ socketPath, method: "POST", path, headers: { "content-type": "application/json" } }, (response) => {
      let raw = "";
      response.setEncoding("utf8").on("data", (chunk: string) => (raw += chunk));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, json: JSON.parse(raw) as Record<string, unknown> }));
    });
    outgoing.on("error", reject);
    outgoing.end(text);
  });
}

test("broker copies attachments with hashes", async () => {
  const { dir, log, broker } = await startBroker();
  const data = Buffer.from("attached bytes\n");
  try {
    const sent = await call(broker.socketPath("planner"), "POST", "/v1/send", { to: "coder", kind: "task", body: "see file", attachments: [{ name: "notes.txt", data: data.toString("base64") }] });
    assert.equal(sent.status, 200, JSON.stringify(sent.json));

    const received = await call(broker.socketPath("coder"), "GET", "/v1/receive?wait=1");
    const [first] = (received.json?.attachments ?? []) as { url: string; sha256: string; bytes: number; name: string }[];
    assert.ok(first !== undefined);
    assert.equal(first.name, "notes.txt");
    assert.equal(first.bytes, data.length);

    const fetched = await call(broker.socketPath("coder"), "GET", first.url);
    assert.equal(fetched.status, 200);
    assert.deepEqual(fetched.raw, data);
    // Only the receiver of the message can fetch its attachment.
    const stolen = await call(broker.socketPath("reviewer"), "GET", first.url);
    assert.equal(stolen.status, 404);
    const copy = readFileSync(join(dir, "inbox", "coder", received.json?.id as string, "0-notes.txt"));
    assert.deepEqual(copy, data);
  } finally {
    await broker.close();
    log.close();
  }
  const record = readAuditRecords(dir).find((entry) => entry.type === "crew.message");
  assert.deepEqual(record?.attachments, [{ name: "notes.txt", bytes: data.length, sha256: createHash("sha256").update(data).digest("hex") }]);
});

test("broker survives a failed attachment copy", async () => {
  const { dir, log, broker } = await startBroker();
  // A file where the receiver's inbox directory belongs makes the copy fail.
  const { writeFileSync } = await import("node:fs");
  writeFileSync(join(dir, "inbox", "coder"), "not a directory");
  try {
    const failed = await call(broker.socketPath("planner"), "POST", "/v1/send", { to: "coder", kind: "task", attachments: [{ name: "a.txt", data: "YQ==" }] });
    assert.equal(failed.status, 500);
    assert.equal(failed.json?.error, "internal");
    const next = await call(broker.socketPath("planner"), "POST", "/v1/send", { to: "coder", kind: "task", body: "still here" });
    assert.equal(next.status, 200);
  } finally {
    await broker.close();
    log.close();
  }
});

test("broker redelivers an unconfirmed message", async () => {
  const { dir, key, log, broker } = await startBroker();
  const planner = broker.socketPath("planner");
  const coder = broker.socketPath("coder");
  try {
    for (const body of ["first", "second"]) {
      const sent = await call(planner, "POST", "/v1/send", { to: "coder", kind: "task", body });
      assert.equal(sent.status, 200);
    }

    // The receiver gets the message but never confirms it, as when its connection dropped at hand-off.
    const lost = await call(coder, "GET", "/v1/receive?wait=1&ack=1");
    assert.equal(lost.json?.body, "first");
    const again = await call(coder, "GET", "/v1/receive?wait=1&ack=1");
    assert.equal(again.json?.id, lost.json?.id, "the unconfirmed message comes back first");
    const acked = await call(coder, "POST", `/v1/ack?id=${String(again.json?.id)}`);
    assert.equal(acked.status, 200);

    const next = await call(coder, "GET", "/v1/receive?wait=1&ack=1");
    assert.equal(next.json?.body, "second");
    assert.equal((await call(coder, "POST", `/v1/ack?id=${String(next.json?.id)}`)).status, 200);
    assert.equal((await call(coder, "GET", "/v1/receive?wait=0&ack=1")).status, 204);

    const unknown = await call(coder, "POST", `/v1/ack?id=${String(next.json?.id)}`);
    assert.equal(unknown.status, 404, "a message is confirmed once");
    const foreign = await call(planner, "POST", `/v1/ack?id=${String(lost.json?.id)}`);
    assert.equal(foreign.status, 404, "only the receiver confirms its messages");
    assert.deepEqual(broker.traffic("coder"), { sent: 0, received: 2, rejected: 0, pending: 0 });
  } finally {
    await broker.close();
    log.close();
  }
  assert.equal(verifyRunLog(dir, "crew-test", key.publicKey).status, "valid");
  const types = readAuditRecords(dir).map((record) => record.type);
  assert.deepEqual(types.filter((type) => type !== "crew.message"), ["crew.deliver", "crew.deliver", "crew.ack", "crew.deliver", "crew.ack"]);
});

test("broker rejects sends to ended agent", async () => {
  const { dir, key, log, broker } = await startBroker();
  const planner = broker.socketPath("planner");
  try {
    const before = await call(planner, "POST", "/v1/send", { to: "coder", kind: "task", body: "while running" });
    assert.equal(before.status, 200, JSON.stringify(before.json));

    broker.agentEnded("coder", "failed");
    const after = await call(planner, "POST", "/v1/send", { to: "coder", kind: "task", body: "too late" });
    assert.equal(after.status, 410, JSON.stringify(after.json));
    assert.equal(after.json?.error, "agent-ended");
    assert.match(String(after.json?.message), /coder has ended \(failed\)/);

    // A rule still comes first: a message no channel allows is rejected for that reason.
    const unlisted = await call(planner, "POST", "/v1/send", { to: "coder", kind: "chat", body: "x" });
    assert.equal(unlisted.json?.error, "unknown-kind");
  } finally {
    await broker.close();
    log.close();
  }
  assert.equal(verifyRunLog(dir, "crew-test", key.publicKey).status, "valid");
  const rejects = readAuditRecords(dir).filter((record) => record.type === "crew.reject");
  assert.equal(rejects[0]?.code, "agent-ended");
  assert.equal(rejects[0]?.channel, "channels[0] (planner -> coder)");
});
