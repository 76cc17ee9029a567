import { probeHost, type DoctorReport } from "../sandbox/probe.js";
import { vmCapabilities } from "../vm/doctor.js";

interface Output {
  out: (text: string) => void;
}

/** Formats a doctor report as aligned lines: status, check name, detail. */
export function formatDoctorReport(report: DoctorReport): string[] {
  const width = Math.max(...report.capabilities.map((capability) => capability.name.length));
  const lines = report.capabilities.map((capability) => `${capability.status.padEnd(7)} ${capability.name.padEnd(width)}  ${capability.detail}`);
  lines.push(`backend auto: ${report.autoBackend.name ?? "none"} (${report.autoBackend.reason})`);
  return lines;
}

/** `ringfence doctor`: prints what this host can enforce; exits 1 when no backend is usable. */
export function doctorCommand(options: { json?: boolean } = {}, io: Output = { out: (text) => process.stdout.write(text) }): number {
  const report = probeHost();
  report.capabilities.push(...vmCapabilities());
  io.out(options.json === true ? `${JSON.stringify(report, null, 2)}\n` : `${formatDoctorReport(report).join("\n")}\n`);
  return report.autoBackend.name === null ? 1 : 0;
}
