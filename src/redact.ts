/**
 * Secrets never reach logs, API answers or metric labels. Every secret value resolved from config
 * (`${env:...}`, `${file:...}`) is registered here, and every log line and API answer passes
 * through `redact()` on its way out, so a secret echoed back by a driver's error message is caught
 * too, not only the fields we thought of.
 */
export const REDACTED = '[REDACTED]';

/** Secrets shorter than this are not searched for: they would mangle ordinary text. */
export const MIN_SECRET_LENGTH = 4;

export class Redactor {
  private secrets: string[] = [];
  private pattern: RegExp | undefined;

  /** Replaces the set of secrets (on config reload the old ones go). */
  set(values: Iterable<string>): void {
    const unique = new Set<string>();
    for (const v of values) {
      if (v.length >= MIN_SECRET_LENGTH) unique.add(v);
      // A multi-line secret (a private key) is also redacted line by line, as logs may split it.
      for (const line of v.split('\n')) if (line.trim().length >= 16) unique.add(line.trim());
    }
    // Longest first, so a secret that contains another is replaced whole.
    this.secrets = [...unique].sort((a, b) => b.length - a.length);
    this.pattern = this.secrets.length
      ? new RegExp(this.secrets.map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'g')
      : undefined;
  }

  /** Adds secrets to those already known. */
  add(values: Iterable<string>): void {
    this.set([...this.secrets, ...values]);
  }

  /** The text with every known secret replaced; also the JSON-escaped forms of secrets. */
  redact(text: string): string {
    if (!this.pattern) return text;
    let out = text.replace(this.pattern, REDACTED);
    for (const s of this.secrets) {
      const escaped = JSON.stringify(s).slice(1, -1);
      if (escaped !== s && out.includes(escaped)) out = out.split(escaped).join(REDACTED);
    }
    return out;
  }

  get size(): number {
    return this.secrets.length;
  }
}

/** The process-wide redactor the logger and the HTTP server use. */
export const redactor = new Redactor();
