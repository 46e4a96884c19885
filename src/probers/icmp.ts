import { spawn, type ChildProcess } from 'node:child_process';
import { isIPv4, isIPv6 } from 'node:net';
import { Type } from '@sinclair/typebox';
import { defineProber, reasonOf, type Observation } from './types.js';

/** Seconds between echo requests when count > 1 (ping's own default is 1s; 0.2s is the floor for non-root users). */
const INTERVAL_SECONDS = 0.2;

/** icmp: ping a host through the system's iputils `ping` and check loss and round-trip time. */
export const icmp = defineProber({
  description:
    "Ping a host with the system's ping (iputils); fails when no reply comes back or the average round trip is too slow " +
    '(partial loss passes unless a condition such as `packet_loss_percent < 50` says otherwise).',
  settings: Type.Object(
    {
      host: Type.String({ minLength: 1, pattern: '^[^-\\s][^\\s]*$', description: 'Host name or address to ping.' }),
      count: Type.Optional(
        Type.Integer({ minimum: 1, maximum: 100, default: 1, description: `Echo requests to send, ${INTERVAL_SECONDS}s apart.` }),
      ),
      max_rtt_seconds: Type.Optional(
        Type.Number({ exclusiveMinimum: 0, description: 'Fail when the average round-trip time is longer than this.' }),
      ),
      ipv6: Type.Optional(
        Type.Boolean({
          description: 'Force IPv6 (true) or IPv4 (false); by default an address picks its own family and a name lets ping choose.',
        }),
      ),
      ping_path: Type.Optional(
        Type.String({ minLength: 1, default: 'ping', description: 'The iputils ping program: a name looked up on PATH, or a path.' }),
      ),
    },
    { additionalProperties: false },
  ),
  observed: { rtt_seconds: 'double', packet_loss_percent: 'double' },
  run(s, ctx) {
    const count = s.count ?? 1;
    const pingPath = s.ping_path ?? 'ping';
    const family = s.ipv6 === true || (s.ipv6 === undefined && isIPv6(s.host)) ? ['-6'] : s.ipv6 === false || isIPv4(s.host) ? ['-4'] : [];
    // Ping must give up on a silent host before the probe's deadline, so the reason is its loss report.
    const budget = Math.min(ctx.timeoutMs * 0.8, ctx.timeoutMs - 200) / 1000 - (count - 1) * INTERVAL_SECONDS;
    const wait = Math.max(0.1, budget).toFixed(1);
    const args = [...family, '-n', '-c', String(count), '-i', String(INTERVAL_SECONDS), '-W', wait, '--', s.host];

    return new Promise<Observation>((resolve) => {
      let settled = false;
      let stdout = '';
      let stderr = '';
      let child: ChildProcess | undefined;
      const finish = (result: Observation) => {
        if (settled) return;
        settled = true;
        ctx.signal.removeEventListener('abort', onAbort);
        if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        resolve(result);
      };
      const onAbort = () => finish({ ok: false, reason: reasonOf(ctx.signal.reason), observed: {} });
      if (ctx.signal.aborted) return onAbort();
      try {
        // LC_ALL=C keeps the summary lines in the English this parser reads.
        child = spawn(pingPath, args, { env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
      } catch (err) {
        return finish({ ok: false, reason: `${pingPath}: ${reasonOf(err)}`, observed: {} });
      }
      ctx.signal.addEventListener('abort', onAbort, { once: true });
      child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      child.once('error', (err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') return finish({ ok: false, reason: reasonOf(err), observed: {} });
        const where = pingPath.includes('/') ? '' : ' on PATH';
        finish({ ok: false, reason: `${pingPath} not found${where}: install iputils-ping`, observed: {} });
      });
      child.once('close', (code) => finish(verdict(s.host, stdout, stderr, code, s.max_rtt_seconds)));
    });
  },
});

/** Reads ping's summary: `3 packets transmitted, 3 received, 0% packet loss` and `rtt min/avg/max/mdev = a/b/c/d ms`. */
function verdict(host: string, stdout: string, stderr: string, code: number | null, maxRtt: number | undefined): Observation {
  const sent = /(\d+) packets transmitted/.exec(stdout);
  const received = /(\d+) received/.exec(stdout);
  const loss = /([\d.]+)% packet loss/.exec(stdout);
  if (!sent || !received || !loss) {
    const said = stderr.trim().split('\n').at(-1)?.trim();
    return { ok: false, reason: said || `ping exited with code ${code} and no summary`, observed: {} };
  }
  const packetLoss = Number(loss[1]);
  const rtt = /= [\d.]+\/([\d.]+)\/[\d.]+\/[\d.]+ ms/.exec(stdout);
  const observed: Record<string, unknown> = { packet_loss_percent: packetLoss };
  if (rtt) observed.rtt_seconds = Number(rtt[1]) / 1000;
  if (Number(received[1]) === 0) {
    // An ICMP error (`From 10.0.0.1 icmp_seq=1 Destination Host Unreachable`) says more than the loss alone.
    const icmpError = /^From \S+ icmp_seq=\d+ (.+)$/m.exec(stdout)?.[1]?.trim();
    return {
      ok: false,
      reason: `no reply from ${host}${icmpError ? `: ${icmpError}` : ''} (${packetLoss}% packet loss, ${sent[1]} sent)`,
      observed,
    };
  }
  const rttSeconds = observed.rtt_seconds as number | undefined;
  if (maxRtt !== undefined && rttSeconds !== undefined && rttSeconds > maxRtt) {
    return { ok: false, reason: `average rtt ${milliseconds(rttSeconds)} (max ${milliseconds(maxRtt)})`, observed };
  }
  return { ok: true, observed };
}

/** Round trips are often well under a millisecond, so keep three decimals: 0.000045 -> "0.045ms". */
function milliseconds(seconds: number): string {
  return `${+(seconds * 1000).toFixed(3)}ms`;
}
