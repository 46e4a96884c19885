import { execFile, spawnSync } from 'node:child_process';
import { networkInterfaces } from 'node:os';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Why network-namespace tests cannot run here (not root, no `ip`), or undefined when they can. */
export function netnsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root to create a network namespace';
  const ip = spawnSync('ip', ['-V'], { stdio: 'ignore' });
  if (ip.error || ip.status !== 0) return 'needs the `ip` command (iproute2)';
  return undefined;
}

/** A network namespace joined to this host by a veth pair with a private /30 used only on that pair. */
export interface VethNamespace {
  /** The namespace name (for `ip netns exec`). */
  name: string;
  /** The host side's address. */
  hostAddress: string;
  /** The namespace side's address: the one to probe. */
  nsAddress: string;
  /** Brings the namespace side of the pair up or down. */
  setLinkUp(up: boolean): Promise<void>;
  /** Makes the namespace ignore (true) or answer (false) ICMP echo requests, like a firewall dropping pings. */
  ignorePings(ignore: boolean): Promise<void>;
  /** Deletes the namespace and with it both ends of the pair; safe to call twice. */
  remove(): Promise<void>;
}

/**
 * Creates a namespace `ctn-<pid>` and a veth pair to it, addressed from 169.254.200.0/21: link-local
 * space, never routed off the host, and away from 169.254.169.254 (cloud metadata). The /30 is
 * picked from the pid so parallel test processes do not collide, and refused if the host has it.
 */
export async function createVethNamespace(): Promise<VethNamespace> {
  const name = `ctn-${process.pid}`;
  const hostIf = `ctv${process.pid}h`.slice(0, 15);
  const nsIf = `ctv${process.pid}n`.slice(0, 15);
  const block = process.pid % 512; // 512 /30 blocks in 169.254.200.0/21
  const base = `169.254.${200 + Math.floor(block / 64)}.`;
  const hostAddress = `${base}${(block % 64) * 4 + 1}`;
  const nsAddress = `${base}${(block % 64) * 4 + 2}`;
  const inUse = Object.values(networkInterfaces())
    .flat()
    .some((a) => a?.address === hostAddress || a?.address === nsAddress);
  if (inUse) throw new Error(`${hostAddress}/30 is already used on this host; not creating the test namespace`);

  const ip = (...args: string[]) => run('ip', args).then(() => undefined);
  let removed = false;
  const remove = async () => {
    if (removed) return;
    removed = true;
    // Deleting the namespace destroys the namespace end, which takes the host end with it.
    await ip('netns', 'del', name).catch(() => undefined);
    await ip('link', 'del', hostIf).catch(() => undefined);
  };
  try {
    await ip('netns', 'add', name);
    await ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
    await ip('link', 'set', nsIf, 'netns', name);
    await ip('addr', 'add', `${hostAddress}/30`, 'dev', hostIf);
    await ip('link', 'set', hostIf, 'up');
    await ip('-n', name, 'addr', 'add', `${nsAddress}/30`, 'dev', nsIf);
    await ip('-n', name, 'link', 'set', nsIf, 'up');
  } catch (err) {
    await remove();
    throw err;
  }
  return {
    name,
    hostAddress,
    nsAddress,
    setLinkUp: (up) => ip('-n', name, 'link', 'set', nsIf, up ? 'up' : 'down'),
    // The sysctl is per namespace, so this changes nothing on the host.
    ignorePings: (ignore) => ip('netns', 'exec', name, 'sysctl', '-q', '-w', `net.ipv4.icmp_echo_ignore_all=${ignore ? 1 : 0}`),
    remove,
  };
}
