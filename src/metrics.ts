import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { PROBE_STATES } from './health/probe-state.js';

/**
 * Every metric Continuity exports, defined once. Names carry the `continuity_` prefix and base
 * units; labels are config ids (probe, kind, site, service), never addresses or free text, so a
 * secret or a hostname can never become a label. One Metrics per daemon, on its own registry.
 */
export class Metrics {
  readonly registry = new Registry();

  readonly buildInfo = this.gauge('continuity_build_info', 'Always 1; the version label says which Continuity runs.', ['version']);

  readonly probeSuccess = this.gauge('continuity_probe_success', 'Whether the last run of the probe succeeded (1) or failed (0).', [
    'probe',
    'kind',
    'site',
  ]);
  readonly probeDuration = new Histogram({
    name: 'continuity_probe_duration_seconds',
    help: 'How long probe runs took, by probe kind.',
    labelNames: ['kind'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly probeRuns = new Counter({
    name: 'continuity_probe_runs_total',
    help: 'Probe runs, by result (success or failure).',
    labelNames: ['probe', 'result'],
    registers: [this.registry],
  });
  readonly probeSkipped = new Counter({
    name: 'continuity_probe_skipped_total',
    help: 'Runs skipped because the previous run of the probe was still going.',
    labelNames: ['probe'],
    registers: [this.registry],
  });
  readonly probeState = this.gauge(
    'continuity_probe_state',
    'The probe state: 1 on the label of the current state (UP, PENDING, DOWN), 0 on the others.',
    ['probe', 'site', 'state'],
  );
  readonly probeLastRun = this.gauge('continuity_probe_last_run_timestamp_seconds', 'When the probe last ran, seconds since the epoch.', [
    'probe',
  ]);
  readonly probeFailingSince = this.gauge(
    'continuity_probe_failing_since_timestamp_seconds',
    'Start of the current run of failures (the outage start RTO counts from); 0 when the probe is not failing.',
    ['probe'],
  );
  readonly scheduleLag = new Histogram({
    name: 'continuity_probe_schedule_lag_seconds',
    help: 'Actual start of a probe run minus its planned start.',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
    registers: [this.registry],
  });
  readonly tlsCertExpiry = this.gauge(
    'continuity_probe_tls_cert_expiry_seconds',
    'Time left until the certificate an https probe saw expires.',
    ['probe'],
  );

  readonly serviceUp = this.gauge(
    'continuity_service_up',
    'Whether the service is up at its active site (1) or down (0); absent until known.',
    ['service'],
  );
  readonly serviceSiteUp = this.gauge(
    'continuity_service_site_up',
    'Whether the service is up at a site (1) or down (0); absent until known.',
    ['service', 'site'],
  );
  readonly siteUp = this.gauge('continuity_site_up', 'Whether a site is up (1) or every probe at it is DOWN (0); absent until known.', [
    'site',
  ]);
  readonly rtoTarget = this.gauge('continuity_rto_target_seconds', "The service's recovery time objective.", ['service']);
  readonly rpoTarget = this.gauge('continuity_rpo_target_seconds', "The service's recovery point objective.", ['service']);

  readonly replicationLagSeconds = this.gauge(
    'continuity_replication_lag_seconds',
    'Replication lag a database probe saw (the worst replica, seen from a primary).',
    ['probe', 'site'],
  );
  readonly replicationLagBytes = this.gauge(
    'continuity_replication_lag_bytes',
    'Replication lag in bytes a database probe saw (the worst replica, seen from a primary).',
    ['probe', 'site'],
  );
  readonly backupAge = this.gauge('continuity_backup_age_seconds', 'Age of the newest backup an s3-backup probe saw.', ['probe']);
  readonly backupSize = this.gauge('continuity_backup_size_bytes', 'Size of the newest backup an s3-backup probe saw.', ['probe']);
  readonly backupCount = this.gauge('continuity_backup_count', 'Backups an s3-backup probe saw retained.', ['probe']);

  readonly restoreTestDuration = this.gauge(
    'continuity_restore_test_duration_seconds',
    'The last restore test of a backup set, by phase: total (what the RTO is held against: cleanup not counted), prepare, download, restore, validate, cleanup. Download overlaps restore (the backup is streamed).',
    ['backup_set', 'phase'],
  );
  readonly restoreTestSuccess = this.gauge(
    'continuity_restore_test_success',
    'Whether the last restore test of a backup set passed (1: restored, validated, within the RTO) or failed (0).',
    ['backup_set'],
  );
  readonly restoreTestLastSuccess = this.gauge(
    'continuity_restore_test_last_success_timestamp_seconds',
    'When a restore test of the backup set last passed.',
    ['backup_set'],
  );
  readonly restoreTestLastRun = this.gauge(
    'continuity_restore_test_last_run_timestamp_seconds',
    'When the last restore test of the backup set finished, pass or fail.',
    ['backup_set'],
  );
  readonly restoreTestRtoMargin = this.gauge(
    'continuity_restore_test_rto_margin_seconds',
    "The service's RTO minus the last restore test's total time: negative when the restore alone breaks the RTO.",
    ['backup_set', 'service'],
  );
  readonly restoreTestBytes = this.gauge(
    'continuity_restore_test_backup_bytes',
    'Size of the backup the last restore test restored (as stored, before decompression).',
    ['backup_set'],
  );
  readonly restoreTestSecondsPerGib = this.gauge(
    'continuity_restore_test_seconds_per_gib',
    'Restore seconds per GiB of backup: window="last" for the last passed test, window="recent" the mean of the last 6, so a restore time creeping toward the RTO shows months ahead.',
    ['backup_set', 'window'],
  );
  readonly restoreTests = new Counter({
    name: 'continuity_restore_tests_total',
    help: 'Finished restore tests, by backup set, trigger (schedule or manual) and result (pass or fail).',
    labelNames: ['backup_set', 'trigger', 'result'],
    registers: [this.registry],
  });
  readonly restoreSweeps = new Counter({
    name: 'continuity_restore_sweeper_removed_total',
    help: 'Scratch copies (databases, folders) of crashed restore tests removed by the sweeper.',
    labelNames: ['backup_set'],
    registers: [this.registry],
  });

  readonly configReloadSuccess = this.gauge(
    'continuity_config_last_reload_successful',
    'Whether the last config load or reload succeeded (1) or was refused (0).',
    [],
  );
  readonly configReloadTimestamp = this.gauge(
    'continuity_config_last_reload_success_timestamp_seconds',
    'When the config was last loaded successfully.',
    [],
  );
  readonly configReloads = new Counter({
    name: 'continuity_config_reloads_total',
    help: 'Config reloads, by result (success or failure).',
    labelNames: ['result'],
    registers: [this.registry],
  });
  readonly probesConfigured = this.gauge('continuity_probes_configured', 'Probes in the loaded config.', []);
  readonly redisConfigOk = this.gauge(
    'continuity_redis_config_ok',
    'Whether Redis is set for production (1): maxmemory-policy noeviction and appendonly yes; 0 when not. Absent when CONFIG GET is refused (a managed Redis): check those settings by hand.',
    [],
  );

  readonly executions = new Counter({
    name: 'continuity_runbook_executions_total',
    help: 'Finished runbook executions, by outcome (succeeded, failed, aborted, rolled_back).',
    labelNames: ['runbook', 'version', 'mode', 'outcome'],
    registers: [this.registry],
  });
  readonly stepDuration = new Histogram({
    name: 'continuity_runbook_step_duration_seconds',
    help: 'How long runbook steps took, by step kind.',
    labelNames: ['kind'],
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900],
    registers: [this.registry],
  });
  /**
   * What continuity_runbook_review_age_seconds is computed from at each scrape: every loaded runbook
   * version with when it was last reviewed (its `reviewed:` date, else when it was first loaded),
   * epoch ms. The daemon sets it.
   */
  runbookReviews: () => Array<{ runbook: string; version: number; at: number }> = () => [];
  readonly runbookReviewAge = new Gauge({
    name: 'continuity_runbook_review_age_seconds',
    help: 'Time since the runbook version was last reviewed: its reviewed: date, or, without one, when the version was first loaded.',
    labelNames: ['runbook', 'version'],
    registers: [this.registry],
    collect: () => {
      const g = this.runbookReviewAge;
      g.reset();
      const now = Date.now();
      for (const r of this.runbookReviews()) g.set({ runbook: r.runbook, version: String(r.version) }, Math.max(0, (now - r.at) / 1000));
    },
  });
  readonly approvalsPending = this.gauge('continuity_approvals_pending', 'Approval steps waiting for approvers.', []);
  readonly approvalWait = new Histogram({
    name: 'continuity_approval_wait_seconds',
    help: 'Time from an approval being asked to its decision (approved, denied or expired).',
    labelNames: ['runbook'],
    buckets: [10, 30, 60, 120, 300, 600, 1800, 3600, 7200],
    registers: [this.registry],
  });
  readonly awaitingDecision = this.gauge(
    'continuity_executions_awaiting_decision',
    'Executions stopped at a non-idempotent step that started without a recorded result, waiting for an operator.',
    [],
  );

  readonly incidentsOpen = this.gauge('continuity_incidents_open', 'Incidents not yet closed.', []);
  readonly failovers = new Counter({
    name: 'continuity_failovers_total',
    help: 'Failovers run, by outcome (succeeded, failed, aborted, rolled_back).',
    labelNames: ['service', 'outcome'],
    registers: [this.registry],
  });
  readonly rtoAchieved = this.gauge(
    'continuity_rto_achieved_seconds',
    'RTO achieved by the last recovered incident, by phase (total, detection, decision, approval_wait, runbook, verification).',
    ['service', 'phase'],
  );
  readonly rpoExposure = this.gauge(
    'continuity_rpo_exposure_seconds',
    "Live data at risk: the worst replication lag of the service's replica and primary.",
    ['service'],
  );
  readonly rpoAchievedSeconds = this.gauge('continuity_rpo_achieved_seconds', 'Data lost in the last failover, seconds, where known.', [
    'service',
  ]);
  readonly drillLastSuccess = this.gauge(
    'continuity_drill_last_success_timestamp_seconds',
    "When a drill of the service's failover runbook last succeeded; 0 when it was never drilled.",
    ['service'],
  );
  readonly rpoAchievedBytes = this.gauge('continuity_rpo_achieved_bytes', 'Data lost in the last failover, bytes of WAL (PostgreSQL).', [
    'service',
  ]);

  readonly leader = this.gauge(
    'continuity_leader',
    'Whether this instance leads (1) or not (0): decides failovers, runs executions and owns the restore-test schedules.',
    [],
  );
  readonly leaderEpoch = this.gauge(
    'continuity_leader_epoch',
    "The fencing token of this instance's current or last leadership (the leader epoch when it was elected).",
    [],
  );
  readonly probeSharing = this.gauge(
    'continuity_probe_sharing',
    'Whether this instance shares probes out through the cluster queue (1), or runs every probe itself (0: probe_distribution local, or the queue unreachable).',
    [],
  );
  readonly probesScheduledHere = this.gauge(
    'continuity_probes_scheduled_here',
    "Probes this instance's own scheduler runs (every probe, or, while sharing, those a failover policy relies on: they run from every instance).",
    [],
  );
  readonly vantageInstances = this.gauge(
    'continuity_vantage_instances',
    'At the last failover decision of a service: instances with a fresh view of its primary_down probes, by what they saw (down or up).',
    ['service', 'view'],
  );

  constructor(version: string) {
    collectDefaultMetrics({ register: this.registry });
    // prom-client names three gauges `*_total`, which `promtool check metrics` rejects (a suffix
    // reserved for counters); they are exported under lint-clean names instead.
    const process_ = process as unknown as {
      _getActiveHandles(): unknown[];
      _getActiveRequests(): unknown[];
      getActiveResourcesInfo?(): string[];
    };
    for (const [name, help, count] of [
      ['nodejs_active_handles', 'Active libuv handles (sockets, timers, servers).', () => process_._getActiveHandles().length],
      ['nodejs_active_requests', 'Active libuv requests.', () => process_._getActiveRequests().length],
      ['nodejs_active_resources', 'Active resources keeping the event loop alive.', () => process_.getActiveResourcesInfo?.().length ?? 0],
    ] as const) {
      this.registry.removeSingleMetric(`${name}_total`);
      this.registry.removeSingleMetric(name);
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(count());
        },
      });
    }
    this.buildInfo.set({ version }, 1);
    for (const result of ['success', 'failure']) this.configReloads.inc({ result }, 0);
  }

  private gauge<L extends string>(name: string, help: string, labelNames: L[]): Gauge<L> {
    return new Gauge({ name, help, labelNames, registers: [this.registry] });
  }

  /** Sets the state set of a probe: 1 on its state, 0 on the others. */
  setProbeState(probe: string, site: string, state: string): void {
    for (const s of PROBE_STATES) this.probeState.set({ probe, site, state: s }, s === state ? 1 : 0);
  }

  /** Removes every series of a probe that left the config, so dashboards do not show ghosts. */
  forgetProbe(probe: { id: string; kind: string; site: string }): void {
    const { id, kind, site } = probe;
    this.probeSuccess.remove({ probe: id, kind, site });
    for (const state of PROBE_STATES) this.probeState.remove({ probe: id, site, state });
    for (const result of ['success', 'failure']) this.probeRuns.remove({ probe: id, result });
    for (const g of [this.probeLastRun, this.probeFailingSince, this.tlsCertExpiry, this.backupAge, this.backupSize, this.backupCount]) {
      g.remove({ probe: id });
    }
    this.probeSkipped.remove({ probe: id });
    this.replicationLagSeconds.remove({ probe: id, site });
    this.replicationLagBytes.remove({ probe: id, site });
  }
}
