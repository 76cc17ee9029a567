export * from "./policy/index.js";
export * from "./gateway/index.js";
