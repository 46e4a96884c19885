/**
 * Quoting for values that go into a command line run by a remote POSIX shell. Inside single
 * quotes a shell treats every character literally except `'` itself, which is written as `'\''`
 * (close the quote, an escaped quote, reopen). Every value is quoted, even a plain word, so no
 * caller has to decide what is "safe".
 */

/** One value as a single shell word, e.g. `it's` -> `'it'\''s'`; throws on a NUL byte, which no shell word can hold. */
export function shellQuote(value: string): string {
  if (value.includes('\0')) throw new Error('a value passed to a remote command cannot contain a NUL byte');
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** Several values as shell words separated by spaces. */
export function shellQuoteAll(values: readonly string[]): string {
  return values.map(shellQuote).join(' ');
}
