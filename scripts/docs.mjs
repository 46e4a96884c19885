// Regenerates what is derived from the schema code: config/schema/*.json and the README's probe
// reference. `npm run docs` after changing a probe kind or the config schema; a test checks both.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';

const cli = (...args) => execFileSync('node', ['bin/continuity.js', ...args], { encoding: 'utf8' });
cli('schema');
const readme = readFileSync('README.md', 'utf8');
let updated = readme;
for (const [marker, args] of [
  ['probe-reference', ['reference']],
  ['step-reference', ['reference', '--steps']],
]) {
  const text = cli(...args);
  updated = updated.replace(
    new RegExp(`<!-- ${marker}:start -->[\\s\\S]*<!-- ${marker}:end -->`),
    `<!-- ${marker}:start -->\n${text}<!-- ${marker}:end -->`,
  );
}
writeFileSync('README.md', updated);
console.log(updated === readme ? 'README.md: up to date' : 'README.md: references updated');
