// Hostile requests sent as raw bytes to the crew broker's real Unix sockets: every one gets an
// answer, none ends the broker, and each rejected request is in the crew log.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { pino } from "pino";
import { AuditLog } from "../../src/audit/audit-log.js";
import { loadOrCreateHostKey } from "../../src/audit/host-key.js";
import { readAuditRecords } from "../../src/audit/run-record.js";
import { verifyRunLog } from "../../src/audit/verify.js";
import { CrewBroker, MAX_PENDING_BODY_BYTES, parseRequestTarget } from "../../src/crew/broker.js";
import type { Channel } from "../../src/crew/types.js";
import { temporaryDirectory } from "./support/temp-dir.js";

const channels: Channel[] = [
  { label: "channels[0] (planner -> coder)", from: "planner", to: "coder", kinds: ["task"], maxBytes: 64, rate: { count: 1000, windowMs: 60_000 }, attachments: { maxBytes: 32, maxCount: 2 } },
];

async function startBroker(onTraffic?: () => void, rules: Channel[] = channels) {
  const dir = temporaryDirectory("ringfence-broker-");
  const key = loadOrCreateHostKey(join(dir, "keys"));
  const log = AuditLog.create(dir, "crew-test", key);
  const broker = await CrewBroker.start({ rules: { agents: ["planner", "coder"], channels: rules }, log, inboxDir: join(dir, "inbox"), socketDir: dir, logger: pino({ level: "silent" }), ...(onTraffic === undefined ? {} : { onTraffic }) });
  return { dir, key, log, broker };
}

// Sends one request exactly as written, with no client-side checks on the target, and returns
// the status code and body of the answer.
function raw(socketPath: string, method: string, target: string, body: string | Buffer = "", contentType = "application/json"): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", reject);
    socket.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
      resolve({ status, body: text.slice(text.indexOf("\r\n\r\n") + 4) });
    });
    const head = [`${method} ${target} HTTP/1.1`, "Host: crew.ringfence.invalid", "Connection: close", `Content-Type: ${contentType}`, `Content-Length: ${Buffer.byteLength(body)}`, "", ""].join("\r\n");
    socket.end(Buffer.concat([Buffer.from(head), Buffer.from(body)]));
  });
}

const TARGETS: { target: string; method?: string; status: number }[] = [
  { target: "//", status: 400 },
  { target: "//[", status: 400 },
  { target: "//%", status: 400 },
  { target: "//a:99999", status: 400 },
  { target: "//planner/v1/list", status: 400 },
  { target: "*", method: "OPTIONS", status: 400 },
  { target: "http://crew.ringfence.invalid/v1/list", status: 400 },
  { target: "/%", status: 404 },
  { target: "/%00", status: 404 },
  { target: "/v1/list?%ZZ=%", status: 200 },
  { target: "/v1/receive?wait=abc", status: 400 },
  { target: "/v1/receive?wait=-1", status: 400 },
  { target: "/v1/attachments/../../etc/passwd", status: 404 },
  { target: "/v1/attachments/%2e%2e/%2e%2e/x", status: 404 },
  { target: `/${"a".repeat(8000)}`, status: 404 },
  { target: "/v1/send?to=%ZZ&kind=task", method: "POST", status: 404 },
];

test("broker answers hostile request targets", async () => {
  const { dir, key, log, broker } = await startBroker();
  const planner = broker.socketPath("planner");
  try {
    for (const { target, method, status } of TARGETS) {
      const answer = await raw(planner, method ?? "GET", target, "", "text/plain");
      assert.equal(answer.status, status, `${method ?? "GET"} ${target.slice(0, 40)}: ${answer.body}`);
    }
    const list = await raw(planner, "GET", "/v1/list");
    assert.equal(list.status, 200, "the broker still serves after the hostile targets");
  } finally {
    await broker.close();
    log.close();
  }
  assert.equal(verifyRunLog(dir, "crew-test", key.publicKey).status, "valid");
  const rejects = readAuditRecords(dir).filter((record) => record.type === "crew.reject");
  assert.equal(rejects.filter((record) => typeof record.reason === "string" && record.reason.includes("is not a path")).length, 7);
});

