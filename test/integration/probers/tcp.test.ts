import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closedPort, silentServer } from '../../helpers/net.js';
import { probe } from '../../helpers/probe.js';

describe('tcp prober', () => {
  let echo: net.Server;
  let echoPort: number;
  let silent: Awaited<ReturnType<typeof silentServer>>;

  beforeAll(async () => {
    // The prober resets connections it is done with: the server must not die of ECONNRESET.
    echo = net.createServer((s) => s.on('error', () => {}).on('data', (d) => s.write(`+${d.toString().trim()}\r\n`)));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    echoPort = (echo.address() as net.AddressInfo).port;
    silent = await silentServer();
  });
  afterAll(async () => {
    echo.close();
    await silent.close();
  });

  it('succeeds on an open port', async () => {
    const r = await probe('tcp', { host: '127.0.0.1', port: echoPort });
    expect(r).toMatchObject({ ok: true, reason: 'ok' });
    expect(r.observed.connect_seconds).toBeGreaterThan(0);
  });

  it('sends and expects a reply', async () => {
    const r = await probe('tcp', { host: '127.0.0.1', port: echoPort, send: 'PING\r\n', expect: '+PING' });
    expect(r.ok).toBe(true);
  });

  it('fails when the reply never contains the expected text, at the timeout', async () => {
    const r = await probe('tcp', { host: '127.0.0.1', port: echoPort, send: 'PING\r\n', expect: 'PONG' }, { timeoutMs: 300 });
    expect(r).toMatchObject({ ok: false, reason: 'timed out after 300ms' });
  });

  it('reports a refused connection in the words of the OS', async () => {
    const port = await closedPort();
    const r = await probe('tcp', { host: '127.0.0.1', port });
    expect(r).toMatchObject({ ok: false, reason: `connect ECONNREFUSED 127.0.0.1:${port}` });
  });

  it('times out against a peer that accepts and never answers', async () => {
    const r = await probe('tcp', { host: '127.0.0.1', port: silent.port, send: 'hello\n', expect: 'x' }, { timeoutMs: 250 });
    expect(r.ok).toBe(false);
    expect(r.reason).toBe('timed out after 250ms');
    expect(r.durationSeconds).toBeGreaterThanOrEqual(0.24);
    expect(r.durationSeconds).toBeLessThan(3);
  });

  it('applies conditions to what it observed', async () => {
    const r = await probe(
      'tcp',
      { host: '127.0.0.1', port: echoPort, send: 'a\n', expect: '+a' },
      { conditions: ['reply.startsWith("-")'] },
    );
    expect(r.ok).toBe(false);
    expect(r.reason).toBe('condition "reply.startsWith("-")" is false (reply="+a\\r\\n")');
  });
});
