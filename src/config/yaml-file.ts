import { readFileSync } from 'node:fs';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import type { ConfigIssue } from './errors.js';

/** A parsed YAML file that can say on which line any path of its data stands. */
export class YamlFile {
  private constructor(
    readonly file: string,
    private readonly doc: Document.Parsed,
    private readonly lines: LineCounter,
  ) {}

  /** Parses a file; syntax errors come back as issues (all of them) and no YamlFile. */
  static read(file: string, displayName = file): { yaml?: YamlFile; issues: ConfigIssue[] } {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      return { issues: [{ file: displayName, path: '', message: `cannot read: ${(err as Error).message}` }] };
    }
    return YamlFile.parse(text, displayName);
  }

  /** Parses text as if read from `file`. */
  static parse(text: string, file: string): { yaml?: YamlFile; issues: ConfigIssue[] } {
    const lines = new LineCounter();
    const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true, strict: true });
    // Only the first syntax error: the ones after it are mostly its echoes.
    const issues: ConfigIssue[] = doc.errors.slice(0, 1).map((e) => ({
      file,
      line: lines.linePos(e.pos[0]).line,
      path: '',
      message: `YAML: ${e.message.split('\n')[0]}`,
    }));
    if (issues.length > 0) return { issues };
    return { yaml: new YamlFile(file, doc, lines), issues: [] };
  }

  /** The file's data as plain JavaScript values. */
  data(): unknown {
    return this.doc.toJS({ maxAliasCount: 100 });
  }

  /**
   * The line of a path: of its value, or of its key when `key` is set (an unknown key is reported
   * on its own line). A path that does not exist falls back to its nearest existing parent.
   */
  lineOf(segments: ReadonlyArray<string | number>, key = false): number | undefined {
    let node: unknown = this.doc.contents;
    let line = this.lineAt(node as Node);
    for (const seg of segments) {
      if (isMap(node)) {
        const pair = node.items.find((p) => (isScalar(p.key) ? p.key.value : p.key) === seg);
        if (!pair) return line;
        if (key && seg === segments[segments.length - 1]) return this.lineAt(pair.key as Node) ?? line;
        node = pair.value;
        line = this.lineAt(node as Node) ?? this.lineAt(pair.key as Node) ?? line;
      } else if (isSeq(node) && typeof seg === 'number') {
        node = node.items[seg];
        line = this.lineAt(node as Node) ?? line;
      } else {
        return line;
      }
    }
    return line;
  }

  private lineAt(node: Node | null | undefined): number | undefined {
    const offset = node?.range?.[0];
    return offset === undefined ? undefined : this.lines.linePos(offset).line;
  }
}
