export { checkCrewFile, looksLikeCrewFile, type CrewCheckResult, type CrewLoadOptions } from "./crew-file.js";
export { decideMessage, type ChannelRules, type MessageDecision, type MessageRequest, type RejectCode } from "./channel-decision.js";
export { CrewBroker, type AgentTraffic, type BrokerRejectCode, type CrewBrokerOptions, type DeliveredMessage } from "./broker.js";
export { brokerRelay } from "./broker-relay.js";
export { CREW_HOST } from "./send-request.js";
export { runCrew, type CrewResult, type CrewUpOptions } from "./supervisor.js";
export { crewStateDir, readCrewState, type AgentStatus, type CrewState } from "./crew-state.js";
export type { Channel, Crew, CrewAgent, Rate } from "./types.js";
