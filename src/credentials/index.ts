export { createCredentialBroker, trustEnv, SYSTEM_CA_BUNDLES, type CredentialBroker, type CredentialBrokerOptions } from "./broker.js";
export { CredentialError, resolveSecret, resolveSecrets, DEFAULT_COMMAND_TIMEOUT_MS, MIN_SECRET_LENGTH } from "./secret-source.js";
export { makePlaceholder, PLACEHOLDER_PREFIX } from "./placeholder.js";
export { createRunCertificateAuthority, type RunCertificateAuthority } from "./certificate-authority.js";
export { planRequest, type RequestPlan, type RequestHeadView } from "./request-rewrite.js";
export { StreamMatcher, type Needle } from "./stream-matcher.js";
