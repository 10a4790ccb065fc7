// Picks the certificate for a ClientHello's server name: exact names first, then one-label wildcards, else the default.
import { X509Certificate } from 'node:crypto';

/** The DNS names a certificate serves: its subjectAltName DNS entries, or its CN when it has none. Lower case. */
export function certificateNames(pem: Buffer | string): string[] {
  // The leaf is the first certificate of a chain file.
  const leaf = new X509Certificate(pem);
  const san = leaf.subjectAltName ?? '';
  const dns = [...san.matchAll(/(?:^|,\s*)DNS:([^,]+)/g)].map((m) => m[1]!.trim().toLowerCase());
  if (dns.length > 0) return [...new Set(dns)];
  const cn = /(?:^|\n)CN=([^\n]+)/.exec(leaf.subject)?.[1];
  return cn ? [cn.trim().toLowerCase()] : [];
}

/** A lookup table from server name to secure context, built once per listener (and again on reload). */
export class CertSelector<C> {
  private readonly exact = new Map<string, C>();
  private readonly wildcard = new Map<string, C>();
  /** Every context given, also one whose names all went to an earlier entry (it must still be freed). */
  private readonly all: C[];

  /** `entries` in configured order: when two serve the same name, the first one wins. */
  constructor(
    entries: { names: string[]; context: C }[],
    readonly fallback: C,
  ) {
    this.all = [...new Set([fallback, ...entries.map((e) => e.context)])];
    for (const e of entries) {
      for (const raw of e.names) {
        const name = raw.toLowerCase().replace(/\.$/, '');
        if (name.startsWith('*.')) {
          if (!this.wildcard.has(name.slice(2))) this.wildcard.set(name.slice(2), e.context);
        } else if (!this.exact.has(name)) this.exact.set(name, e.context);
      }
    }
  }

  /** Every context, once each (to free them). */
  contexts(): C[] {
    return this.all;
  }

  /** The context for `servername` (as the client sent it, any case, maybe with a trailing dot). */
  select(servername: string | undefined): C {
    if (!servername) return this.fallback;
    const name = servername.toLowerCase().replace(/\.$/, '');
    const exact = this.exact.get(name);
    if (exact) return exact;
    // A wildcard covers exactly one leftmost label: *.example.com matches a.example.com, not a.b.example.com.
    const dot = name.indexOf('.');
    if (dot > 0) {
      const wild = this.wildcard.get(name.slice(dot + 1));
      if (wild) return wild;
    }
    return this.fallback;
  }
}
