import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { probers } from '../../../src/probers/index.js';
import { createVethNamespace, netnsUnavailable, type VethNamespace } from '../../helpers/netns.js';
import { probe } from '../../helpers/probe.js';

const emptyDir = mkdtempSync(join(tmpdir(), 'continuity-icmp-'));
afterAll(() => rmSync(emptyDir, { recursive: true, force: true }));

/** Pids of `ping` processes that are children of this test process (to prove an abort killed them). */
function childPings(): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after the ')'.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (comm === 'ping' && ppid === process.pid) pids.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  return pids;
}

describe('icmp prober', () => {
  it('pings 127.0.0.1', async () => {
    const r = await probe('icmp', { host: '127.0.0.1' });
    expect(r).toMatchObject({ ok: true, reason: 'ok' });
    expect(r.observed.packet_loss_percent).toBe(0);
    expect(r.observed.rtt_seconds).toBeGreaterThan(0);
    expect(r.observed.rtt_seconds).toBeLessThan(0.1);
  });

  it('pings ::1 (IPv6 picked from the address)', async () => {
    const r = await probe('icmp', { host: '::1' });
    expect(r).toMatchObject({ ok: true, reason: 'ok' });
  });

  it('fails when asked to ping an IPv4 address over IPv6', async () => {
    const r = await probe('icmp', { host: '127.0.0.1', ipv6: true });
    expect(r.ok).toBe(false);
    expect(r.reason).toMatch(/^ping: 127\.0\.0\.1: /);
  });

  it('sends count echo requests and reports the average', async () => {
    const r = await probe('icmp', { host: '127.0.0.1', count: 3 }, { conditions: ['packet_loss_percent == 0.0 && rtt_seconds < 0.1'] });
    expect(r).toMatchObject({ ok: true, reason: 'ok' });
  });

  it('fails when the average rtt is over max_rtt_seconds', async () => {
    const r = await probe('icmp', { host: '127.0.0.1', max_rtt_seconds: 0.000001 });
    expect(r.ok).toBe(false);
    expect(r.reason).toMatch(/^average rtt \d+\.?\d*ms \(max 0\.001ms\)$/);
    expect((await probe('icmp', { host: '127.0.0.1', max_rtt_seconds: 1 })).ok).toBe(true);
  });

  it('says when ping is not installed', async () => {
    const saved = process.env.PATH;
    process.env.PATH = emptyDir;
    try {
      expect(await probe('icmp', { host: '127.0.0.1' })).toMatchObject({
        ok: false,
        reason: 'ping not found on PATH: install iputils-ping',
      });
    } finally {
      process.env.PATH = saved;
    }
    expect(await probe('icmp', { host: '127.0.0.1', ping_path: join(emptyDir, 'ping') })).toMatchObject({
      ok: false,
      reason: `${join(emptyDir, 'ping')} not found: install iputils-ping`,
    });
  });

  it('kills ping when the signal aborts', async () => {
    const abort = new AbortController();
    const running = probers.icmp.run(
      { host: '127.0.0.1', count: 50 },
      { probeId: 'abort', signal: abort.signal, timeoutMs: 30_000, stateDir: emptyDir },
    );
    await new Promise((r) => setTimeout(r, 300));
    expect(childPings()).toHaveLength(1);
    abort.abort(new Error('stopped by the test'));
    expect(await running).toMatchObject({ ok: false, reason: 'stopped by the test' });
    await expect.poll(childPings, { timeout: 2000 }).toEqual([]);
  });

  const unavailable = netnsUnavailable();
  describe.skipIf(unavailable !== undefined)(`a host in a network namespace${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
    let ns: VethNamespace;
    beforeAll(async () => {
      ns = await createVethNamespace();
    });
    afterAll(async () => {
      await ns?.remove();
    });

    it('answers while its link is up', async () => {
      const r = await probe('icmp', { host: ns.nsAddress });
      expect(r).toMatchObject({ ok: true, reason: 'ok' });
    });

    it('fails with 100% packet loss once its link is down', async () => {
      await ns.setLinkUp(false);
      try {
        const r = await probe('icmp', { host: ns.nsAddress }, { timeoutMs: 1500 });
        expect(r).toMatchObject({ ok: false, reason: `no reply from ${ns.nsAddress} (100% packet loss, 1 sent)` });
        expect(r.observed.packet_loss_percent).toBe(100);
        expect(r.durationSeconds).toBeLessThan(1.5);
      } finally {
        await ns.setLinkUp(true);
      }
    });

    it('fails with 100% packet loss while it drops pings, and recovers', async () => {
      await ns.ignorePings(true);
      try {
        const r = await probe('icmp', { host: ns.nsAddress, count: 2 }, { timeoutMs: 2000 });
        expect(r).toMatchObject({ ok: false, reason: `no reply from ${ns.nsAddress} (100% packet loss, 2 sent)` });
      } finally {
        await ns.ignorePings(false);
      }
      expect((await probe('icmp', { host: ns.nsAddress })).ok).toBe(true);
    });
  });
});
