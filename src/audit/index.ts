export * from "./audit-log.js";
export * from "./hash-chain.js";
export * from "./host-key.js";
export * from "./verify.js";
export * from "./ocsf.js";
export * from "./run-record.js";
export * from "./timeline.js";