const BODIES: { body: string; status: number; to?: string; kind?: string }[] = [
  { body: "{", status: 400 },
  { body: "[]", status: 400 },
  { body: "null", status: 400 },
  { body: '"text"', status: 400 },
  { body: '{"to":{"name":"coder"},"kind":"task"}', status: 400, to: "", kind: "task" },
  { body: '{"to":"coder","kind":"Task!"}', status: 400, to: "coder", kind: "Task!" },
  { body: '{"to":"coder","kind":"task","body":5}', status: 400, to: "coder", kind: "task" },
  { body: '{"to":"coder","kind":"task","attachments":"x"}', status: 400, to: "coder", kind: "task" },
  { body: '{"to":"coder","kind":"task","attachments":[null]}', status: 400, to: "coder", kind: "task" },
  { body: '{"to":"coder","kind":"task","attachments":[{"name":"../x","data":""}]}', status: 400, to: "coder", kind: "task" },
  { body: '{"to":"coder","kind":"task","attachments":[{"name":"a","data":"!!"}]}', status: 400, to: "coder", kind: "task" },
  { body: `{"to":"co\\u0000der\\n${"x".repeat(100)}","kind":"task"}`, status: 400, to: `co\\u0000der\\u000a${"x".repeat(57)}`, kind: "task" },
  { body: '{"__proto__":{"to":"coder"},"kind":"task"}', status: 400, to: "", kind: "task" },
  { body: '{"to":"coder","kind":"task","constructor":{"prototype":{"x":1}}}', status: 200 },
  { body: '{"to":"nobody","kind":"task"}', status: 404 },
  { body: JSON.stringify({ to: "coder", kind: "task", body: "x".repeat(2_000_000) }), status: 413 },
];

test("broker answers hostile send bodies", async () => {
  const { dir, key, log, broker } = await startBroker();
  const planner = broker.socketPath("planner");
  try {
    for (const { body, status } of BODIES) {
      const answer = await raw(planner, "POST", "/v1/send", body);
      assert.equal(answer.status, status, `${body.slice(0, 60)}: ${answer.body}`);
    }
    const sent = await raw(planner, "POST", "/v1/send", '{"to":"coder","kind":"task","body":"still here"}');
    assert.equal(sent.status, 200, "the broker still accepts messages after the hostile bodies");
  } finally {
    await broker.close();
    log.close();
  }
  assert.equal(verifyRunLog(dir, "crew-test", key.publicKey).status, "valid");
  const invalid = readAuditRecords(dir).filter((record) => record.type === "crew.reject" && record.code === "invalid-request");
  const expected = BODIES.filter((entry) => entry.status === 400);
  assert.equal(invalid.length, expected.length);
  for (const [index, entry] of expected.entries()) {
    assert.equal(invalid[index]?.to, entry.to ?? "", `to recorded for ${entry.body.slice(0, 60)}`);
    assert.equal(invalid[index]?.kind, entry.kind ?? "", `kind recorded for ${entry.body.slice(0, 60)}`);
  }
});

