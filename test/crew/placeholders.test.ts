// Each agent of a crew has its own credential broker: a placeholder passed from one agent to
// another is forwarded unchanged by the receiver's gateway, never replaced by the secret.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { startReflectUpstream } from "../credentials/support/reflect-upstream.js";
import { createTestCa } from "../gateway/support/test-ca.js";
import { crewFixture, crewState, crewUp } from "./support/crew-run.js";

const SECRET = "sk-crew-secret-0123456789abcdef";
const CREW = 'crew() { node "$RINGFENCE_CREW_CLI" "$@"; }\n';

test("crew agents keep their own placeholders", { timeout: 120_000 }, async () => {
  const ca = await createTestCa();
  const upstream = await startReflectUpstream(await ca.issue(["api.example.com"], ["127.0.0.1"]));
  try {
    const call = (header: string, tag: string) => `curl -s -o /dev/null -w '${tag} %{http_code}\\n' --noproxy '' -x "$http_proxy" -H "Authorization: Bearer ${header}" -H 'X-Tag: ${tag}' https://api.example.com:${upstream.port}/echo`;
    const fixture = crewFixture(
      "keys",
      {
        alpha: `${CREW}crew send beta key -m "$API_KEY" >/dev/null\n${call("$API_KEY", "alpha-own")}\n`,
        beta: `${CREW}foreign=$(crew receive --wait 30 | node -e 'let t="";process.stdin.on("data",(c)=>t+=c).on("end",()=>console.log(JSON.parse(t).body))')\n${call("$foreign", "beta-foreign")}\n${call("$API_KEY", "beta-own")}\nif [ "$foreign" = "$API_KEY" ]; then echo same; else echo different; fi\n`,
        gamma: "exit 0\n",
      },
      "channels:\n  - from: alpha\n    to: beta\n    kinds: [key]",
      {
        policy: [
          "network:",
          "  upstream_proxy: none",
          "  upstream_ca: [CA_FILE]",
          "  rules:",
          "    - host: api.example.com",
          `      ports: [${upstream.port}]`,
          "      addresses: [127.0.0.1]",
          "      action: allow",
          "credentials:",
          "  - name: api",
          "    source: {env: CREW_API_SECRET}",
          "    hosts: [api.example.com]",
          "    placeholder_env: API_KEY",
        ].join("\n"),
      },
    );
    const caFile = join(fixture.dir, "upstream-ca.pem");
    writeFileSync(caFile, ca.certPem);
    writeFileSync(fixture.crewFile, readFileSync(fixture.crewFile, "utf8").replaceAll("CA_FILE", caFile));

    const result = await crewUp(fixture, { CREW_API_SECRET: SECRET }).done;
    assert.equal(result.status, 0, result.stderr);
    const state = crewState(fixture, "keys");
    const log = (agent: string) => readFileSync(state?.agents.find((entry) => entry.name === agent)?.log ?? "", "utf8");
    assert.match(log("alpha"), /^alpha-own 200$/m);
    assert.match(log("beta"), /^beta-foreign 200$/m);
    assert.match(log("beta"), /^beta-own 200$/m);
    assert.match(log("beta"), /^different$/m);

    const authorization = (tag: string) => upstream.requests.find((request) => request.headers["x-tag"] === tag)?.headers.authorization;
    assert.equal(authorization("alpha-own"), `Bearer ${SECRET}`);
    assert.equal(authorization("beta-own"), `Bearer ${SECRET}`);
    assert.match(String(authorization("beta-foreign")), /^Bearer rfph_/, "beta's gateway forwarded alpha's placeholder unchanged");
    for (const agent of ["alpha", "beta", "gamma"]) assert.doesNotMatch(log(agent), new RegExp(SECRET));
  } finally {
    await upstream.close();
  }
});
