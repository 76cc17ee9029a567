import type { HostPattern } from "./host-pattern.js";

/** Origin of a clause, for messages: the policy file and the 1-based line. */
export interface SourceRef {
  file: string;
  line: number;
}

/** One network rule after validation. */
export interface NetworkRule {
  /** Human label, such as "rule 3 in ./ringfence.yaml" or "--allow example.com". */
  label: string;
  source: SourceRef | null;
  action: "allow" | "deny";
  pattern: HostPattern;
  ports: readonly number[];
  /** Upper-case methods, or null for every method. */
  methods: readonly string[] | null;
  /** URL path globs, or null for every path. */
  paths: readonly string[] | null;
  /** Addresses the name is pinned to, or null when the name is resolved on the host. */
  addresses: readonly string[] | null;
  reason: string | null;
}

export type CredentialSource = { kind: "env"; name: string } | { kind: "file"; path: string } | { kind: "command"; argv: readonly string[] };

export type CredentialInjection =
  | { kind: "header"; header: string; format: string }
  | { kind: "query"; parameter: string }
  | { kind: "placeholder" };

/** A credential after validation. The secret itself is never part of a Policy. */
export interface Credential {
  name: string;
  source: CredentialSource;
  hosts: readonly HostPattern[];
  inject: CredentialInjection;
  placeholderEnv: string | null;
  /** Action taken when this credential leaks. */
  onLeak: "block" | "end-run";
}

export type WorkspaceMode = "rw" | "overlay" | "ro";
export type BackendChoice = "auto" | "vm" | "namespace";
/** QEMU accelerator for the vm backend: `auto` measures KVM against TCG and caches the faster. */
export type VmAccel = "auto" | "kvm" | "tcg";
export type UpstreamProxy = { kind: "none" } | { kind: "env" } | { kind: "url"; url: string };

/**
 * The effective, immutable policy after defaults and `extends`. Paths are absolute with `~`
 * expanded. Network rules are kept per layer (parent first) because a child may only narrow
 * its parent: see decideNetwork.
 */
export interface Policy {
  version: 1;
  /** Policy files that make up this policy, the root parent first; empty for the built-in default. */
  files: readonly string[];
  backend: BackendChoice;
  vm: {
    /** The policy's accelerator, or null when no layer sets one. */
    accel: VmAccel | null;
  };
  workspace: {
    path: string;
    mode: WorkspaceMode;
    protect: readonly string[];
  };
  filesystem: {
    read: readonly string[];
    write: readonly string[];
    deny: readonly string[];
  };
  network: {
    layers: readonly (readonly NetworkRule[])[];
    upstreamProxy: UpstreamProxy;
    /** Absolute paths of PEM files with extra CAs trusted for upstream TLS. */
    upstreamCa: readonly string[];
  };
  credentials: readonly Credential[];
  env: {
    pass: readonly string[];
    set: Readonly<Record<string, string>>;
  };
  resources: {
    cpus: number | null;
    memoryBytes: number | null;
    processes: number | null;
    timeoutMs: number | null;
    tmpBytes: number | null;
  };
  audit: {
    dir: string | null;
    capture: readonly HostPattern[];
  };
}
