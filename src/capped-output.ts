/** stdout and stderr kept of a command (remote or local); the rest is read and dropped so a chatty command cannot fill memory. */
export const OUTPUT_LIMIT = 64 * 1024;

/** Collects up to `limit` bytes of a stream, reading (and dropping) the rest. */
export class CappedOutput {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly limit = OUTPUT_LIMIT) {}
  push(chunk: Buffer): void {
    if (this.size >= this.limit) return;
    const part = chunk.subarray(0, this.limit - this.size);
    this.chunks.push(part);
    this.size += part.length;
  }
  /** What was kept, as UTF-8, trailing whitespace removed (so `echo x` gives `x`, ready for a template). */
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8').trimEnd();
  }
}
