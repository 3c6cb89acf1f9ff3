/**
 * The server role: the tunnel server with its agent listener, frontends and health, for a
 * program that runs one in its own process (the tunnel-server binary is one such program).
 */
export * from './tunnel-server.js';
export * from './proxy-strategies.js';
export type { Backend } from './backend.js';
export { AgentRegistry } from './agent-registry.js';
