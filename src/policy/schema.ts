import { z } from "zod";

// The policy file's shape. Every object is strict, so a misspelled key is an error rather than
// a silently ignored (and so silently weakened) clause. Semantic checks that need more than the
// shape (host patterns, globs, contradictions, extends) live in validate.ts.

const SIZE = /^[0-9]+(?:\.[0-9]+)?\s*(?:B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|K|M|G|T)?$/;
const DURATION = /^(?:[0-9]+(?:ms|s|m|h))+$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HTTP_METHOD = /^[A-Z]+$/;

const size = z
  .union([z.number().int().nonnegative(), z.string().regex(SIZE)])
  .describe("A size: bytes as an integer, or a string such as '512MiB' or '2GiB'.");
const duration = z
  .union([z.number().nonnegative(), z.string().regex(DURATION)])
  .describe("A duration: seconds as a number, or a string such as '90s', '30m' or '1h30m'.");
const envName = z.string().regex(ENV_NAME).describe("An environment variable name.");

export const WorkspaceModeSchema = z.enum(["rw", "overlay", "ro"]);

const workspace = z
  .strictObject({
    path: z.string().min(1).optional().describe("Host directory of the workspace. Default: the current directory."),
    mode: WorkspaceModeSchema.optional().describe("rw writes through; overlay keeps changes aside for review; ro is read-only. Default: rw."),
    protect: z
      .array(z.string().min(1))
      .optional()
      .describe("Globs relative to the workspace that stay read-only even in rw mode. Added to the defaults."),
    protect_defaults: z
      .boolean()
      .optional()
      .describe("Whether the built-in protect list applies. Default: true."),
  })
  .describe("The project directory the sandboxed program works in.");

const filesystem = z
  .strictObject({
    read: z.array(z.string().min(1)).optional().describe("Extra host paths visible read-only."),
    write: z.array(z.string().min(1)).optional().describe("Extra host paths visible and writable."),
    deny: z.array(z.string().min(1)).optional().describe("Host paths that stay hidden; deny always wins."),
  })
  .describe("Host paths outside the workspace.");

const networkRule = z
  .strictObject({
    host: z.string().min(1).describe("'example.com', '*.example.com' (subdomains only), '**.example.com' (domain and subdomains), or an IP address."),
    ports: z.array(z.number().int().min(1).max(65535)).min(1).optional().describe("Ports the rule covers. Default: [443, 80]."),
    methods: z.array(z.string().regex(HTTP_METHOD)).min(1).optional().describe("HTTP methods the rule covers, upper case. Default: all."),
    paths: z.array(z.string().min(1)).min(1).optional().describe("URL path globs the rule covers, such as '/v1/**'. Default: all."),
    addresses: z
      .array(z.string().min(1))
      .min(1)
      .optional()
      .describe("Pins the name to these addresses: the gateway connects only to them and allows them even when private or loopback."),
    action: z.enum(["allow", "deny"]).describe("What happens to a request the rule matches."),
    reason: z.string().max(500).optional().describe("Shown to the sandboxed program when the rule denies a request."),
  })
  .describe("One network rule. Deny rules win over allow rules.");

