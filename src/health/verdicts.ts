import type { Config } from '../config/load.js';
import type { ProbeState } from './probe-state.js';

/** A service's or site's verdict: derived from its probes' states, never stored. */
export type Verdict = 'UP' | 'DEGRADED' | 'DOWN' | 'UNKNOWN';

export interface ServiceVerdict {
  service: string;
  /** The verdict at the site serving the service now. */
  verdict: Verdict;
  activeSite: string;
  /** Verdict per site that has probes of this service. */
  sites: Record<string, Verdict>;
  /** Earliest outage start among the DOWN probes at the active site, ms since the epoch. */
  outageStart?: number;
  /** The DOWN probes at the active site. */
  downProbes: string[];
}

export interface Verdicts {
  services: Record<string, ServiceVerdict>;
  sites: Record<string, Verdict>;
}

/**
 * The verdict of a group of probes: DOWN when any is DOWN (a service needs all its parts), UP when
 * all are UP, UNKNOWN when none has run yet, DEGRADED otherwise (something is failing but has not
 * crossed its threshold). A site is DOWN only when every probe at it is DOWN.
 */
function groupVerdict(states: ProbeState[], downWhen: 'any' | 'all'): Verdict {
  let down = 0;
  let up = 0;
  let ran = 0;
  for (const s of states) {
    if (s.last !== undefined) ran++;
    if (s.state === 'DOWN') down++;
    else if (s.state === 'UP') up++;
  }
  if (states.length === 0 || ran === 0) return 'UNKNOWN';
  if (downWhen === 'any' ? down > 0 : down === states.length) return 'DOWN';
  if (up === states.length) return 'UP';
  return 'DEGRADED';
}

/**
 * Which probes make up each service (per site) and each site, worked out once per config, so a
 * verdict computation is one pass over the probes with no grouping work.
 */
export class VerdictIndex {
  private readonly services: Array<{ id: string; activeSite: string; bySite: Map<string, string[]> }> = [];
  private readonly sites = new Map<string, string[]>();

  /** `activeSites` overrides the config's active site per service (after a failover). */
  constructor(config: Config, activeSites: ReadonlyMap<string, string> = new Map()) {
    for (const site of Object.keys(config.sites)) this.sites.set(site, []);
    const byService = new Map<string, Map<string, string[]>>();
    for (const s of Object.values(config.services)) byService.set(s.id, new Map());
    for (const p of config.probes) {
      this.sites.get(p.site)?.push(p.id);
      for (const s of p.services) {
        const bySite = byService.get(s);
        if (!bySite) continue;
        const list = bySite.get(p.site);
        if (list) list.push(p.id);
        else bySite.set(p.site, [p.id]);
      }
    }
    for (const s of Object.values(config.services)) {
      this.services.push({ id: s.id, activeSite: activeSites.get(s.id) ?? s.activeSite, bySite: byService.get(s.id)! });
    }
  }

  /** Service and site verdicts from the current probe states. */
  compute(states: ReadonlyMap<string, ProbeState>): Verdicts {
    const pick = (ids: string[]) => ids.map((id) => states.get(id)).filter((s): s is ProbeState => s !== undefined);
    const services: Record<string, ServiceVerdict> = {};
    for (const service of this.services) {
      const sites: Record<string, Verdict> = {};
      for (const [site, ids] of service.bySite) sites[site] = groupVerdict(pick(ids), 'any');
      const activeIds = service.bySite.get(service.activeSite) ?? [];
      const downProbes = activeIds.filter((id) => states.get(id)?.state === 'DOWN');
      const starts = downProbes.map((id) => states.get(id)!.failingSince).filter((t): t is number => t !== undefined);
      services[service.id] = {
        service: service.id,
        verdict: sites[service.activeSite] ?? 'UNKNOWN',
        activeSite: service.activeSite,
        sites,
        downProbes,
        ...(starts.length ? { outageStart: Math.min(...starts) } : {}),
      };
    }
    const sites: Record<string, Verdict> = {};
    for (const [site, ids] of this.sites) sites[site] = groupVerdict(pick(ids), 'all');
    return { services, sites };
  }
}

/** Service and site verdicts from the current probe states (one-off; the Monitor keeps an index). */
export function computeVerdicts(config: Config, states: ReadonlyMap<string, ProbeState>): Verdicts {
  return new VerdictIndex(config).compute(states);
}
