import type { Lab } from './lab.js';

/**
 * The `failover:` block of service `orders` for a lab: the shipped failover-postgres v1 with the
 * lab's addresses as its inputs, deciding on probes orders-pg-primary, orders-pg-replica and
 * orders-web-public. Shared by the end-to-end tests, the failover bench and the demo, so the three
 * run the same policy. Indented for `services.orders.failover`.
 */
export function labFailoverPolicy(lab: Lab, mode: 'approval' | 'automatic'): string {
  const stop = lab.primary.argv.stop;
  return `    failover:
      runbook: failover-postgres
      version: 1
      mode: ${mode}
      primary_down: [orders-pg-primary]
      dr_ready: [orders-pg-replica]
      replica: orders-pg-replica
      primary_db: orders-pg-primary
      verify: orders-web-public
      cooldown: 10m
      inputs:
        haproxy: 127.0.0.1:${lab.haproxyRuntime.port}
        primary_ssh_host: ${lab.sshd.host}
        primary_ssh_port: ${lab.sshd.port}
        ssh_user: ${lab.sshd.user}
        ssh_key_file: ${lab.sshd.privateKeyPath}
        known_hosts: ${lab.sshd.knownHostsPath}
        pg_ctl: ${stop[4]}
        primary_data_dir: ${stop[6]}
        replica_host: 127.0.0.1
        replica_port: ${lab.replica.port}
        web_url: ${lab.webTraffic.url}
`;
}
