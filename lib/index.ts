/**
 * tke-anp-tunnel as a library. Clients (dialers and http agents) are what most programs
 * need; the server and agent roles and the PKI are here for programs that run them
 * in-process. Each part is also its own entry point: tke-anp-tunnel/client, /server,
 * /agent, /pki, /mux and /wire.
 */
export * from './client/index.js';
export { TunnelServer, type TunnelServerOptions, type ListeningAddresses } from './server/index.js';
export { TunnelAgent, type TunnelAgentOptions } from './agent/index.js';
export { FileTlsSource, localPkiTlsSource, ensureLocalPki, type TlsSource, type TlsMaterial } from './pki/index.js';
export { UsageError } from './common/errors.js';
export * from './wire/protocol.js';
