import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { defaultPolicy } from "../../src/policy/load.js";
import { BOX_PATH, boxEnvironment, NO_PROXY } from "../../src/sandbox/environment.js";

const HOST_ENV = { AWS_SECRET_ACCESS_KEY: "secret", GITHUB_TOKEN: "token", TERM: "xterm-256color", LANG: "C.UTF-8", EDITOR: "vim", PATH: "/host/bin" };

describe("boxEnvironment", () => {
  const base = defaultPolicy({ cwd: "/ws", home: "/home/u" });

  test("host variables dropped", () => {
    const env = boxEnvironment({ policy: base, hostEnv: HOST_ENV, home: "/home/u", user: "u", proxyPort: 3128 });
    assert.equal(env.AWS_SECRET_ACCESS_KEY, undefined);
    assert.equal(env.GITHUB_TOKEN, undefined);
    assert.equal(env.EDITOR, undefined);
  });

  test("terminal variables kept", () => {
    const env = boxEnvironment({ policy: base, hostEnv: HOST_ENV, home: "/home/u", user: "u", proxyPort: 3128 });
    assert.equal(env.TERM, "xterm-256color");
    assert.equal(env.LANG, "C.UTF-8");
  });

  test("fixed basics", () => {
    const env = boxEnvironment({ policy: base, hostEnv: HOST_ENV, home: "/home/u", user: "u", proxyPort: 3128 });
    assert.equal(env.PATH, BOX_PATH);
    assert.equal(env.HOME, "/home/u");
    assert.equal(env.USER, "u");
    assert.equal(env.TMPDIR, "/tmp");
  });

  test("pass and set applied", () => {
    const policy = { ...base, env: { pass: ["EDITOR", "PATH", "UNSET_ONE"], set: { CI: "1" } } };
    const env = boxEnvironment({ policy, hostEnv: HOST_ENV, home: "/home/u", user: "u", proxyPort: 3128 });
    assert.equal(env.EDITOR, "vim");
    assert.equal(env.PATH, "/host/bin");
    assert.equal(env.CI, "1");
    assert.equal("UNSET_ONE" in env, false);
  });

  test("proxy variables in both cases", () => {
    const env = boxEnvironment({ policy: base, hostEnv: HOST_ENV, home: "/home/u", user: "u", proxyPort: 4000 });
    for (const name of ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]) assert.equal(env[name], "http://127.0.0.1:4000", name);
    assert.equal(env.ALL_PROXY, "socks5h://127.0.0.1:4000");
    assert.equal(env.all_proxy, "socks5h://127.0.0.1:4000");
    assert.equal(env.NO_PROXY, NO_PROXY);
    assert.equal(env.no_proxy, NO_PROXY);
  });

  test("policy cannot override proxy", () => {
    const policy = { ...base, env: { pass: ["HTTPS_PROXY"], set: { HTTP_PROXY: "http://elsewhere:1" } } };
    const env = boxEnvironment({ policy, hostEnv: { HTTPS_PROXY: "http://corp:8080" }, home: "/h", user: "u", proxyPort: 3128 });
    assert.equal(env.HTTP_PROXY, "http://127.0.0.1:3128");
    assert.equal(env.HTTPS_PROXY, "http://127.0.0.1:3128");
  });

  test("no proxy without forwarder", () => {
    const env = boxEnvironment({ policy: base, hostEnv: HOST_ENV, home: "/h", user: "u", proxyPort: null });
    assert.equal(env.HTTP_PROXY, undefined);
  });
});
