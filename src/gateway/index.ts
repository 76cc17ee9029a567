export { startGateway, type Gateway, type GatewayOptions } from "./gateway.js";
export type { CredentialEvent, GatewayProtocol, NetworkEvent } from "./events.js";
export type { Interceptor, InterceptedRequestHead, RequestExamination, ResponseScrubber } from "./interceptor.js";
export { MAX_TRANSCRIPT_BODY_BYTES, type TranscriptOptions, type TranscriptRecord } from "./transcript.js";
export { DEFAULT_LIMITS, type GatewayLimits } from "./limits.js";
export { parseClientHello, type ClientHelloResult } from "./client-hello.js";
export { parseGreeting, parseRequest as parseSocksRequest, encodeReply as encodeSocksReply, SocksReply } from "./socks5.js";
export type { LocalServiceHandler, LocalServices } from "./local-service.js";
