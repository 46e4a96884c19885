export interface UntilOptions {
  /** Milliseconds between attempts (default 50). */
  every?: number;
  /** More to say when it times out, e.g. the tail of a daemon's output. */
  detail?: () => string;
}

/**
 * Polls `fn` until it returns a value (anything but undefined), for at most `ms`. An error counts as
 * "not yet" and is named in the timeout's message, with `detail()` if given.
 */
export async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 30_000, opts: UntilOptions = {}): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    const v = await fn().catch((err: unknown) => {
      last = err;
      return undefined;
    });
    if (v !== undefined) return v;
    if (Date.now() > end) {
      const why = last === undefined ? '' : `: ${String(last)}`;
      throw new Error(`timed out waiting for ${what}${why}${opts.detail ? `\n${opts.detail()}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, opts.every ?? 50));
  }
}
