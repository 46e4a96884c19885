import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A throwaway config folder: config/continuity.yaml plus probes/*.yaml, written from strings. */
export function writeConfig(files: { config: string; probes: Record<string, string> }): {
  dir: string;
  configPath: string;
  write(name: string, text: string): void;
} {
  const dir = mkdtempSync(join(tmpdir(), 'continuity-test-'));
  mkdirSync(join(dir, 'config'));
  mkdirSync(join(dir, 'probes'));
  const write = (name: string, text: string) => writeFileSync(join(dir, name), text);
  write('config/continuity.yaml', files.config);
  for (const [name, text] of Object.entries(files.probes)) write(join('probes', name), text);
  return { dir, configPath: join(dir, 'config/continuity.yaml'), write };
}
