// Asks the running kernel, on throwaway loopback sockets, which TLS versions and ciphers it can take over.
import fs from 'node:fs';
import { AF_INET, SOCK_CLOEXEC, SOCK_STREAM, SysError, sys } from './libc.js';
import { decodeSockaddr, encodeSockaddr } from './sockaddr.js';
import {
  TLS_1_2_VERSION,
  TLS_1_3_VERSION,
  TLS_CIPHER_AES_GCM_128,
  TLS_CIPHER_AES_GCM_256,
  TLS_CIPHER_CHACHA20_POLY1305,
  type KtlsDirection,
  enableTlsUlp,
  installDirection,
} from './ktls.js';

export interface KernelProbe {
  available: boolean;
  reason?: string;
  /** Kernel cipher ids accepted for both TX and RX, per version. */
  accepted: { 'TLSv1.2': number[]; 'TLSv1.3': number[] };
  /** Whether an installed TLS 1.3 TX key can be replaced (KeyUpdate support, Linux ≥ 6.13). */
  rekey: boolean;
}

export const KERNEL_CIPHERS = [TLS_CIPHER_AES_GCM_128, TLS_CIPHER_AES_GCM_256, TLS_CIPHER_CHACHA20_POLY1305] as const;

/** A connected loopback TCP pair made with raw syscalls (no libuv). */
export function loopbackPair(): { client: number; server: number; listener: number } {
  const listener = sys.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC);
  try {
    sys.bind(listener, encodeSockaddr({ host: '127.0.0.1', port: 0 }));
    sys.listen(listener, 4);
    const port = decodeSockaddr(sys.getsockname(listener))!.port;
    const client = sys.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC);
    const r = sys.connect(client, encodeSockaddr({ host: '127.0.0.1', port }));
    if (r < 0) {
      sys.close(client);
      throw new SysError('connect(loopback)', -r);
    }
    const server = sys.accept4(listener, SOCK_CLOEXEC);
    if (server < 0) {
      sys.close(client);
      throw new SysError('accept4(loopback)', -server);
    }
    return { client, server, listener };
  } catch (e) {
    sys.close(listener);
    throw e;
  }
}

function dummy(version: number, cipher: number): KtlsDirection {
  const keyLen = cipher === TLS_CIPHER_AES_GCM_128 ? 16 : 32;
  const ivLen = version === TLS_1_2_VERSION && cipher !== TLS_CIPHER_CHACHA20_POLY1305 ? 4 : 12;
  return {
    version: version as KtlsDirection['version'],
    cipher: cipher as KtlsDirection['cipher'],
    key: Buffer.alloc(keyLen, 1),
    iv: Buffer.alloc(ivLen, 2),
    seq: 0n,
  };
}

function tryCombo(version: number, cipher: number, rekey = false): { ok: boolean; why?: string; rekey?: boolean } {
  const p = loopbackPair();
  try {
    enableTlsUlp(p.client);
    installDirection(p.client, 'tx', dummy(version, cipher));
    installDirection(p.client, 'rx', dummy(version, cipher));
    let rekeyOk: boolean | undefined;
    if (rekey) {
      try {
        installDirection(p.client, 'tx', dummy(version, cipher));
        rekeyOk = true;
      } catch {
        rekeyOk = false;
      }
    }
    return { ok: true, rekey: rekeyOk };
  } catch (e) {
    return { ok: false, why: (e as Error).message };
  } finally {
    sys.close(p.client);
    sys.close(p.server);
    sys.close(p.listener);
  }
}

/** Probes every version × cipher; never throws (a failure is reported in `reason`). */
export function probeKernel(): KernelProbe {
  const out: KernelProbe = { available: false, accepted: { 'TLSv1.2': [], 'TLSv1.3': [] }, rekey: false };
  let first: string | undefined;
  try {
    for (const [name, version] of [
      ['TLSv1.2', TLS_1_2_VERSION],
      ['TLSv1.3', TLS_1_3_VERSION],
    ] as const) {
      for (const cipher of KERNEL_CIPHERS) {
        const r = tryCombo(version, cipher, version === TLS_1_3_VERSION && cipher === TLS_CIPHER_AES_GCM_128);
        if (r.ok) out.accepted[name].push(cipher);
        else first ??= r.why;
        if (r.rekey) out.rekey = true;
      }
    }
  } catch (e) {
    first ??= (e as Error).message;
  }
  out.available = out.accepted['TLSv1.2'].length + out.accepted['TLSv1.3'].length > 0;
  if (!out.available) {
    const stat = fs.existsSync('/proc/net/tls_stat');
    out.reason =
      `${first ?? 'no cipher accepted'}` +
      (stat ? '' : '; /proc/net/tls_stat is absent (kernel built without CONFIG_TLS or the tls module is not loaded)') +
      ' — try `modprobe tls` (kTLS needs Linux ≥ 4.13 for TX, ≥ 4.17 for RX, ≥ 5.1 for TLS 1.3, ≥ 5.11 for ChaCha20)';
  }
  return out;
}

/** Counters from /proc/net/tls_stat, or undefined when the kernel has none. */
export function readTlsStat(): Record<string, number> | undefined {
  let text: string;
  try {
    text = fs.readFileSync('/proc/net/tls_stat', 'utf8');
  } catch {
    return undefined;
  }
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^(\w+)\s+(\d+)/.exec(line.trim());
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}