test("broker rejects non-UTF-8 body", async () => {
  const { dir, key, log, broker } = await startBroker();
  const planner = broker.socketPath("planner");
  const coder = broker.socketPath("coder");
  try {
    // 0xff and 0xfe never occur in UTF-8. A body the broker decoded with replacement characters
    // would reach the receiver with other bytes than the size and SHA-256 the crew log records.
    const binary = Buffer.from([0xff, 0xfe, 0x00, 0x61]);
    const sent = await raw(planner, "POST", "/v1/send?to=coder&kind=task", binary, "application/octet-stream");
    assert.equal(sent.status, 400, sent.body);
    assert.match(sent.body, /not valid UTF-8/);
    const envelope = Buffer.concat([Buffer.from('{"to":"coder","kind":"task","body":"'), binary, Buffer.from('"}')]);
    const enveloped = await raw(planner, "POST", "/v1/send", envelope);
    assert.equal(enveloped.status, 400, enveloped.body);
    assert.match(enveloped.body, /not valid UTF-8/);

    const text = Buffer.from("caf\u00e9 \u2713\u0000", "utf8");
    const accepted = await raw(planner, "POST", "/v1/send?to=coder&kind=task", text, "application/octet-stream");
    assert.equal(accepted.status, 200, accepted.body);
    const received = await raw(coder, "GET", "/v1/receive?wait=0");
    assert.equal(received.status, 200, received.body);
    const delivered = Buffer.from((JSON.parse(received.body) as { body: string }).body, "utf8");
    assert.deepEqual(delivered, text, "the receiver gets the bytes that were sent");
  } finally {
    await broker.close();
    log.close();
  }
  assert.equal(verifyRunLog(dir, "crew-test", key.publicKey).status, "valid");
  const records = readAuditRecords(dir);
  const rejected = records.filter((record) => record.type === "crew.reject");
  assert.equal(rejected.length, 2);
  assert.equal(rejected[0]?.code, "invalid-request");
  assert.equal(rejected[0]?.to, "coder");
  assert.equal(rejected[1]?.code, "invalid-request");
  const message = records.find((record) => record.type === "crew.message");
  assert.equal(message?.bytes, 10);
  assert.equal(message?.sha256, createHash("sha256").update(Buffer.from("caf\u00e9 \u2713\u0000", "utf8")).digest("hex"));
});

// Opens a send request and writes part of its body, leaving the request unfinished.
function unfinishedSend(socketPath: string, declared: number, written: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    socket.on("error", reject);
    const head = ["POST /v1/send?to=coder&kind=task HTTP/1.1", "Host: crew.ringfence.invalid", "Content-Type: text/plain", `Content-Length: ${declared}`, "", ""].join("\r\n");
    socket.write(Buffer.concat([Buffer.from(head), Buffer.alloc(written, 0x61)]), () => resolve(socket));
  });
}

test("broker bounds unfinished sends", async () => {
  const { dir, key, log, broker } = await startBroker();
  const planner = broker.socketPath("planner");
  // The largest request the planner's channel allows: 64 * 6 for an escaped body, the
  // attachments in base64, and 64 KiB for the envelope.
  const limit = 64 * 6 + Math.ceil((32 * 4) / 3) + 64 * 1024;
  const part = Math.ceil(limit * 0.6);
  try {
    const first = await unfinishedSend(planner, limit, part);
    // The unfinished send's bytes were in the broker's socket before this request was sent, and
    // the broker reads ready sockets in turn, so it has read them when it responds to this one.
    assert.equal((await raw(planner, "GET", "/v1/list")).status, 200);

    const second = await raw(planner, "POST", "/v1/send?to=coder&kind=task", "x".repeat(part), "text/plain");
    assert.equal(second.status, 429, second.body);
    assert.match(second.body, /too-many-sends/);

    first.destroy();
    assert.equal((await raw(planner, "GET", "/v1/list")).status, 200);
    const third = await raw(planner, "POST", "/v1/send?to=coder&kind=task", "x".repeat(part), "text/plain");
    assert.equal(third.status, 413, `the aborted send no longer counts: ${third.body}`);
    assert.match(third.body, /max_bytes/);
  } finally {
    await broker.close();
    log.close();
  }
  assert.equal(verifyRunLog(dir, "crew-test", key.publicKey).status, "valid");
  const rejected = readAuditRecords(dir).filter((record) => record.type === "crew.reject");
  assert.deepEqual(
    rejected.map((record) => record.code),
    ["too-many-sends", "too-large"],
  );
  assert.equal(rejected[0]?.to, "coder");
});

