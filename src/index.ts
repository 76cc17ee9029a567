export * from "./policy/index.js";
export * from "./gateway/index.js";
export * from "./audit/index.js";
export * from "./crew/index.js";
export * from "./sdk/index.js";
