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

/**
 * probes/databases.yaml for a lab: the primary (expected writable), the replica and the public
 * endpoint (UP once it answers from the DR site), every 500 ms; the probes labFailoverPolicy names.
 * `primaryPort` lets a test put a proxy on the monitor's path to the primary.
 */
export function labProbes(lab: Lab, primaryPort = lab.primary.port): string {
  return `probes:
  - id: orders-pg-primary
    kind: postgres
    site: primary
    services: [orders]
    interval: 500ms
    timeout: 400ms
    failure_threshold: 3
    postgres: { host: 127.0.0.1, port: ${primaryPort}, user: postgres, database: postgres, expect_role: primary }
  - id: orders-pg-replica
    kind: postgres
    site: dr
    services: [orders]
    interval: 500ms
    timeout: 400ms
    failure_threshold: 3
    postgres: { host: 127.0.0.1, port: ${lab.replica.port}, user: postgres, database: postgres }
  - id: orders-web-public
    kind: http
    site: dr
    interval: 500ms
    timeout: 400ms
    failure_threshold: 1
    http: { url: "${lab.webTraffic.url}/health" }
    conditions: ['headers["x-site"] == "dr"']
`;
}

/**
 * The inputs of the shipped failback-postgres for a lab: both servers, their data folders and logs,
 * SSH to them, HAProxy, and a failback window from a minute ago to `windowMinutes` from now.
 */
export function labFailbackInputs(lab: Lab, windowMinutes: number) {
  return {
    haproxy: `127.0.0.1:${lab.haproxyRuntime.port}`,
    primary_host: '127.0.0.1',
    primary_port: lab.primary.port,
    dr_host: '127.0.0.1',
    dr_port: lab.replica.port,
    primary_ssh_host: lab.sshd.host,
    primary_ssh_port: lab.sshd.port,
    dr_ssh_host: lab.sshd.host,
    dr_ssh_port: lab.sshd.port,
    ssh_user: lab.sshd.user,
    ssh_key_file: lab.sshd.privateKeyPath,
    known_hosts: lab.sshd.knownHostsPath,
    pg_ctl: lab.primary.argv.stop[4]!,
    primary_data_dir: lab.primary.dataDir,
    primary_log_file: lab.primary.logFile,
    dr_data_dir: lab.replica.dataDir,
    dr_log_file: lab.replica.logFile,
    primary_application_name: lab.primary.clusterName,
    dr_application_name: lab.replica.clusterName,
    window_start: new Date(Date.now() - 60_000).toISOString(),
    window_end: new Date(Date.now() + windowMinutes * 60_000).toISOString(),
    web_url: lab.webTraffic.url,
  };
}
