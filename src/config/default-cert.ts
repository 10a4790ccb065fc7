// Provides a working self-signed localhost certificate so `ironsocket run` works with zero configuration.
import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface DefaultCertificate {
  certFile: string;
  keyFile: string;
  /** True when this call generated the certificate, false when an existing one was reused. */
  created: boolean;
}

/** Regenerate when the certificate expires within this margin. */
const RENEW_MARGIN_MS = 24 * 3600 * 1000;
const VALID_DAYS = 365;
const OPENSSL_TIMEOUT_MS = 30_000;

/** Where generated state lives: $IRONSOCKET_STATE_DIR, $XDG_STATE_HOME/ironsocket, /var/lib/ironsocket (root) or ~/.local/state/ironsocket. */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.IRONSOCKET_STATE_DIR) return env.IRONSOCKET_STATE_DIR;
  if (env.XDG_STATE_HOME) return join(env.XDG_STATE_HOME, 'ironsocket');
  if (process.getuid?.() === 0) return '/var/lib/ironsocket';
  return join(homedir(), '.local', 'state', 'ironsocket');
}

/** Paths of the default certificate pair (whether or not they exist yet). */
export function defaultCertificatePaths(env: NodeJS.ProcessEnv = process.env): { certFile: string; keyFile: string } {
  const dir = join(stateDir(env), 'localhost');
  return { certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'key.pem') };
}

const OPENSSL_CONFIG = `[req]
distinguished_name = dn
prompt = no
x509_extensions = v3
[dn]
CN = localhost
[v3]
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
`;

/** Returns the default self-signed certificate, generating it with the openssl CLI when missing or about to expire. */
export async function ensureDefaultCertificate(env: NodeJS.ProcessEnv = process.env): Promise<DefaultCertificate> {
  const base = stateDir(env);
  const { certFile, keyFile } = defaultCertificatePaths(env);
  try {
    await mkdir(base, { recursive: true, mode: 0o700 });
    await chmod(base, 0o700);
  } catch (err) {
    throw new Error(`cannot prepare state directory ${base} for the default certificate: ${(err as Error).message}`);
  }
  if (await isUsable(certFile, keyFile)) return { certFile, keyFile, created: false };

  // Generate the pair in a private (0700) scratch dir, then move the whole dir into place in one rename.
  const scratch = await mkdtemp(join(base, '.localhost-'));
  try {
    await writeFile(join(scratch, 'openssl.cnf'), OPENSSL_CONFIG, { mode: 0o600 });
    await runOpenssl(scratch);
    await chmod(join(scratch, 'key.pem'), 0o600);
    await chmod(join(scratch, 'cert.pem'), 0o644);
    await rm(join(scratch, 'openssl.cnf'));
    const dir = join(base, 'localhost');
    // Every step is a rename, so a concurrent caller never sees (or deletes) half a pair: a pair already
    // in place that works wins; one that does not is moved aside whole, then ours goes in.
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await rename(scratch, dir);
        return { certFile, keyFile, created: true };
      } catch (err) {
        if (!isCode(err, 'ENOTEMPTY', 'EEXIST')) throw err;
      }
      if (await isUsable(certFile, keyFile)) return { certFile, keyFile, created: false };
      const stale = await mkdtemp(join(base, '.stale-'));
      try {
        await rename(dir, join(stale, 'localhost'));
      } catch (err) {
        if (!isCode(err, 'ENOENT')) throw err; // another caller moved it first
      } finally {
        await rm(stale, { recursive: true, force: true });
      }
    }
    throw new Error(`could not install the default certificate in ${dir}: it kept being replaced`);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

async function isUsable(certFile: string, keyFile: string): Promise<boolean> {
  try {
    const [certPem, keyPem, keyStat] = await Promise.all([readFile(certFile, 'utf8'), readFile(keyFile, 'utf8'), stat(keyFile)]);
    const cert = new X509Certificate(certPem);
    if (Date.parse(cert.validTo) - Date.now() < RENEW_MARGIN_MS) return false;
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) return false;
    if ((keyStat.mode & 0o077) !== 0) await chmod(keyFile, 0o600);
    return true;
  } catch {
    return false;
  }
}

function runOpenssl(dir: string): Promise<void> {
  const args = [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-sha256',
    '-days',
    String(VALID_DAYS),
    '-config',
    join(dir, 'openssl.cnf'),
    '-keyout',
    join(dir, 'key.pem'),
    '-out',
    join(dir, 'cert.pem'),
  ];
  return new Promise((resolve, reject) => {
    // The child inherits the umask at spawn time, so the key file is created 0600 (inside a 0700 dir) from the start.
    const previous = process.umask(0o077);
    try {
      execFile('openssl', args, { timeout: OPENSSL_TIMEOUT_MS }, (err, _stdout, stderr) => {
        if (!err) return resolve();
        if (isCode(err, 'ENOENT')) {
          reject(new Error('cannot generate the default certificate: the `openssl` command was not found on PATH; install openssl or pass --cert and --key'));
        } else {
          reject(new Error(`cannot generate the default certificate: openssl failed: ${String(stderr).trim() || err.message}`));
        }
      });
    } finally {
      process.umask(previous);
    }
  });
}

function isCode(err: unknown, ...codes: string[]): boolean {
  return typeof err === 'object' && err !== null && codes.includes(String((err as { code?: unknown }).code));
}
