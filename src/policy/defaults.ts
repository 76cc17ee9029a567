/**
 * Workspace globs that stay read-only even in rw mode: the places an attacker writes to get code
 * run later, outside the box (git hooks and config, CI workflows, editor and agent settings,
 * shell start-up files, build tool configs that run code), and the policy file itself.
 */
export const DEFAULT_PROTECT: readonly string[] = [
  ".git/hooks/**",
  ".git/config",
  ".git/config.worktree",
  // commondir and gitdir files point git at another directory, whose config and hooks it
  // then runs; worktrees and submodules keep their own config and hooks.
  ".git/commondir",
  ".git/worktrees/**",
  ".git/modules/**",
  ".git/info/**",
  ".gitmodules",
  ".gitattributes",
  ".github/workflows/**",
  ".github/actions/**",
  ".gitlab-ci.yml",
  ".circleci/**",
  ".husky/**",
  ".vscode/**",
  ".idea/**",
  ".devcontainer/**",
  ".claude/**",
  ".cursor/**",
  ".codex/**",
  ".gemini/**",
  ".aider*",
  ".mcp.json",
  ".envrc",
  ".bashrc",
  ".bash_profile",
  ".profile",
  ".zshrc",
  ".zprofile",
  ".npmrc",
  ".yarnrc",
  ".yarnrc.yml",
  ".pypirc",
  "ringfence.yaml",
  "ringfence-crew.yaml",
];

/**
 * Host secret stores, hidden unless a policy names the store (or a path inside it) in
 * filesystem.read. Naming a parent such as `~` does not reveal them.
 */
export const SECRET_STORES: readonly string[] = [
  "~/.ssh",
  "~/.gnupg",
  "~/.aws",
  "~/.azure",
  "~/.config/gcloud",
  "~/.config/gh",
  "~/.config/op",
  "~/.docker",
  "~/.kube",
  "~/.npmrc",
  "~/.yarnrc",
  "~/.pypirc",
  "~/.netrc",
  "~/.git-credentials",
  "~/.password-store",
  "~/.vault-token",
  "~/.terraform.d",
  "~/.local/share/keyrings",
  "~/.bash_history",
  "~/.zsh_history",
  "/etc/shadow",
  "/etc/gshadow",
  "/etc/sudoers",
  "/etc/sudoers.d",
  "/etc/ssh",
];

/** Host system directories visible read-only, so the user's toolchain works inside the box. */
export const SYSTEM_READ: readonly string[] = [
  "/usr",
  "/bin",
  "/sbin",
  "/lib",
  "/lib32",
  "/lib64",
  "/libx32",
  "/etc",
  "/opt",
];

/** Host directories that are hidden unless the policy names them (listed for explain output). */
export const SYSTEM_HIDDEN: readonly string[] = ["/home", "/root", "/run", "/var", "/srv", "/mnt", "/media"];

/**
 * Limits of the built-in default policy, used when no policy file is loaded. They keep a fork
 * bomb or a memory hog from taking the host down, and leave room for builds: 1,024 processes
 * and threads (the kernel counts each thread, and a Node process has about ten), 4 GiB of
 * memory. No CPU share and no timeout, because an interactive agent may run for hours. A policy
 * file sets its own resources, and has no limit for a field it leaves out.
 */
export const DEFAULT_RESOURCES = {
  cpus: null,
  memoryBytes: 4 * 1024 * 1024 * 1024,
  processes: 1024,
  timeoutMs: null,
  tmpBytes: null,
} as const satisfies Record<string, number | null>;

/** Ports a network rule covers when it names none. */
export const DEFAULT_PORTS: readonly number[] = [443, 80];
