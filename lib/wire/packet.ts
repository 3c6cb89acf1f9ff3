/**
 * The packets of the konnectivity protocol as plain objects. Ids are bigint because the
 * dial id (`random`) is a uniform 63-bit value that a JS number cannot hold exactly.
 */
import { PacketType } from './gen/client.js';

export { PacketType };

export interface DialRequestPacket {
  type: PacketType.DIAL_REQ;
  protocol: string;
  address: string;
  random: bigint;
}

export interface DialResponsePacket {
  type: PacketType.DIAL_RSP;
  error: string;
  connectID: bigint;
  random: bigint;
}

export interface CloseRequestPacket {
  type: PacketType.CLOSE_REQ;
  connectID: bigint;
}

export interface CloseResponsePacket {
  type: PacketType.CLOSE_RSP;
  error: string;
  connectID: bigint;
}

export interface DataPacket {
  type: PacketType.DATA;
  connectID: bigint;
  data: Uint8Array;
  /** Defined by the protocol, never used by any implementation. */
  error?: string;
}

export interface CloseDialPacket {
  type: PacketType.DIAL_CLS;
  random: bigint;
}

export interface DrainPacket {
  type: PacketType.DRAIN;
}

/** tke-anp-tunnel extension, negotiated through stream metadata. */
export interface WindowUpdatePacket {
  type: PacketType.WINDOW_UPDATE;
  connectID: bigint;
  bytes: bigint;
}

/** A packet whose type this implementation does not know (a newer peer's); ignored. */
export interface UnknownPacket {
  type: number;
  unknown: true;
}

export type KnownPacket =
  | DialRequestPacket
  | DialResponsePacket
  | CloseRequestPacket
  | CloseResponsePacket
  | DataPacket
  | CloseDialPacket
  | DrainPacket
  | WindowUpdatePacket;

export type Packet = KnownPacket | UnknownPacket;

export function isUnknown(packet: Packet): packet is UnknownPacket {
  return (packet as UnknownPacket).unknown === true;
}

export function packetTypeName(type: number): string {
  return PacketType[type] ?? `UNKNOWN(${type})`;
}

export const dialRequest = (address: string, random: bigint): DialRequestPacket =>
  ({ type: PacketType.DIAL_REQ, protocol: 'tcp', address, random });
export const dialResponse = (random: bigint, connectID: bigint, error = ''): DialResponsePacket =>
  ({ type: PacketType.DIAL_RSP, error, connectID, random });
export const closeRequest = (connectID: bigint): CloseRequestPacket =>
  ({ type: PacketType.CLOSE_REQ, connectID });
export const closeResponse = (connectID: bigint, error = ''): CloseResponsePacket =>
  ({ type: PacketType.CLOSE_RSP, error, connectID });
export const dataPacket = (connectID: bigint, data: Uint8Array): DataPacket =>
  ({ type: PacketType.DATA, connectID, data });
export const closeDial = (random: bigint): CloseDialPacket => ({ type: PacketType.DIAL_CLS, random });
export const drain = (): DrainPacket => ({ type: PacketType.DRAIN });
export const windowUpdate = (connectID: bigint, bytes: number): WindowUpdatePacket =>
  ({ type: PacketType.WINDOW_UPDATE, connectID, bytes: BigInt(bytes) });

/** The same bytes as a Buffer, without copying. */
export function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
