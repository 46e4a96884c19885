import type { Redis } from 'ioredis';
import { EPOCH_KEY } from './lease.js';

/** A write refused because a newer leader holds the lease (its fencing token is not the epoch). */
export class FencedError extends Error {
  constructor(readonly token: number) {
    super(`fenced: a newer leader holds the lease (this write carried token ${token})`);
    this.name = 'FencedError';
  }
}

/** One command of a fenced write: the command name, its key, its other arguments. */
export type Command = [name: string, key: string, ...args: Array<string | number>];

/**
 * Runs the commands only if the epoch is still the token, in one script (atomic, like MULTI);
 * otherwise nothing is written and the reply is an error FENCED.
 */
const FENCED = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
local cmds = cjson.decode(ARGV[2])
for _, c in ipairs(cmds) do
  local args = { c[1], KEYS[c[2] + 1] }
  for i = 3, #c do args[#args + 1] = c[i] end
  redis.call(unpack(args))
end
return #cmds`;

/**
 * Writes `commands` atomically: with a token, only while that token is the epoch (else
 * FencedError, nothing written); without one, as a plain MULTI (a single instance, or a writer
 * that needs no fencing).
 */
export async function fencedWrite(redis: Redis, token: number | undefined, commands: Command[]): Promise<void> {
  if (token === undefined) {
    const replies = await redis.multi(commands.map(([name, key, ...args]) => [name, key, ...args.map(String)])).exec();
    if (replies === null) throw new Error('redis transaction aborted');
    const failed = replies.find(([err]) => err);
    if (failed) throw failed[0];
    return;
  }
  const keys = [EPOCH_KEY];
  const encoded = commands.map(([name, key, ...args]) => {
    let i = keys.indexOf(key);
    if (i < 0) i = keys.push(key) - 1;
    return [name, i, ...args.map(String)];
  });
  try {
    await redis.eval(FENCED, keys.length, ...keys, String(token), JSON.stringify(encoded));
  } catch (err) {
    if ((err as Error).message.includes('FENCED')) throw new FencedError(token);
    throw err;
  }
}
