#!/usr/bin/env node
// The crew CLI inside an agent's box. It talks to the crew broker through the box's own
// gateway (HTTP_PROXY), so the broker identifies the sender by the gateway, not by anything
// sent here. It needs only Node, no packages.
//
//   node "$RINGFENCE_CREW_CLI" send TO KIND [-m TEXT] [-a FILE]...   body from -m, else stdin
//   node "$RINGFENCE_CREW_CLI" receive [--wait SECONDS] [--save DIR]  prints one message as JSON
//   node "$RINGFENCE_CREW_CLI" list                                   prints this agent's channels
//
// Exit status: 0 done, 1 rejected or failed (reason on stderr), 2 usage, 3 no message within --wait.
import { request } from "node:http";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { basename, join } from "node:path";

const CREW_HOST = "crew.ringfence.invalid";

function fail(message, status = 1) {
  process.stderr.write(`ringfence-crew: ${message}\n`);
  process.exit(status);
}

function proxy() {
  const value = process.env.HTTP_PROXY ?? process.env.http_proxy;
  if (value === undefined) fail("HTTP_PROXY is not set, so this is not a ringfence box with a gateway");
  const url = new URL(value);
  return { host: url.hostname, port: Number(url.port || 80) };
}

function call(method, path, body, contentType) {
  const { host, port } = proxy();
  return new Promise((resolve, reject) => {
    const headers = { host: CREW_HOST };
    if (contentType !== undefined) headers["content-type"] = contentType;
    const outgoing = request({ host, port, method, path: `http://${CREW_HOST}${path}`, headers }, (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () => resolve({ status: response.statusCode, body: Buffer.concat(chunks) }));
    });
    outgoing.on("error", reject);
    outgoing.end(body);
  });
}

function parsed(answer) {
  try {
    return JSON.parse(answer.body.toString("utf8"));
  } catch {
    return { message: answer.body.toString("utf8").trim() };
  }
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

async function send(args) {
  const [to, kind, ...rest] = args;
  if (to === undefined || kind === undefined) fail("usage: send TO KIND [-m TEXT] [-a FILE]...", 2);
  let text = null;
  const attachments = [];
  for (let i = 0; i < rest.length; i += 2) {
    const value = rest[i + 1];
    if (value === undefined) fail(`${rest[i]} needs a value`, 2);
    if (rest[i] === "-m") text = value;
    else if (rest[i] === "-a") attachments.push({ name: basename(value), data: readFileSync(value).toString("base64") });
    else fail(`unknown option ${rest[i]}; use -m TEXT or -a FILE`, 2);
  }
  const body = text ?? (await readStdin());
  const answer = await call("POST", "/v1/send", JSON.stringify({ to, kind, body, attachments }), "application/json");
  const reply = parsed(answer);
  if (answer.status !== 200) fail(reply.message ?? `the broker returned status ${answer.status}`);
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}

async function receive(args) {
  let wait = "30";
  let save = null;
  for (let i = 0; i < args.length; i += 2) {
    if (args[i] === "--wait") wait = args[i + 1];
    else if (args[i] === "--save") save = args[i + 1];
    else fail(`unknown option ${args[i]}; use --wait SECONDS or --save DIR`, 2);
  }
  // ack=1: the broker keeps the message until this process confirms it below, so a message lost
  // on the way is delivered again on the next receive.
  const answer = await call("GET", `/v1/receive?wait=${encodeURIComponent(wait)}&ack=1`);
  if (answer.status === 204) fail(`no message arrived within ${wait} seconds`, 3);
  const message = parsed(answer);
  if (answer.status !== 200) fail(message.message ?? `the broker returned status ${answer.status}`);

  if (save !== null) {
    mkdirSync(save, { recursive: true });
    for (const attachment of message.attachments) {
      const file = await call("GET", attachment.url);
      if (file.status !== 200) fail(`attachment ${attachment.name} could not be fetched (status ${file.status})`);
      // wx: an attachment never replaces a file the agent already has.
      writeFileSync(join(save, attachment.name), file.body, { flag: "wx" });
      attachment.path = join(save, attachment.name);
    }
  }
  await new Promise((resolve) => process.stdout.write(`${JSON.stringify(message)}\n`, resolve));
  const acked = await call("POST", `/v1/ack?id=${encodeURIComponent(message.id)}`);
  if (acked.status !== 200) fail(parsed(acked).message ?? `the broker returned status ${acked.status} to the ack`);
}

async function list() {
  const answer = await call("GET", "/v1/list");
  if (answer.status !== 200) fail(parsed(answer).message ?? `the broker returned status ${answer.status}`);
  process.stdout.write(`${answer.body.toString("utf8")}`);
}

const [command, ...args] = process.argv.slice(2);
const commands = { send, receive, list };
if (!(command in commands)) fail("usage: ringfence-crew send TO KIND [-m TEXT] [-a FILE]... | receive [--wait SECONDS] [--save DIR] | list", 2);
commands[command](args).catch((error) => fail(`the request to the crew broker failed: ${error.message}`));
