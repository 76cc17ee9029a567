import { connect, isIP, type Socket } from "node:net";
import type { UpstreamProxy } from "../policy/types.js";
import type { Target } from "./target.js";

/** A parent HTTP proxy that the gateway's own connections go through. */
export interface ParentProxy {
  host: string;
  port: number;
  /** Value of the Proxy-Authorization header built from the URL's userinfo; never logged. */
  authorization: string | null;
  /** The URL without userinfo, for logs and messages. */
  display: string;
}

/** Parent proxies by kind of traffic, and the hosts that bypass them. */
export interface ParentProxies {
  /** For plain HTTP requests, which go to the parent in absolute-form. */
  http: ParentProxy | null;
  /** For CONNECT and SOCKS5 tunnels, which go to the parent as CONNECT. */
  tunnel: ParentProxy | null;
  /** NO_PROXY entries, lower case; "*" bypasses the parent for every host. */
  noProxy: readonly string[];
}

export const NO_PARENT: ParentProxies = { http: null, tunnel: null, noProxy: [] };

/** Maximum size of a response head from a parent proxy, in bytes. */
const MAX_PARENT_RESPONSE_HEAD = 16 * 1024;

/**
 * Reads the parent proxy setting of a policy. `env` takes the host's standard variables the way
 * curl does: lower-case names first, https_proxy for tunnels, http_proxy for plain HTTP, and
 * no_proxy for exceptions. Throws an Error naming the variable for a URL the gateway cannot use.
 */
export function parentProxiesFrom(setting: UpstreamProxy, env: NodeJS.ProcessEnv = process.env): ParentProxies {
  if (setting.kind === "none") return NO_PARENT;
  if (setting.kind === "url") {
    const parent = parseParentUrl(setting.url, "network.upstream_proxy");
    return { http: parent, tunnel: parent, noProxy: [] };
  }

  const pick = (...names: string[]): { name: string; value: string } | null => {
    for (const name of names) {
      const value = env[name];
      if (value !== undefined && value.trim() !== "") return { name, value: value.trim() };
    }
    return null;
  };
  const httpVariable = pick("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY");
  const tunnelVariable = pick("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY");
  const noProxy = pick("no_proxy", "NO_PROXY");

  return {
    http: httpVariable === null ? null : parseParentUrl(httpVariable.value, httpVariable.name),
    tunnel: tunnelVariable === null ? null : parseParentUrl(tunnelVariable.value, tunnelVariable.name),
    noProxy: noProxy === null ? [] : noProxy.value.split(/[\s,]+/).filter((entry) => entry !== "").map((entry) => entry.toLowerCase()),
  };
}

function parseParentUrl(raw: string, source: string): ParentProxy {
  // Proxy variables often omit the scheme; curl reads "proxy:3128" as http://proxy:3128.
  const withScheme = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(raw) ? raw : `http://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new Error(`${source} is not a valid proxy URL; write it as http://host:port`);
  }
  if (url.protocol !== "http:") {
    throw new Error(`${source} uses ${url.protocol.slice(0, -1)}://, but the gateway can use only an http:// parent proxy; change it, or set network.upstream_proxy: none`);
  }

  const host = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
  const port = url.port === "" ? 80 : Number(url.port);
  let authorization: string | null = null;
  if (url.username !== "" || url.password !== "") {
    const credentials = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
    authorization = `Basic ${Buffer.from(credentials, "utf8").toString("base64")}`;
  }
  return { host, port, authorization, display: `http://${url.host}` };
}

/** Returns the parent proxy for a target, or null when the target goes direct. */
export function parentFor(parents: ParentProxies, target: Target, kind: "http" | "tunnel"): ParentProxy | null {
  const parent = kind === "http" ? parents.http : parents.tunnel;
  if (parent === null) return null;
  return bypassesParent(parents.noProxy, target) ? null : parent;
}

// NO_PROXY matching as curl does it: "*" matches everything, "example.com" and ".example.com"
// match that domain and its subdomains, an IP literal matches itself, and ":port" narrows an
// entry to one port.
// NOTE: CIDR entries such as 10.0.0.0/8 are not matched; such hosts go through the parent.
function bypassesParent(noProxy: readonly string[], target: Target): boolean {
  const host = target.host.kind === "name" ? target.host.name : target.host.address;

  for (const raw of noProxy) {
    if (raw === "*") return true;

    let entry = raw;
    const portMatch = /^(.*?):([0-9]+)$/.exec(entry);
    if (portMatch !== null && isIP(entry) === 0) {
      if (Number(portMatch[2]) !== target.port) continue;
      entry = portMatch[1] as string;
    }
    entry = entry.replace(/^\[|\]$/g, "").replace(/^\*?\./, "").replace(/\.$/, "");
    if (entry === "") continue;

    if (host === entry || (target.host.kind === "name" && host.endsWith(`.${entry}`))) return true;
  }
  return false;
}

/**
 * Opens a tunnel to `authority` (host:port) through a parent proxy with CONNECT, and returns
 * the socket once the parent has responded 2xx. Bytes the parent sent after its response head are
 * put back into the socket.
 */
export function connectViaParent(parent: ParentProxy, authority: string, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: parent.host, port: parent.port, noDelay: true });
    let received: Buffer = Buffer.alloc(0);

    const fail = (message: string) => {
      clearTimeout(timer);
      socket.destroy();
      reject(new Error(message));
    };
    const timer = setTimeout(() => fail(`parent proxy ${parent.display} did not answer within ${timeoutMs} ms`), timeoutMs);

    socket.once("error", (error: NodeJS.ErrnoException) => fail(`parent proxy ${parent.display} failed: ${error.code ?? error.message}`));
    socket.once("connect", () => {
      const lines = [`CONNECT ${authority} HTTP/1.1`, `Host: ${authority}`];
      if (parent.authorization !== null) lines.push(`Proxy-Authorization: ${parent.authorization}`);
      socket.write(`${lines.join("\r\n")}\r\n\r\n`, "latin1");
    });

    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const end = received.indexOf("\r\n\r\n");
      if (end === -1) {
        if (received.length > MAX_PARENT_RESPONSE_HEAD) fail(`parent proxy ${parent.display} sent a response head larger than ${MAX_PARENT_RESPONSE_HEAD} bytes`);
        return;
      }

      socket.off("data", onData);
      socket.pause();
      const statusLine = received.subarray(0, received.indexOf("\r\n")).toString("latin1");
      const status = /^HTTP\/1\.[01] ([0-9]{3})/.exec(statusLine);
      if (status === null || !(status[1] as string).startsWith("2")) {
        fail(`parent proxy ${parent.display} refused CONNECT ${authority}: ${JSON.stringify(statusLine.slice(0, 200))}`);
        return;
      }

      clearTimeout(timer);
      socket.removeAllListeners("error");
      const rest = received.subarray(end + 4);
      if (rest.length > 0) socket.unshift(rest);
      resolve(socket);
    };
    socket.on("data", onData);
  });
}

/** Opens a plain TCP connection to a parent proxy for an absolute-form HTTP request. */
export function connectToParent(parent: ParentProxy, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: parent.host, port: parent.port, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`parent proxy ${parent.display} did not accept a connection within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.removeAllListeners("error");
      resolve(socket);
    });
    socket.once("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new Error(`parent proxy ${parent.display} failed: ${error.code ?? error.message}`));
    });
  });
}
