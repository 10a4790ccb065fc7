// Test support: a strict parser of the Prometheus text exposition format (0.0.4), so metric tests check real, valid output.

export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface PromFamily {
  type: string;
  help?: string;
  samples: PromSample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);
const FLOAT = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** Parses a value as Prometheus does (Go's ParseFloat: decimals, exponents, ±Inf and NaN in any case). */
function parseValue(text: string): number | undefined {
  if (FLOAT.test(text)) return Number(text);
  if (/^[+]?inf(inity)?$/i.test(text)) return Infinity;
  if (/^-inf(inity)?$/i.test(text)) return -Infinity;
  if (/^nan$/i.test(text)) return NaN;
  return undefined;
}

/** Undoes HELP escaping (\\\\ and \\n); undefined for any other escape. */
function unescapeHelp(text: string): string | undefined {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== '\\') out += text[i];
    else if (text[i + 1] === '\\' || text[i + 1] === 'n') out += text[++i] === 'n' ? '\n' : '\\';
    else return undefined;
  }
  return out;
}

/** The sample names a family of this type may contain. */
function belongs(family: string, type: string, sample: string): boolean {
  if (sample === family) return type !== 'histogram';
  if (type === 'histogram') return [`${family}_bucket`, `${family}_sum`, `${family}_count`].includes(sample);
  if (type === 'summary') return [`${family}_sum`, `${family}_count`].includes(sample);
  return false;
}

/**
 * Parses exposition text into family name → type, help and samples. Throws `line N: ...` on anything malformed:
 * unknown comment directives are allowed, but every sample must follow the TYPE line of the family it belongs to,
 * a family is declared at most once, no series repeats, and the text ends with a newline.
 */
export function parsePromText(text: string): Map<string, PromFamily> {
  const families = new Map<string, PromFamily>();
  const helps = new Map<string, string>();
  const seen = new Set<string>();
  let current: string | undefined;
  const lines = text.split('\n');
  if (text !== '' && lines.pop() !== '') throw new Error(`line ${lines.length + 1}: the text must end with a newline`);
  lines.forEach((line, i) => {
    const fail = (why: string): never => {
      throw new Error(`line ${i + 1}: ${why}: ${JSON.stringify(line)}`);
    };
    if (line.trim() === '') return;
    if (line.startsWith('#')) {
      const m = /^#[ \t]+(HELP|TYPE)[ \t]+(\S+)(?:[ \t]+(.*))?$/.exec(line);
      if (!m) return; // a plain comment
      const [, kind, name, rest = ''] = m;
      if (!METRIC_NAME.test(name)) fail('invalid metric name');
      if (kind === 'HELP') {
        if (helps.has(name)) fail(`second HELP for ${name}`);
        const help = unescapeHelp(rest);
        if (help === undefined) fail('invalid escape in HELP (only \\\\ and \\n)');
        helps.set(name, help!);
        if (families.has(name)) families.get(name)!.help = helps.get(name);
        return;
      }
      if (!TYPES.has(rest.trim())) fail(`unknown metric type "${rest.trim()}"`);
      if (families.has(name)) fail(`second TYPE for ${name}`);
      families.set(name, { type: rest.trim(), help: helps.get(name), samples: [] });
      current = name;
      return;
    }
    const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!nameMatch) fail('a sample must start with a metric name');
    const name = nameMatch![0];
    let pos = name.length;
    const labels: Record<string, string> = {};
    if (line[pos] === '{') {
      pos++;
      for (;;) {
        while (line[pos] === ' ' || line[pos] === '\t') pos++;
        if (line[pos] === '}') break;
        const ln = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(pos));
        if (!ln || !LABEL_NAME.test(ln[0])) fail(`expected a label name at column ${pos + 1}`);
        const labelName = ln![0];
        pos += labelName.length;
        while (line[pos] === ' ' || line[pos] === '\t') pos++;
        if (line[pos] !== '=' || line[pos + 1] !== '"') fail(`expected ="..." after label ${labelName}`);
        pos += 2;
        let value = '';
        for (;;) {
          const c = line[pos++];
          if (c === undefined) fail(`unterminated value of label ${labelName}`);
          if (c === '"') break;
          if (c !== '\\') {
            value += c;
            continue;
          }
          const e = line[pos++];
          if (e === '\\' || e === '"') value += e;
          else if (e === 'n') value += '\n';
          else fail(`invalid escape \\${e ?? ''} in label ${labelName}`);
        }
        if (labelName in labels) fail(`label ${labelName} appears twice`);
        labels[labelName] = value;
        while (line[pos] === ' ' || line[pos] === '\t') pos++;
        if (line[pos] === ',') pos++;
        else if (line[pos] !== '}') fail(`expected , or } at column ${pos + 1}`);
      }
      pos++;
    }
    const fields = line
      .slice(pos)
      .trim()
      .split(/[ \t]+/);
    if (!/^[ \t]/.test(line.slice(pos))) fail('expected whitespace before the value');
    if (fields.length > 2) fail('trailing text after the value and timestamp');
    const value = parseValue(fields[0]);
    if (value === undefined) fail(`invalid value "${fields[0]}"`);
    if (fields.length === 2 && !/^-?\d+$/.test(fields[1])) fail(`invalid timestamp "${fields[1]}"`);
    const family = current === undefined ? undefined : families.get(current);
    if (!family || !belongs(current!, family.type, name)) fail(`sample ${name} does not belong to the family declared before it (${current ?? 'none'})`);
    if (name.endsWith('_bucket') && family!.type === 'histogram' && !('le' in labels)) fail('histogram bucket without an le label');
    const key = `${name}{${Object.keys(labels)
      .sort()
      .map((k) => `${k}=${JSON.stringify(labels[k])}`)
      .join(',')}}`;
    if (seen.has(key)) fail(`duplicate series ${key}`);
    seen.add(key);
    family!.samples.push({ name, labels, value: value! });
  });
  return families;
}
