import type { Policy } from "../policy/types.js";

/** PATH inside the box when the policy does not pass the host's. */
export const BOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/**
 * Terminal settings passed even when env.pass omits them, because a terminal program cannot draw
 * without TERM and they carry no secret.
 */
export const TERMINAL_VARIABLES: readonly string[] = ["TERM", "COLORTERM", "LANG", "LC_ALL", "LC_CTYPE"];

/** Loopback host names and addresses that never go to the proxy: inside the box they are the box's own. */
export const NO_PROXY = "localhost,127.0.0.1,::1";

export interface EnvironmentContext {
  policy: Policy;
  /** The host's environment, read only for the names the policy passes. */
  hostEnv: Readonly<Record<string, string | undefined>>;
  home: string;
  user: string;
  /** Port of the in-box forwarder, or null when the box has no way out at all. */
  proxyPort: number | null;
  /** Extra variables the run sets, such as trust-store paths for the gateway's CA. */
  extra?: Readonly<Record<string, string>>;
}

/**
 * Builds the command's environment from nothing: fixed basics, the allowlisted host variables
 * (env.pass), env.set, then the proxy variables, which a policy cannot override because they are
 * the only way out of the box.
 */
export function boxEnvironment(context: EnvironmentContext): Record<string, string> {
  const env: Record<string, string> = {
    PATH: BOX_PATH,
    HOME: context.home,
    USER: context.user,
    LOGNAME: context.user,
    TMPDIR: "/tmp",
    RINGFENCE: "1",
  };

  for (const name of [...TERMINAL_VARIABLES, ...context.policy.env.pass]) {
    const value = context.hostEnv[name];
    if (value !== undefined) env[name] = value;
  }
  Object.assign(env, context.policy.env.set, context.extra ?? {});

  if (context.proxyPort !== null) {
    const http = `http://127.0.0.1:${context.proxyPort}`;
    const socks = `socks5h://127.0.0.1:${context.proxyPort}`;
    for (const [name, value] of [
      ["HTTP_PROXY", http],
      ["HTTPS_PROXY", http],
      ["ALL_PROXY", socks],
      ["NO_PROXY", NO_PROXY],
    ] as const) {
      env[name] = value;
      env[name.toLowerCase()] = value;
    }
  }
  return env;
}
