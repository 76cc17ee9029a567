const AGENT_NAME = /^[a-z][a-z0-9-]*$/;

/** `ringfence run NAME` or `ringfence run NAME -- ARGS...`, split into the name and the arguments. */
export function splitAgentCommand(command: readonly string[]): { name: string; args: string[] } | null {
  const [name, separator, ...rest] = command;
  if (name === undefined || !AGENT_NAME.test(name)) return null;
  if (separator === undefined) return { name, args: [] };
  if (separator === "--") return { name, args: rest };
  return null;
}
