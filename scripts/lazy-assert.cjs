// Stands in for Node's `assert` module in the CLI bundle, for sonic-boom and thread-stream (pino's
// dependencies), which call only `assert(value, message)`. Requiring `assert` after the other
// modules a run loads took 1.1 to 1.3 ms in 7 tries (Node 20.20.2, 2-core Xeon test machine).
// These checks catch misuse by pino, so the module loads only when one fails, and that call
// throws the AssertionError Node's assert throws. NOTE: without a message, that error describes
// this file's call, not the caller's, because Node builds the message from the calling line.
"use strict";

module.exports = function assert(value, message) {
  if (!value) require("node:assert")(value, message);
};
