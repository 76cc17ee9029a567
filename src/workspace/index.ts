export * from "./apply.js";
export * from "./changes.js";
export * from "./manifest.js";
export * from "./overlay-record.js";
export * from "./review.js";
