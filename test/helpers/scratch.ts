import { execFileSync } from 'node:child_process';

/** psql's connection arguments for the machine's PostgreSQL (trust auth on loopback). */
export const PG = ['-h', '127.0.0.1', '-p', '5432', '-U', 'postgres'];

/** Runs one SQL command with psql and returns its unaligned output. */
export const psql = (sql: string, db = 'postgres'): string =>
  execFileSync('psql', [...PG, '-X', '-Atq', '-d', db, '-c', sql], { encoding: 'utf8' }).trim();

/** The restore tests' scratch databases now on the machine's PostgreSQL (any test file's). */
export const scratchDatabases = (): string[] =>
  psql("SELECT datname FROM pg_database WHERE datname LIKE 'continuity\\_restore\\_%'").split('\n').filter(Boolean);