test("broker bounds pending body bytes", async () => {
  const large: Channel[] = [{ ...(channels[0] as Channel), maxBytes: 4 * 1024 * 1024, attachments: null }];
  const { dir, key, log, broker } = await startBroker(undefined, large);
  const planner = broker.socketPath("planner");
  const coder = broker.socketPath("coder");
  const body = "x".repeat(4 * 1024 * 1024);
  const fitting = MAX_PENDING_BODY_BYTES / body.length;
  try {
    for (let index = 0; index < fitting; index++) {
      const sent = await raw(planner, "POST", "/v1/send?to=coder&kind=task", body, "text/plain");
      assert.equal(sent.status, 200, `message ${index}: ${sent.body}`);
    }
    const full = await raw(planner, "POST", "/v1/send?to=coder&kind=task", body, "text/plain");
    assert.equal(full.status, 503, full.body);
    assert.match(full.body, /inbox-full/);
    assert.match(full.body, new RegExp(`${MAX_PENDING_BODY_BYTES} bytes`));

    // A message received without ack=1 leaves the broker, and its room is free again.
    assert.equal((await raw(coder, "GET", "/v1/receive?wait=0")).status, 200);
    const again = await raw(planner, "POST", "/v1/send?to=coder&kind=task", body, "text/plain");
    assert.equal(again.status, 200, again.body);
  } finally {
    await broker.close();
    log.close();
  }
  assert.equal(verifyRunLog(dir, "crew-test", key.publicKey).status, "valid");
  const rejected = readAuditRecords(dir).filter((record) => record.type === "crew.reject");
  assert.equal(rejected.length, 1);
  assert.equal(rejected[0]?.code, "inbox-full");
});

test("broker cuts a long sender claim", async () => {
  const { dir, key, log, broker } = await startBroker();
  const planner = broker.socketPath("planner");
  const claim = `coder\u001b[2J${"x".repeat(60_000)}`;
  try {
    const sent = await raw(planner, "POST", "/v1/send", JSON.stringify({ from: claim, to: "coder", kind: "task", body: "hi" }));
    assert.equal(sent.status, 200, sent.body);
    const rejected = await raw(planner, "POST", "/v1/send", JSON.stringify({ from: claim, to: "coder", kind: "chat", body: "hi" }));
    assert.equal(rejected.status, 403, rejected.body);
  } finally {
    await broker.close();
    log.close();
  }
  assert.equal(verifyRunLog(dir, "crew-test", key.publicKey).status, "valid");
  // An accepted message records the claim as a rejected one does, cut and with control characters escaped.
  const expected = `coder\\u001b[2J${"x".repeat(64 - "coder\u001b[2J".length)}`;
  const records = readAuditRecords(dir);
  assert.equal(records.find((record) => record.type === "crew.message")?.ignoredFrom, expected);
  assert.equal(records.find((record) => record.type === "crew.reject")?.ignoredFrom, expected);
});

// Opens a GET request and reads only the response head, so the response body waits in the broker.
function stalledDownload(socketPath: string, target: string): Promise<{ socket: Socket; head: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    socket.on("error", reject);
    socket.once("data", (chunk: Buffer) => {
      socket.pause();
      resolve({ socket, head: chunk.toString("latin1").split("\r\n")[0] ?? "" });
    });
    socket.write(`GET ${target} HTTP/1.1\r\nHost: crew.ringfence.invalid\r\n\r\n`);
  });
}

