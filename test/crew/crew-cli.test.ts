// The crew commands that read a crew's state file, called in-process with a state directory of
// their own.
import assert from "node:assert/strict";
import { test } from "node:test";
import { crewLogs, crewStatus } from "../../src/cli/crew.js";
import { temporaryDirectory } from "./support/temp-dir.js";

function capture() {
  const err: string[] = [];
  return { io: { out: () => {}, err: (text: string) => err.push(text), tty: false }, err };
}

test("crew status rejects odd names", () => {
  process.env.XDG_STATE_HOME = temporaryDirectory("ringfence-crew-cli-");
  for (const name of ["../../../etc/hostname", "Review", "a/b", ""]) {
    const { io, err } = capture();
    assert.equal(crewStatus(name, io), 2, name);
    assert.match(err.join(""), new RegExp(`crew name ${JSON.stringify(name).replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")} is invalid`), name);
  }
});

test("crew logs names the missing crew", async () => {
  process.env.XDG_STATE_HOME = temporaryDirectory("ringfence-crew-cli-");
  const missing = capture();
  assert.equal(await crewLogs("coder", { crew: "review" }, missing.io), 2);
  assert.match(missing.err.join(""), /crew review has no state file under /);

  const odd = capture();
  assert.equal(await crewLogs("coder", { crew: "../review" }, odd.io), 2);
  assert.match(odd.err.join(""), /crew name "\.\.\/review" is invalid/);
});
