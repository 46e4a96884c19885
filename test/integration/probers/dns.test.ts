import dgram from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dns2 from 'dns2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { probers } from '../../../src/probers/index.js';
import { probe } from '../../helpers/probe.js';

const { Packet } = dns2;
const IN = Packet.CLASS.IN;

/** The zone the test server answers; any other name under .test is NXDOMAIN. */
const zone: Record<string, Partial<Record<number, Array<Partial<dns2.Packet.Resource>>>>> = {
  'db.example.test': {
    [Packet.TYPE.A]: [{ address: '10.0.0.5' }, { address: '10.0.0.6' }],
    [Packet.TYPE.AAAA]: [{ address: '2001:db8::5' }],
    [Packet.TYPE.TXT]: [{ data: ['v=spf1 ', 'include:_spf.example.test -all'] }],
  },
  'www.example.test': { [Packet.TYPE.CNAME]: [{ domain: 'web.example.test' }] },
  'example.test': {
    [Packet.TYPE.MX]: [{ exchange: 'mail.example.test', priority: 10 }],
    [Packet.TYPE.NS]: [{ ns: 'ns1.example.test' }],
  },
  '_postgresql._tcp.example.test': {
    [Packet.TYPE.SRV]: [{ priority: 10, weight: 5, port: 5432, target: 'db.example.test' }],
  },
};
/** Names that make the server answer with an error code (RCODE). */
const rcodes: Record<string, number> = { 'broken.example.test': 2, 'refused.example.test': 5 };