test("broker streams stalled attachment downloads", async () => {
  const size = 16 * 1024 * 1024;
  const large: Channel[] = [{ ...(channels[0] as Channel), attachments: { maxBytes: size, maxCount: 1 } }];
  const { broker, log } = await startBroker(undefined, large);
  const planner = broker.socketPath("planner");
  const coder = broker.socketPath("coder");
  const downloads: Socket[] = [];
  try {
    const envelope = JSON.stringify({ to: "coder", kind: "task", attachments: [{ name: "big.bin", data: Buffer.alloc(size, 0x61).toString("base64") }] });
    assert.equal((await raw(planner, "POST", "/v1/send", envelope)).status, 200);
    const received = await raw(coder, "GET", "/v1/receive?wait=0");
    const url = (JSON.parse(received.body) as { attachments: { url: string }[] }).attachments[0]?.url ?? "";

    // The upload's buffers are garbage by now and can only shrink the count after this point.
    const before = process.memoryUsage().arrayBuffers;
    for (let index = 0; index < 8; index++) {
      const download = await stalledDownload(coder, url);
      downloads.push(download.socket);
      assert.equal(download.head, "HTTP/1.1 200 OK");
    }
    const grown = process.memoryUsage().arrayBuffers - before;
    // Holding each file whole would take 8 * 16 MiB. A stream keeps one read buffer per download.
    assert.ok(grown < size * 2, `8 stalled downloads of a 16 MiB attachment grew buffers by ${grown} bytes`);
  } finally {
    for (const socket of downloads) socket.destroy();
    await broker.close();
    log.close();
  }
});

test("broker sends one copy at a time", async () => {
  const large: Channel[] = [{ ...(channels[0] as Channel), maxBytes: 4 * 1024 * 1024, attachments: null }];
  const { broker, log } = await startBroker(undefined, large);
  const planner = broker.socketPath("planner");
  const coder = broker.socketPath("coder");
  const stalled: Socket[] = [];
  try {
    assert.equal((await raw(planner, "POST", "/v1/send?to=coder&kind=task", "x".repeat(4 * 1024 * 1024), "text/plain")).status, 200);

    // Each receive request in ack mode returns the unconfirmed message to the queue. While the
    // message is still being written to a receiver that does not read, it is not sent again, or
    // each stalled request would keep its own copy in the broker.
    const first = await stalledDownload(coder, "/v1/receive?wait=0&ack=1");
    stalled.push(first.socket);
    assert.equal(first.head, "HTTP/1.1 200 OK");
    for (let index = 0; index < 4; index++) {
      const again = await stalledDownload(coder, "/v1/receive?wait=0&ack=1");
      stalled.push(again.socket);
      assert.equal(again.head, "HTTP/1.1 204 No Content", `receive ${index + 2}`);
    }

    // Once the first receiver has gone, the message is delivered again.
    first.socket.destroy();
    assert.equal((await raw(coder, "GET", "/v1/list")).status, 200);
    const redelivered = await stalledDownload(coder, "/v1/receive?wait=0&ack=1");
    stalled.push(redelivered.socket);
    assert.equal(redelivered.head, "HTTP/1.1 200 OK");
  } finally {
    for (const socket of stalled) socket.destroy();
    await broker.close();
    log.close();
  }
});

test("broker survives its own failure", async () => {
  let failures = 1;
  const { dir, log, broker } = await startBroker(() => {
    if (failures-- > 0) throw new Error("status line writer failed");
  });
  const planner = broker.socketPath("planner");
  try {
    // The failure comes after the 400 was sent, so the client sees the 400 and the broker records the error.
    const first = await raw(planner, "GET", "//");
    assert.equal(first.status, 400);
    const list = await raw(planner, "GET", "/v1/list");
    assert.equal(list.status, 200);
  } finally {
    await broker.close();
    log.close();
  }
  const errors = readAuditRecords(dir).filter((record) => record.type === "crew.error");
  assert.equal(errors.length, 1);
  assert.equal(errors[0]?.agent, "planner");
});

test("request target parser accepts origin form only", () => {
  const cases: [string | undefined, string | null][] = [
    [undefined, null],
    ["", null],
    ["//", null],
    ["//[", null],
    ["//a:99999", null],
    ["*", null],
    ["http://x/v1/list", null],
    ["/v1/list", "/v1/list"],
    ["/v1/receive?wait=5", "/v1/receive"],
    ["/%", "/%"],
  ];
  for (const [target, pathname] of cases) assert.equal(parseRequestTarget(target)?.pathname ?? null, pathname, String(target));
});
