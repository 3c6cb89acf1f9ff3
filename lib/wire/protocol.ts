/**
 * Constants of the konnectivity protocol and of this project's negotiated extensions:
 * gRPC method paths, metadata keys and the error texts peers and operators match on.
 */

/** Neither reference .proto declares a package, so the paths have no prefix. */
export const AGENT_CONNECT_PATH = '/AgentService/Connect';
export const PROXY_PATH = '/ProxyService/Proxy';

/** Metadata keys, lower case as on the wire. */
export const MD_AGENT_ID = 'agentid';
export const MD_AGENT_IDENTIFIERS = 'agentidentifiers';
export const MD_AUTHORIZATION = 'authorization';
export const MD_SERVER_ID = 'serverid';
export const MD_SERVER_COUNT = 'servercount';
/**
 * tke-anp-tunnel extension: a peer that sends this key (value: its receive window per
 * connection, in bytes) speaks WINDOW_UPDATE. Flow control is on for a stream only when
 * both ends announced it; the reference ignores the key.
 */
export const MD_FLOW_CONTROL = 'tke-flow-control';

/**
 * tke-anp-tunnel extension: one connection per direction. An agent that sends this key
 * (value "1") on its Connect stream can carry server -> agent packets on a second stream
 * of its own connection; a server that agrees answers with a token in the same header,
 * and the agent opens the second stream with that token in MD_DOWNLINK_FOR. Each TCP
 * connection then carries bulk one way only, so both can use large HTTP/2 windows (see
 * lib/transport/http2-windows.ts).
 */
export const MD_SPLIT_STREAMS = 'tke-split-streams';
export const MD_DOWNLINK_FOR = 'tke-downlink-for';

/**
 * tke-anp-tunnel extension: push connections, from the managed cluster to the hub. An agent
 * that sends this key (value "1") on its Connect stream has local listeners whose
 * connections go to the server's reverse-proxy routes; a server that agrees answers with a
 * token in the same header, and the agent opens a stream on the same connection with that
 * token in MD_PUSH_FOR. On that stream the roles are reversed: the agent sends DIAL_REQ
 * (the address is a route's name) and the server answers, as it does for a ProxyService
 * client, so connection ids of the two directions never share a table.
 */
export const MD_PUSH = 'tke-push';
export const MD_PUSH_FOR = 'tke-push-for';

/**
 * Our agents announce `tke-server-drain: 1` on Connect: they understand a DRAIN from the
 * server (in the reference DRAIN goes from agent to server only), which the server sends
 * when it shuts down so that the agent takes new dials through its other servers. Agents
 * without it (the reference's) never get one.
 */
export const MD_SERVER_DRAIN = 'tke-server-drain';

/** Error texts, as the reference writes them (clients match on some of them). */
export const ERR_NO_AGENT = 'No agent available';
export const ERR_UNRECOGNIZED_CONNECT_ID = 'unrecognized connectID';
export const ERR_UNKNOWN_CONNECT_ID = 'Unknown connectID';

/**
 * Largest DATA payload we send. The reference agent sends at most 4 KiB per DATA and its
 * server 32 KiB, but every peer accepts gRPC messages up to 4 MiB; larger packets cut the
 * per-message cost of protobuf, gRPC and HTTP/2 framing on every hop.
 */
export const DEFAULT_MAX_DATA_SIZE = 256 * 1024;
export const DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024;

/** Default ports of this project. */
export const DEFAULT_AGENT_PORT = 10262;
export const DEFAULT_SERVER_PORT = 10263;
export const DEFAULT_REVERSE_PROXY_PORT = 10261;
