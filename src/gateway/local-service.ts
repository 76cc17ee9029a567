import type { IncomingMessage, ServerResponse } from "node:http";

/**
 * Handler of a reserved host name, which the gateway calls instead of dialling the name. It gets
 * the box's plain HTTP request with its absolute-form target and must send a response. Requests
 * reach it only through this gateway, so the gateway identifies the box that sent them.
 */
export type LocalServiceHandler = (request: IncomingMessage, response: ServerResponse) => void;

/**
 * Reserved host names handled in-process, mapped to their handlers. Names must be canonical
 * (lower case) and should sit under a reserved top-level domain such as `.invalid` (RFC 2606),
 * so that no real host can ever carry them.
 */
export type LocalServices = ReadonlyMap<string, LocalServiceHandler>;
