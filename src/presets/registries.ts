import { execFileSync } from "node:child_process";
import { readToolConfig } from "../policy/init.js";
import type { ExtraHost } from "./apply.js";

/** Package registries a run can opt into with `--with NAME`, for the tools agents commonly run. */
export const REGISTRY_PRESETS = ["npm", "pypi"] as const;
export type RegistryPreset = (typeof REGISTRY_PRESETS)[number];

/**
 * Returns the hosts of a registry preset, read from the user's own tools so a private mirror is
 * what gets allowed: npm's configured registry, and pip's configured index or else pip's
 * built-in default index and file host. Throws an Error naming the tool when neither returns one.
 */
export function registryHosts(name: RegistryPreset): ExtraHost[] {
  const label = `preset ${name}`;
  const tools = readToolConfig();

  if (name === "npm") {
    const host = hostOf(tools.npmRegistry);
    if (host === null) throw new Error("--with npm: could not read the registry from `npm config get registry`; install npm or set its registry, then run again");
    return [{ host, label }];
  }

  const index = hostOf(tools.pipIndexUrl);
  if (index !== null) return [{ host: index, label }];
  const defaults = pipDefaultHosts();
  if (defaults.length === 0) throw new Error("--with pypi: pip has no index-url configured and its default index could not be read from python3 -m pip; set PIP_INDEX_URL or install pip, then run again");
  return defaults.map((host) => ({ host, label }));
}

/** Reads pip's built-in default index and file host from the installed pip itself. */
function pipDefaultHosts(): string[] {
  try {
    const script = "from pip._internal.models.index import PyPI; print(PyPI.url); print('https://' + PyPI.file_storage_domain)";
    const output = execFileSync("python3", ["-c", script], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 10_000 });
    return output.split("\n").flatMap((line) => {
      const host = hostOf(line.trim());
      return host === null ? [] : [host];
    });
  } catch {
    return [];
  }
}

function hostOf(url: string | null): string | null {
  if (url === null || url === "") return null;
  try {
    return new URL(url).hostname || null;
  } catch {
    return null;
  }
}
