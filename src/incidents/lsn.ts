/** PostgreSQL WAL positions (`16/B374D848`) as byte offsets, and the bytes between two of them. */
export function lsnBytes(lsn: string): bigint | undefined {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn.trim());
  if (!m) return undefined;
  return (BigInt(`0x${m[1]}`) << 32n) + BigInt(`0x${m[2]}`);
}

/** Bytes from `from` to `to` (never negative), or undefined when either is not an LSN. */
export function lsnDiff(to: string, from: string): number | undefined {
  const a = lsnBytes(to);
  const b = lsnBytes(from);
  if (a === undefined || b === undefined) return undefined;
  return a > b ? Number(a - b) : 0;
}