describe('dns prober', () => {
  let server: dns2.DnsServer;
  let serverAddr: string;
  let silent: dgram.Socket;
  let silentAddr: string;
  let stateDir: string;

  beforeAll(async () => {
    server = dns2.createServer({
      udp: true,
      handle: (request, send) => {
        const response = Packet.createResponseFromRequest(request);
        const [q] = request.questions;
        if (!q) return void send(response);
        const records = zone[q.name];
        if (q.name in rcodes) response.header.rcode = rcodes[q.name]!;
        else if (!records) response.header.rcode = 3; // NXDOMAIN
        for (const r of records?.[q.type] ?? []) {
          response.answers.push({ name: q.name, type: q.type, class: IN, ttl: 60, ...r } as dns2.Packet.Resource);
        }
        void send(response);
      },
    });
    const addresses = await server.listen({ udp: { port: 0, address: '127.0.0.1' } });
    serverAddr = `127.0.0.1:${addresses.udp!.port}`;
    silent = dgram.createSocket('udp4');
    await new Promise<void>((r) => silent.bind(0, '127.0.0.1', r));
    silentAddr = `127.0.0.1:${silent.address().port}`;
    stateDir = mkdtempSync(join(tmpdir(), 'continuity-dns-'));
  });
  afterAll(async () => {
    await server?.close();
    silent?.close();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  it('resolves A records by default and observes the answers', async () => {
    const r = await probe('dns', { name: 'db.example.test', server: serverAddr });
    expect(r).toMatchObject({ ok: true, reason: 'ok' });
    expect(r.observed).toEqual({ answers: ['10.0.0.5', '10.0.0.6'], answer_count: 2 });
  });

  it('requires every expected answer', async () => {
    expect((await probe('dns', { name: 'db.example.test', server: serverAddr, expect: ['10.0.0.6'] })).ok).toBe(true);
    const r = await probe('dns', { name: 'db.example.test', server: serverAddr, expect: ['10.0.0.5', '10.0.0.7'] });
    expect(r).toMatchObject({
      ok: false,
      reason: `db.example.test: expected "10.0.0.7" among the A answers at ${serverAddr}, got "10.0.0.5", "10.0.0.6"`,
    });
    expect(r.observed.answer_count).toBe(2);
  });

  it.each([
    ['AAAA', 'db.example.test', ['2001:db8::5'], ['2001:DB8:0:0:0:0:0:5']],
    ['CNAME', 'www.example.test', ['web.example.test'], ['Web.Example.Test.']],
    ['MX', 'example.test', ['10 mail.example.test'], ['10 mail.example.test.']],
    ['NS', 'example.test', ['ns1.example.test'], ['ns1.example.test']],
    ['SRV', '_postgresql._tcp.example.test', ['10 5 5432 db.example.test'], ['10 5 5432 db.example.test']],
    ['TXT', 'db.example.test', ['v=spf1 include:_spf.example.test -all'], ['v=spf1 include:_spf.example.test -all']],
  ])('resolves %s records as dig +short prints them', async (type, name, answers, expected) => {
    const r = await probe('dns', { name, server: serverAddr, type, expect: expected });
    expect(r).toMatchObject({ ok: true, reason: 'ok' });
    expect(r.observed.answers).toEqual(answers);
  });

  it('compares TXT answers exactly', async () => {
    const r = await probe('dns', { name: 'db.example.test', server: serverAddr, type: 'TXT', expect: ['V=SPF1'] });
    expect(r.ok).toBe(false);
  });

  it('fails on NXDOMAIN', async () => {
    const r = await probe('dns', { name: 'missing.example.test', server: serverAddr });
    expect(r).toMatchObject({ ok: false, reason: `missing.example.test: no such name (NXDOMAIN) at ${serverAddr}` });
    expect(r.observed).toEqual({ answers: [], answer_count: 0 });
  });

  it('fails when the name has no records of the type', async () => {
    const r = await probe('dns', { name: 'www.example.test', server: serverAddr, type: 'MX' });
    expect(r).toMatchObject({ ok: false, reason: `www.example.test: no MX records at ${serverAddr}` });
  });

  it('fails on SERVFAIL and REFUSED', async () => {
    expect(await probe('dns', { name: 'broken.example.test', server: serverAddr })).toMatchObject({
      ok: false,
      reason: `broken.example.test: server failure (SERVFAIL) at ${serverAddr}`,
    });
    expect(await probe('dns', { name: 'refused.example.test', server: serverAddr })).toMatchObject({
      ok: false,
      reason: `refused.example.test: query refused (REFUSED) by ${serverAddr}`,
    });
  });

  it('fails when nothing listens on the server port', async () => {
    const gone = dgram.createSocket('udp4');
    await new Promise<void>((r) => gone.bind(0, '127.0.0.1', r));
    const goneAddr = `127.0.0.1:${gone.address().port}`;
    await new Promise<void>((r) => gone.close(() => r()));
    const r = await probe('dns', { name: 'db.example.test', server: goneAddr });
    expect(r).toMatchObject({ ok: false, reason: `db.example.test: connection refused by ${goneAddr}` });
  });

  it('applies conditions to the answers', async () => {
    const r = await probe('dns', { name: 'db.example.test', server: serverAddr }, { conditions: ['answer_count == 1'] });
    expect(r).toMatchObject({ ok: false, reason: 'condition "answer_count == 1" is false (answer_count=2)' });
    const member = await probe('dns', { name: 'db.example.test', server: serverAddr }, { conditions: ['"10.0.0.6" in answers'] });
    expect(member.ok).toBe(true);
  });

  it('times out against a server that never answers', async () => {
    const r = await probe('dns', { name: 'db.example.test', server: silentAddr }, { timeoutMs: 300 });
    expect(r).toMatchObject({ ok: false, reason: 'timed out after 300ms' });
    expect(r.durationSeconds).toBeGreaterThanOrEqual(0.29);
    expect(r.durationSeconds).toBeLessThan(3);
  });

  it("says so when the resolver's own timeout comes first", async () => {
    const r = await probers.dns.run(
      { name: 'db.example.test', server: silentAddr },
      { probeId: 'resolver-timeout', signal: new AbortController().signal, timeoutMs: 100, stateDir },
    );
    expect(r).toMatchObject({ ok: false, reason: `db.example.test: no answer from ${silentAddr} (timed out)` });
  });

  it('stops waiting when the signal aborts', async () => {
    const abort = new AbortController();
    setTimeout(() => abort.abort(new Error('stopped by the test')), 100);
    const t0 = Date.now();
    const r = await probers.dns.run(
      { name: 'db.example.test', server: silentAddr },
      { probeId: 'abort', signal: abort.signal, timeoutMs: 10_000, stateDir },
    );
    expect(r).toMatchObject({ ok: false, reason: `db.example.test: no answer from ${silentAddr} (stopped by the test)` });
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('validates the server address at load', () => {
    const validate = (server: string) => probers.dns.validate!({ name: 'x.test', server });
    expect(validate('10.0.0.53')).toEqual([]);
    expect(validate('10.0.0.53:5353')).toEqual([]);
    expect(validate('[fd00::53]:5353')).toEqual([]);
    expect(validate('ns1.example.test')).toEqual([
      ['server', 'must be an IP address, optionally with a port (10.0.0.53, 10.0.0.53:5353, [fd00::53]:5353)'],
    ]);
  });
});
