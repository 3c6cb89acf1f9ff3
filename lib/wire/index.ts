export * from './packet.js';
export * from './codec.js';
export * from './protocol.js';
