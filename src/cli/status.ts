// Renders a StatusSnapshot from the admin socket as the human-readable `ironsocket status` report.
import * as z from 'zod';

const Connection = z.object({
  id: z.string(),
  client: z.string(),
  backend: z.string(),
  version: z.string(),
  cipher: z.string(),
  mode: z.string(),
  bytesIn: z.number(),
  bytesOut: z.number(),
  ageMs: z.number(),
  worker: z.number().optional(),
  listener: z.string().optional(),
  sni: z.string().optional(),
  alpn: z.string().optional(),
  clientSubject: z.string().optional(),
});

/** What `status` needs from the snapshot (a StatusSnapshot fits it; --json prints the raw answer instead). */
export const StatusSnapshotSchema = z.object({
  pid: z.number(),
  version: z.string(),
  startedAt: z.string(),
  ktls: z.object({
    available: z.boolean(),
    reason: z.string().optional(),
    ciphers: z.object({ 'TLSv1.2': z.array(z.string()), 'TLSv1.3': z.array(z.string()) }),
    rekey: z.boolean(),
    policy: z.string(),
  }),
  listeners: z.array(
    z.object({
      address: z.string(),
      backend: z.string(),
      name: z.string().optional(),
      names: z.array(z.string()).optional(),
      alpn: z.array(z.string()).optional(),
      clientAuth: z.string().optional(),
      proxyProtocol: z.string().optional(),
    }),
  ),
  connections: z.array(Connection),
  counters: z.record(z.string(), z.number()),
  generation: z.number().optional(),
  lastUpgrade: z
    .object({
      ok: z.boolean(),
      at: z.string(),
      error: z.string().optional(),
      stallMs: z.number().optional(),
      moved: z.number().optional(),
      failedToRestore: z.number().optional(),
      closedDuringUpgrade: z.number().optional(),
      closedDuringUpgradeWithWarning: z.number().optional(),
    })
    .optional(),
  lastReload: z.object({ ok: z.boolean(), at: z.string(), error: z.string().optional(), needsUpgrade: z.array(z.string()).optional() }).optional(),
  memory: z.object({ rssKiB: z.number(), relayHeapKiB: z.array(z.number()) }).optional(),
  tickets: z
    .object({
      source: z.string(),
      keyFile: z.string().optional(),
      keys: z.number(),
      names: z.array(z.string()).optional(),
      encrypt: z.number(),
      lifetimeS: z.number(),
      rotateEveryS: z.number().optional(),
      rotatedAt: z.string().optional(),
    })
    .optional(),
  limits: z
    .object({
      maxConnections: z.number(),
      maxConnectionsPerSource: z.number(),
      maxHandshakesPerSource: z.number(),
      idleTimeoutMs: z.number(),
      sources: z.number(),
      busiest: z.array(z.object({ source: z.string(), connections: z.number(), handshakes: z.number() })),
    })
    .optional(),
});

export type StatusView = z.output<typeof StatusSnapshotSchema>;

