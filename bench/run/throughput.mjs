// Measures download throughput from a loopback HTTP server: curl on the host directly, against
// curl inside a ringfence box, where the bytes pass the in-box forwarder and the gateway.
// Rounds alternate host and box; the table gives medians.
//   node bench/run/throughput.mjs RINGFENCE WORKSPACE [ROUNDS]
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";

const [ringfenceArgument, workspaceArgument, roundsText] = process.argv.slice(2);
if (ringfenceArgument === undefined || workspaceArgument === undefined) {
  console.error("usage: node bench/run/throughput.mjs RINGFENCE WORKSPACE [ROUNDS]");
  process.exit(2);
}
// Boxes run in the workspace, so a relative path to ringfence is made absolute first.
const ringfence = ringfenceArgument.includes("/") ? resolve(ringfenceArgument) : ringfenceArgument;
const workspace = resolve(workspaceArgument);
const rounds = Number(roundsText ?? "5");
const BODY_BYTES = 256 * 1024 * 1024;
const CHUNK = Buffer.alloc(1024 * 1024, 0x61);

const server = createServer((request, response) => {
  response.writeHead(200, { "content-length": BODY_BYTES });
  let sent = 0;
  const pump = () => {
    while (sent < BODY_BYTES) {
      sent += CHUNK.length;
      if (!response.write(CHUNK)) return response.once("drain", pump);
    }
    response.end();
  };
  pump();
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const port = server.address().port;

const policy = join(workspace, "..", "throughput-policy.yaml");
writeFileSync(policy, `version: 1\nnetwork:\n  upstream_proxy: none\n  rules:\n    - {host: bulk.test, ports: [${port}], addresses: ["127.0.0.1"], action: allow}\n`);

/** Runs curl (under `prefix`) and returns its download speed in bytes per second. */
function download(prefix, url, curlFlags = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(prefix[0], [...prefix.slice(1), "curl", ...curlFlags, "-sS", "-o", "/dev/null", "-w", "SPEED %{speed_download}\\n", url], { cwd: workspace, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk) => (output += chunk));
    child.on("close", () => {
      const match = /SPEED ([\d.]+)/.exec(output);
      if (match === null) reject(new Error(`curl failed under ${prefix.join(" ")}`));
      else resolve(Number(match[1]));
    });
  });
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const host = [];
const box = [];
const tunnel = [];
for (let round = 0; round < rounds; round += 1) {
  host.push(await download(["env"], `http://127.0.0.1:${port}/`));
  box.push(await download([ringfence, "run", "--policy", policy, "--"], `http://bulk.test:${port}/`));
  tunnel.push(await download([ringfence, "run", "--policy", policy, "--"], `http://bulk.test:${port}/`, ["--proxytunnel"]));
}
server.close();

const mib = (bytes) => (bytes / 1024 / 1024).toFixed(0);
console.log("| path | median MiB/s | ratio to direct | rounds |");
console.log("|---|---|---|---|");
console.log(`| curl on the host, direct | ${mib(median(host))} | 1.00 | ${rounds} |`);
console.log(`| curl in the box, HTTP proxy request | ${mib(median(box))} | ${(median(box) / median(host)).toFixed(2)} | ${rounds} |`);
console.log(`| curl in the box, CONNECT tunnel | ${mib(median(tunnel))} | ${(median(tunnel) / median(host)).toFixed(2)} | ${rounds} |`);
