import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { shellQuote, shellQuoteAll } from '../../src/probers/shell-quote.js';

const nasty = [
  '',
  'plain',
  'two words',
  "it's",
  "''",
  "'",
  '"double"',
  '$(touch /tmp/pwned)',
  '`id`',
  '$HOME ${PATH}',
  'a\\b\\\\c\\',
  'line1\nline2\n',
  'tab\there',
  '; rm -rf / #',
  '&& || | > < >> 2>&1',
  '*?[a-z]',
  '~root',
  '!!',
  '--',
  '-n',
  'ünïcødé ☃',
  "end with quote'",
];

/** Runs printf through a real shell with the quoted words and returns the arguments it received. */
function throughShell(shell: string, words: string[]): string[] {
  const out = execFileSync(shell, ['-c', `printf '%s\\0' ${shellQuoteAll(words)}`], { encoding: 'utf8' });
  return out.split('\0').slice(0, -1);
}

describe('shellQuote', () => {
  it('wraps values in single quotes and writes a quote as close-escape-reopen', () => {
    expect(shellQuote('plain')).toBe("'plain'");
    expect(shellQuote('')).toBe("''");
    expect(shellQuote("it's")).toBe("'it'\\''s'");
    expect(shellQuote('$(id)')).toBe("'$(id)'");
  });

  it('joins several values with spaces', () => {
    expect(shellQuoteAll(['a b', "c'd"])).toBe("'a b' 'c'\\''d'");
    expect(shellQuoteAll([])).toBe('');
  });

  it('refuses a NUL byte rather than silently cutting the value', () => {
    expect(() => shellQuote('a\0b')).toThrow('cannot contain a NUL byte');
  });

  for (const shell of ['/bin/sh', '/bin/dash', '/bin/bash']) {
    it.runIf(existsSync(shell))(`passes every value through ${shell} unchanged, as one argument each`, () => {
      expect(throughShell(shell, nasty)).toEqual(nasty);
    });
  }

  it('never runs a command substitution hidden in a value', () => {
    const out = execFileSync('/bin/sh', ['-c', `echo ${shellQuote('$(echo INJECTED)`echo INJECTED`')}`], { encoding: 'utf8' });
    expect(out).toBe('$(echo INJECTED)`echo INJECTED`\n');
  });
});