/** 512 B, 1.5 KiB, 12 MiB. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) return `${n} B`;
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** 850ms, 42s, 3m12s, 2h05m, 3d04h. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '-';
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = Math.floor(ms / 1000);
  const pad = (x: number) => String(x).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor(s / 60) % 60)}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor(s / 3600) % 24)}h`;
}

/** Lays out rows in aligned columns; columns listed in `right` are right-aligned. */
export function table(header: string[], rows: string[][], right: Set<number> = new Set()): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (right.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

/** Session tickets: where the keys come from and how long a ticket lives; how many handshakes resumed from one. */
function ticketLines(s: StatusView): string[] {
  const out: string[] = [];
  const t = s.tickets;
  if (t) {
    const from =
      t.source === 'key_file'
        ? `${t.keys} keys from ${t.keyFile ?? 'the key file'} (key ${t.encrypt + 1} encrypts, all decrypt)`
        : `${t.keys} keys generated in memory, rotated every ${formatDuration((t.rotateEveryS ?? 0) * 1000)}${t.rotatedAt ? ` (last ${t.rotatedAt})` : ''}`;
    out.push(`session tickets: ${from}; a ticket lives ${formatDuration(t.lifetimeS * 1000)}`);
  }
  const full = s.counters.handshakes_full ?? 0;
  const resumed = s.counters.handshakes_resumed ?? 0;
  if (full + resumed > 0) out.push(`handshakes: ${full} full, ${resumed} resumed from a ticket (${Math.round((100 * resumed) / (full + resumed))}% resumed)`);
  return out;
}

/** The full human-readable report: header, kTLS, listeners, connections table, counters. */
export function formatStatus(s: StatusView, now: number = Date.now()): string {
  const out: string[] = [];
  const started = Date.parse(s.startedAt);
  out.push(`ironsocket ${s.version}  pid ${s.pid}  up ${formatDuration(now - started)}  (since ${s.startedAt})  generation ${s.generation ?? 1}`);
  const u = s.lastUpgrade;
  if (u) {
    out.push(
      u.ok
        ? `last upgrade: ${u.at}, moved ${u.moved ?? 0} connection(s)${u.failedToRestore ? `, ${u.failedToRestore} could not be restored` : ''}, stall ${u.stallMs ?? '?'} ms`
        : `last upgrade: ${u.at} FAILED: ${u.error ?? 'unknown error'} (still serving on the previous code)`,
    );
  }

  const r = s.lastReload;
  if (r) {
    out.push(
      r.ok
        ? `last reload: ${r.at}${r.needsUpgrade?.length ? ` (waiting for an upgrade: ${r.needsUpgrade.join(', ')})` : ''}`
        : `last reload: ${r.at} REFUSED: ${r.error ?? 'unknown error'} (the previous configuration is still in use)`,
    );
  }

  const k = s.ktls;
  if (k.available) {
    out.push(`kTLS: available, policy ${k.policy}, rekey (TLS 1.3 KeyUpdate) ${k.rekey ? 'supported' : 'not supported'}`);
    for (const v of ['TLSv1.3', 'TLSv1.2'] as const) {
      out.push(`  ${v}: ${k.ciphers[v].length > 0 ? k.ciphers[v].join(' ') : 'no ciphers'}`);
    }
  } else {
    out.push(`kTLS: unavailable${k.reason ? ` (${k.reason})` : ''}, policy ${k.policy}; connections use userspace TLS`);
  }

  if (s.memory) {
    const heaps = s.memory.relayHeapKiB.map((k) => formatBytes(k * 1024)).join(', ');
    out.push(`memory: ${formatBytes(s.memory.rssKiB * 1024)} resident; JavaScript heap in use per relay worker: ${heaps || 'n/a'}`);
  }

  out.push(...ticketLines(s));

  const lim = s.limits;
  if (lim) {
    const per = (n: number) => (n === 0 ? 'no limit' : String(n));
    const idle = lim.idleTimeoutMs === 0 ? 'none' : formatDuration(lim.idleTimeoutMs);
    const top = lim.busiest.map((b) => `${b.source} (${b.connections} open, ${b.handshakes} in handshake)`).join(', ');
    out.push(
      `limits: ${lim.maxConnections} connections; per source: ${per(lim.maxConnectionsPerSource)} connections, ${per(lim.maxHandshakesPerSource)} in handshake; idle timeout ${idle}`,
      `  sources now: ${lim.sources}${top ? `; busiest: ${top}` : ''}`,
    );
  }

  out.push('', 'Listeners:');
  if (s.listeners.length === 0) out.push('  none');
  for (const l of s.listeners) {
    const extras = [
      l.names?.length ? `certs for ${l.names.join(', ')}` : '',
      l.alpn?.length ? `ALPN ${l.alpn.join(',')}` : '',
      l.clientAuth && l.clientAuth !== 'off' ? `client certs ${l.clientAuth}d` : '',
      l.proxyProtocol && l.proxyProtocol !== 'off' ? `PROXY ${l.proxyProtocol}` : '',
    ].filter(Boolean);
    const name = l.name && l.name !== l.address ? `${l.name}: ` : '';
    out.push(`  ${name}${l.address} -> ${l.backend}${extras.length ? `  (${extras.join('; ')})` : ''}`);
  }

  out.push('');
  if (s.connections.length === 0) {
    out.push('Connections: none');
  } else {
    const kernel = s.connections.filter((c) => c.mode === 'kernel').length;
    out.push(`Connections: ${s.connections.length} (${kernel} in kernel TLS, ${s.connections.length - kernel} in userspace)`);
    const rows = s.connections.map((c) => [
      c.id,
      c.client,
      c.backend,
      c.version,
      c.cipher,
      c.mode,
      [c.sni, c.alpn].filter(Boolean).join(' ') || '-',
      formatBytes(c.bytesIn),
      formatBytes(c.bytesOut),
      formatDuration(c.ageMs),
    ]);
    out.push(...table(['ID', 'CLIENT', 'BACKEND', 'VERSION', 'CIPHER', 'MODE', 'SNI/ALPN', 'IN', 'OUT', 'AGE'], rows, new Set([7, 8, 9])));
  }

  const counters = Object.entries(s.counters);
  if (counters.length > 0) {
    out.push('', 'Counters:');
    out.push(
      ...table(
        ['NAME', 'VALUE'],
        counters.map(([name, value]) => [name, String(value)]),
        new Set([1]),
      ).map((l) => `  ${l}`),
    );
  }
  return out.join('\n') + '\n';
}
