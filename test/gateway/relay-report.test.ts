import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseRelayReport, relayEndReason, type RelayExit, type RelayReport } from "../../src/gateway/relay-report.js";

describe("parseRelayReport", () => {
  const cases: [string, RelayReport | null][] = [
    ["progress 10 20", { kind: "progress", up: 10, down: 20 }],
    ["done 0 0 closed", { kind: "done", up: 0, down: 0, reason: "closed" }],
    ["done 5 7 error:read:upstream:ECONNRESET", { kind: "done", up: 5, down: 7, reason: "error:read:upstream:ECONNRESET" }],
    ["done 1 2 idle", { kind: "done", up: 1, down: 2, reason: "idle" }],
    ["progress 10 20 closed", null],
    ["done 1 2", null],
    ["done -1 2 closed", null],
    ["done 99999999999999999 2 closed", null],
    ["done 1 2 error:read", null],
    ["done 1 2 closed extra", null],
    ["hello", null],
    ["", null],
  ];
  for (const [line, expected] of cases) {
    it(`parses ${JSON.stringify(line)}`, () => {
      assert.deepEqual(parseRelayReport(line), expected);
    });
  }
});

describe("relayEndReason", () => {
  const exited: RelayExit = { code: 0, signal: null };
  const done = (reason: string): RelayReport => ({ kind: "done", up: 1, down: 2, reason });
  const cases: [string, RelayReport | null, RelayExit, boolean, string | RegExp | null][] = [
    ["closed", done("closed"), exited, false, null],
    ["idle", done("idle"), { code: 1, signal: null }, false, "tunnel carried no data for 1000 ms"],
    ["total", done("total"), { code: 1, signal: null }, false, "tunnel reached its total time limit"],
    ["signal from the gateway", done("signal"), { code: 1, signal: null }, true, null],
    ["signal from elsewhere", done("signal"), { code: 1, signal: null }, false, /did not send/],
    ["client error", done("error:write:client:EPIPE"), { code: 1, signal: null }, false, null],
    ["upstream error", done("error:read:upstream:ECONNRESET"), { code: 1, signal: null }, false, "upstream connection failed (ECONNRESET)"],
    ["relay error", done("error:poll:relay:ENOMEM"), { code: 1, signal: null }, false, "the tunnel relay failed (poll: ENOMEM)"],
    ["killed without report", null, { code: null, signal: "SIGKILL" }, false, /was ended by SIGKILL before its final report/],
    ["killed after progress", { kind: "progress", up: 1, down: 2 }, { code: null, signal: "SIGKILL" }, false, /SIGKILL/],
    ["stopped by the gateway before any report", null, { code: null, signal: "SIGTERM" }, true, null],
    ["exit without report", null, { code: 1, signal: null }, false, /exited with status 1 before its final report/],
  ];
  for (const [name, last, exit, stoppedByGateway, expected] of cases) {
    it(name, () => {
      const reason = relayEndReason(last, exit, stoppedByGateway, 1000);
      if (expected instanceof RegExp) assert.match(reason ?? "", expected);
      else assert.equal(reason, expected);
    });
  }
});