const upstreamProxy = z
  .union([z.literal("none"), z.literal("env"), z.string().regex(/^http:\/\//)])
  .describe("Parent proxy for the gateway's own connections: 'none', 'env' (the host's HTTPS_PROXY and friends), or an http:// URL.");

const network = z
  .strictObject({
    default: z.literal("deny").optional().describe("What happens when no rule matches. Only 'deny' exists."),
    rules: z.array(networkRule).optional().describe("Ordered allow and deny rules."),
    upstream_proxy: upstreamProxy.optional(),
    upstream_ca: z
      .array(z.string().min(1))
      .optional()
      .describe("PEM files of extra certificate authorities the gateway trusts for upstream TLS, for internal services. Added to the host's trust store."),
  })
  .describe("Egress through the host-side gateway.");

const credentialSource = z
  .union([
    z.strictObject({ env: envName.describe("Host environment variable that holds the secret.") }),
    z.strictObject({ file: z.string().min(1).describe("Host file whose content (trimmed) is the secret.") }),
    z.strictObject({
      command: z.array(z.string().min(1)).min(1).describe("Host command (argv) whose standard output (trimmed) is the secret."),
    }),
  ])
  .describe("Where the host reads the secret. Exactly one of env, file or command.");

const credentialInjection = z
  .union([
    z.strictObject({
      header: z.string().regex(/^[A-Za-z0-9-]+$/).describe("Request header that carries the secret."),
      format: z.string().includes("{secret}").optional().describe("Header value; '{secret}' is replaced. Default: '{secret}'."),
    }),
    z.strictObject({ query: z.string().min(1).describe("Query parameter that carries the secret.") }),
  ])
  .describe("Where the gateway puts the secret.");

const credential = z
  .strictObject({
    name: z.string().regex(/^[A-Za-z0-9_.-]+$/).describe("Name used in audit records and messages."),
    source: credentialSource,
    hosts: z.array(z.string().min(1)).min(1).describe("Host patterns the secret may be sent to, over TLS only."),
    inject: credentialInjection.optional().describe("Where the secret is injected. Without it, the placeholder is replaced wherever it appears in headers."),
    placeholder_env: envName.optional().describe("Sandbox environment variable that holds the placeholder."),
    on_leak: z
      .enum(["block", "end-run"])
      .optional()
      .describe("What a leak of this credential does: block the request, or block it and end the run. Default: block."),
  })
  .describe("A secret that stays on the host; the sandbox holds a placeholder.");

const env = z
  .strictObject({
    pass: z.array(envName).optional().describe("Host variables passed into the sandbox. Everything else is dropped."),
    set: z.record(envName, z.string()).optional().describe("Variables set to fixed values."),
  })
  .describe("The sandbox's environment.");

const resources = z
  .strictObject({
    cpus: z.number().positive().max(1024).optional().describe("CPU limit in cores, may be fractional."),
    memory: size.optional().describe("Memory limit."),
    processes: z.number().int().min(1).max(1_000_000).optional().describe("Maximum number of processes and threads."),
    timeout: duration.optional().describe("Wall-clock limit for the whole run."),
    tmp_size: size.optional().describe("Size of the sandbox's private /tmp."),
  })
  .describe("Kernel-enforced limits.");

const audit = z
  .strictObject({
    dir: z.string().min(1).optional().describe("Directory for run records. Default: $XDG_STATE_HOME/ringfence/runs."),
    capture: z.array(z.string().min(1)).optional().describe("Host patterns whose request and response bodies are stored as transcripts."),
  })
  .describe("Host-side run records.");

export const VM_ACCEL_CHOICES = ["auto", "kvm", "tcg"] as const;

const vm = z
  .strictObject({
    accel: z
      .enum(VM_ACCEL_CHOICES)
      .optional()
      .describe("QEMU accelerator: auto (measure KVM against TCG once and cache the faster), kvm, or tcg. --accel and RINGFENCE_VM_ACCEL take precedence. Default: auto."),
  })
  .describe("Settings of the vm backend; other backends ignore them.");

export const PolicyFileSchema = z
  .strictObject({
    version: z.literal(1).describe("Policy format version. Only 1 exists."),
    extends: z.string().min(1).optional().describe("Another policy file this one starts from, relative to this file."),
    backend: z.enum(["auto", "vm", "namespace"]).optional().describe("Isolation backend. Default: auto."),
    vm: vm.optional(),
    workspace: workspace.optional(),
    filesystem: filesystem.optional(),
    network: network.optional(),
    credentials: z.array(credential).optional(),
    env: env.optional(),
    resources: resources.optional(),
    audit: audit.optional(),
  })
  .describe("A ringfence policy: what a sandboxed program may see, write, reach and use.");

export type PolicyFile = z.infer<typeof PolicyFileSchema>;
export type NetworkRuleFile = z.infer<typeof networkRule>;
export type CredentialFile = z.infer<typeof credential>;

/** The JSON Schema published as schema/ringfence.schema.json for editors. */
export function policyJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(PolicyFileSchema, { target: "draft-7", io: "input" }) as Record<string, unknown>;
  return {
    $schema: "http://json-schema.org/draft-07/schema#",
    title: "ringfence policy",
    ...schema,
  };
}
