/**
 * Many managed clusters in one process, for the agents scenario: `--count` TunnelAgents (the
 * class the tunnel-agent binary runs), agent i serving cluster `<prefix>-<first + i>` with a
 * certificate of its own from the workspace's CA, its own HTTP/2 connections to the server
 * and its own agent stream, opened with the binary's defaults. A tunnel-agent process per
 * cluster would cost tens of MiB each; the server cannot tell these apart from them.
 *
 * Each agent aliases its cluster's name to 127.0.0.1, so a dial to `<cluster>:PORT` reaches
 * a target on this host. The agents have no health listener and log warnings only.
 * `--single-stream=true` carries both directions on one connection, as the reference agent
 * (and tunnel-agent --single-stream) does.
 *
 * The bench drives the process over IPC. At start it issues the certificates and reports
 * `{ ready, issueSeconds }`; then it answers
 *   { op: 'connect' }  starts every agent, at most `--concurrency` connecting at once, and
 *                      reports { op: 'connected', connected, failed, seconds, firstFailure }
 *   { op: 'stop' }     stops every agent (DRAIN, then close) and reports { op: 'stopped', seconds }
 */
import { readFileSync } from 'node:fs';
import { NEVER } from 'rxjs';
import { TunnelAgent } from '../../lib/agent/tunnel-agent.js';
import { issueCertificate, type CertificateAndKey } from '../../lib/pki/certificates.js';
import { AGENT_ORGANIZATION, agentCommonName } from '../../lib/pki/identities.js';
import type { TlsMaterial, TlsSource } from '../../lib/pki/tls-source.js';
import { setLogLevel } from '../../lib/observe/log.js';
import { flag, numberFlag } from './helper-main.js';
import { now, pool } from './measure.js';

export type AgentsCommand = { op: 'connect' } | { op: 'stop' };

export type AgentsReport =
  | { op: 'ready'; issueSeconds: number }
  | { op: 'connected'; connected: number; failed: number; seconds: number; firstFailure?: string }
  | { op: 'stopped'; seconds: number }
  | { op: 'error'; message: string };

/** How long one agent may take to hold its stream before it counts as failed (it goes on trying). */
const CONNECT_TIMEOUT_MS = 60_000;

/** Certificates that never change: none of these agents lives long enough to rotate. */
function fixedTls(material: TlsMaterial): TlsSource {
  return { current: () => material, changes: NEVER, close: () => undefined };
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(what)), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const send = (report: AgentsReport) => process.send?.(report);

function main(): void {
  process.on('disconnect', () => process.exit(0));
  setLogLevel('warn');
  const server = flag('server');
  const prefix = flag('prefix');
  const first = numberFlag('first', 0);
  const count = numberFlag('count');
  const concurrency = numberFlag('concurrency', 50);
  const singleStream = flag('single-stream', 'false') === 'true';
  const ca: CertificateAndKey = { certPem: readFileSync(flag('ca-cert'), 'utf8'), keyPem: readFileSync(flag('ca-key'), 'utf8') };
  const caPem = Buffer.from(ca.certPem);

  // A hub's agents each hold a certificate for their own cluster: the server checks that
  // the cluster an agent announces is the one its certificate names.
  const issueStart = now();
  const agents = Array.from({ length: count }, (_, i) => {
    const cluster = `${prefix}-${first + i}`;
    const issued = issueCertificate(ca, { commonName: agentCommonName(cluster), organization: [AGENT_ORGANIZATION], usage: 'client' });
    return new TunnelAgent({
      serverAddress: server,
      tls: fixedTls({ key: Buffer.from(issued.keyPem), cert: Buffer.from(issued.certPem), ca: caPem }),
      agentIdentifiers: new URLSearchParams({ host: cluster }).toString(),
      target: { hostAliases: new Map([[cluster, '127.0.0.1']]) },
      singleStream,
    });
  });
  send({ op: 'ready', issueSeconds: (now() - issueStart) / 1000 });

  process.on('message', (command: AgentsCommand) => {
    const run = command.op === 'connect' ? connectAll(agents, concurrency) : stopAll(agents);
    run.then(send, (err: Error) => send({ op: 'error', message: err.message }));
  });
}

async function connectAll(agents: TunnelAgent[], concurrency: number): Promise<AgentsReport> {
  const start = now();
  let failed = 0;
  let firstFailure: string | undefined;
  await pool(agents.length, concurrency, async (i) => {
    try {
      await agents[i].start();
      await within(agents[i].connected, CONNECT_TIMEOUT_MS, `agent ${i} held no stream to the server within ${CONNECT_TIMEOUT_MS / 1000} s`);
    } catch (err) {
      failed++;
      firstFailure ??= (err as Error).message;
    }
  });
  return { op: 'connected', connected: agents.length - failed, failed, seconds: (now() - start) / 1000, firstFailure };
}

async function stopAll(agents: TunnelAgent[]): Promise<AgentsReport> {
  const start = now();
  await Promise.all(agents.map((agent) => agent.stop()));
  return { op: 'stopped', seconds: (now() - start) / 1000 };
}

main();
