export * from './packet-stream.js';
export * from './tunnel-connection.js';
export * from './multiplexer.js';
export * from './dialing-mux.js';
export * from './accepting-mux.js';
export * from './splice.js';
export * from './dial-id.js';
