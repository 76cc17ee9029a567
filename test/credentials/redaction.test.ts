import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { RunCredential } from "../../src/credentials/credential-set.js";
import { redactionsOf, redactText } from "../../src/credentials/redaction.js";
import type { Credential } from "../../src/policy/types.js";

const PLACEHOLDER = "rfph_api_0123456789abcdef0123456789abcdef";
const SECRET = "sk-live/secret+value=42";
const entry: RunCredential = { credential: {} as Credential, name: "api", secret: SECRET, placeholder: PLACEHOLDER };
const redactions = redactionsOf([entry]);

describe("redactText", () => {
  const cases: { name: string; text: string; expected: string }[] = [
    { name: "placeholder in a path", text: `/p/${PLACEHOLDER}/x`, expected: "/p/[placeholder of api]/x" },
    { name: "placeholder twice", text: `${PLACEHOLDER}.${PLACEHOLDER}`, expected: "[placeholder of api].[placeholder of api]" },
    { name: "secret", text: `token ${SECRET}`, expected: "token [secret of api]" },
    { name: "percent-encoded secret", text: `/q/${encodeURIComponent(SECRET)}`, expected: "/q/[secret of api]" },
    { name: "percent-escaped placeholder", text: `/p/${PLACEHOLDER.replace("_", "%5F")}`, expected: "/p/[placeholder of api]" },
    { name: "text without either", text: "/v1/messages", expected: "/v1/messages" },
    { name: "upper-case placeholder", text: `/p/${PLACEHOLDER.toUpperCase()}/x`, expected: "/p/[placeholder of api]/x" },
    { name: "mixed-case hex of the secret", text: `h=${Buffer.from(SECRET).toString("hex").replace(/[a-f]/, (letter) => letter.toUpperCase())}`, expected: "h=[hex secret of api]" },
    { name: "lower-case percent-escapes of the secret", text: `k=${Buffer.from(SECRET).toString("hex").replace(/(..)/g, "%$1")}`, expected: "k=[secret of api]" },
  ];
  for (const testCase of cases) {
    it(`redacts ${testCase.name}`, () => {
      assert.equal(redactText(testCase.text, redactions), testCase.expected);
    });
  }

  it("redacts the placeholder inside base64", () => {
    const encoded = Buffer.from(`user:${PLACEHOLDER}`).toString("base64");
    const redacted = redactText(`/b/${encoded}`, redactions);
    assert.match(redacted, /\[base64 placeholder of api\]/);
    assert.equal(redacted.includes(encoded), false);
  });

  it("leaves escapes alone when no pattern hides behind them", () => {
    assert.equal(redactText("/a%20b", redactions), "/a%20b");
  });
});
