// The `ironsocket` commands: dispatches run / status / check / upgrade / reload / keeper / help / version and owns exit codes.
import { resolve } from 'node:path';
import { adminRequest, AdminError } from '../admin/client.js';
import { createLogger, type Logger } from '../core/log.js';
import { packageVersion } from '../core/version.js';
import { defaultCertificatePaths } from '../config/default-cert.js';
import { keyPermissionWarning } from '../config/key-permissions.js';
import { KEYLOG_ENV, keylogFileFromEnv, keylogFileProblem, keylogWarning } from '../handshake/keylog-file.js';
import { checkCrlFile } from '../config/crl.js';
import { checkTicketKeyFile } from '../config/ticket-key-file.js';
import { checkCaFile, checkCertificateFiles, defaultAdminSocketPath, resolveConfig, type ResolvedConfig } from '../config/load.js';
import { ConfigError, formatHostPort } from '../config/schema.js';
import { transparentProblem } from '../runtime/capabilities.js';
import type { ListenerConfig, ProxyConfig } from '../core/types.js';
import { parseCli, usage, UsageError, type Command } from './args.js';
import { formatStatus, StatusSnapshotSchema } from './status.js';
import { limitsLines } from './limits-text.js';
import { watchStopSignals } from './stop-signals.js';

/** What `startProxy` (src/runtime/start.ts) must resolve with. */
export interface ProxyHandle {
  /** Stops accepting, finishes or drops connections, releases the admin socket. */
  close(): Promise<void>;
  /** One human-readable line (or several, newline-separated) about kernel TLS for the start-up banner. */
  describeKtls(): string;
}
export type StartProxy = (config: ProxyConfig, deps: { logger: Logger; reloadConfig?: () => Promise<ProxyConfig> }) => Promise<ProxyHandle>;

const EXIT_OK = 0;
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;
/** Node's exit after `run` (worker and pool threads joined) is given this long before the kernel ends the process. */
const EXIT_BOUND_S = 5;

const err = (line: string) => process.stderr.write(line.endsWith('\n') ? line : line + '\n');

/** Prints why something failed: config problems one per line, otherwise the message (stack only when debugging). */
function reportFailure(what: string, e: unknown, debug: boolean): void {
  if (e instanceof ConfigError) {
    err(`ironsocket: ${what}: invalid configuration:`);
    for (const p of e.problems) err(`  ${p.replace(/\n/g, '\n  ')}`);
    return;
  }
  const error = e instanceof Error ? e : new Error(String(e));
  err(`ironsocket: ${what}: ${error.message}`);
  if ((error as { code?: unknown }).code === 'KTLS_REQUIRED') {
    err('  (--ktls require refuses to start without kernel TLS; use --ktls auto to fall back to userspace TLS)');
  }
  if (debug && error.stack) err(error.stack);
}

function isDebug(level: string | undefined): boolean {
  return level === 'debug' || level === 'trace';
}

function banner(r: ResolvedConfig, ktls: string): string[] {
  const c = r.config;
  const pad = (label: string) => `  ${label.padEnd(15)}`;
  const cont = ' '.repeat(17);
  const lines = [`ironsocket ${packageVersion()} started (pid ${process.pid})`];
  for (const l of c.listeners) {
    const named = c.listeners.length > 1 || l.name !== formatHostPort(l.listen) ? ` [${l.name}]` : '';
    lines.push(`${pad('listening on')}${formatHostPort(l.listen)} (TLS)${named}`);
    const extras = [l.proxyProtocol !== 'off' ? `PROXY ${l.proxyProtocol}` : '', l.transparent ? 'transparent source' : ''].filter(Boolean);
    lines.push(`${pad('forwarding to')}${l.backends.map(formatHostPort).join(', ')} (plain TCP${extras.length ? `, ${extras.join(', ')}` : ''})`);
    for (const rt of l.routes) lines.push(`${cont}ALPN ${rt.alpn} → ${rt.backends.map(formatHostPort).join(', ')}`);
    if (l.alpn.length) lines.push(`${pad('ALPN')}${l.alpn.join(', ')}`);
    if (l.clientAuth)
      lines.push(
        `${pad('client certs')}${l.clientAuth.required ? 'required' : 'optional'}, CA ${l.clientAuth.caFile}${l.clientAuth.crlFile ? `, CRL ${l.clientAuth.crlFile}` : ''}`,
      );
    const generated =
      r.certSource !== 'configured' && l.certs.length === 1 && l.certs[0]!.names.join() === 'localhost' && l.certs[0]!.certFile.includes('localhost');
    if (generated) {
      const how = r.certSource === 'default-created' ? 'generated just now' : 'generated earlier';
      lines.push(
        `${pad('certificate')}self-signed for localhost (${how}): ${l.certs[0]!.certFile}`,
        `${cont}clients will not trust it; pass --cert and --key for a real certificate`,
      );
    } else {
      for (const [i, cert] of l.certs.entries()) {
        lines.push(
          `${pad(i === 0 ? 'certificate' : '')}${cert.certFile}${cert.default && l.certs.length > 1 ? ' (default)' : ''}`,
          `${cont}key ${cert.keyFile}`,
        );
      }
    }
  }
  lines.push(`${pad('kTLS')}${ktls.split('\n').join('\n' + cont)} (policy ${c.ktls})`);
  for (const [label, text] of limitsLines(c)) lines.push(`${pad(label)}${text}`);
  lines.push(`${pad('admin socket')}${c.adminSocket} (ironsocket status --admin-socket ${c.adminSocket})`);
  lines.push(`${pad('config')}${r.file ?? 'none (defaults and flags)'}`);
  const keylogFile = keylogFileFromEnv();
  if (keylogFile !== undefined) lines.push(`${pad('KEY LOGGING')}ON: ${keylogWarning(keylogFile)}`);
  lines.push(
    'to change: ironsocket run --listen HOST:PORT --backend HOST:PORT --cert cert.pem --key key.pem',
    '       or: ironsocket run --config ironsocket.toml   (ironsocket help run lists every option)',
  );
  return lines;
}

/**
 * Before anything reads a key: no core dump, no ptrace, no /proc/PID/mem for the process's own uid. Every
 * image sets it again, because execve resets the flag when the uid does not change (an upgrade as `user`).
 */
async function nonDumpable(): Promise<void> {
  const { sys } = await import('../kernel/libc.js');
  sys.setDumpable(false);
}

async function run(cmd: Extract<Command, { kind: 'run' }>): Promise<number> {
  await nonDumpable();
  const { sys } = await import('../kernel/libc.js');
  // Before anything starts: a stop asked for during start-up is heard, and bounded, whatever state start-up reaches.
  const stop = watchStopSignals({ say: err, exitNow: sys.exitNow });
  let started = false;
  void stop.received.then((signal) => {
    if (!started) err(`ironsocket: ${signal} during start-up: stopping once start-up has ended`);
  });
  let debug = isDebug(cmd.flags.logLevel);
  let handle: ProxyHandle;
  let resolved: ResolvedConfig;
  let logger: Logger;
  try {
    resolved = await resolveConfig({ file: cmd.config, flags: cmd.flags });
    debug = isDebug(resolved.config.logLevel);
    logger = createLogger(resolved.config.logLevel);
    // Loaded lazily so `status`, `check` and `--help` never load the proxy (and its native bindings).
    const { startProxy } = await import('../runtime/start.js');
    const start: StartProxy = startProxy;
    // A reload reads the same file with the same flags; the default certificate is reused, never regenerated.
    const reloadConfig = async () => (await resolveConfig({ file: cmd.config, flags: cmd.flags })).config;
    handle = await start(resolved.config, { logger, reloadConfig });
  } catch (e) {
    reportFailure('cannot start', e, debug);
    return EXIT_FAILURE;
  } finally {
    started = true;
  }
  // One write, so a reader of the pipe (a supervisor, a test) never sees half a banner.
  if (!stop.signal) err(banner(resolved, handle.describeKtls()).join('\n'));
  const signal = await stop.received;
  logger.info({ signal }, 'shutting down');
  try {
    await handle.close();
    return EXIT_OK;
  } catch (e) {
    reportFailure('error while shutting down', e, debug);
    return EXIT_FAILURE;
  }
}

/**
 * Ends `run` with Node's own exit, which joins the worker threads and libuv's pool threads: should one never
 * return, the kernel ends the process after EXIT_BOUND_S (SIGALRM, which nothing here catches).
 */
async function exitAfterRun(code: number): Promise<never> {
  const { sys } = await import('../kernel/libc.js');
  sys.alarm(EXIT_BOUND_S);
  process.exit(code);
}

/** The self-signed localhost pair `run` would generate, which `check` does not (its files need not exist yet). */
function notYetGenerated(r: ResolvedConfig, c: ListenerConfig['certs'][number]): boolean {
  return r.certSource === 'default-not-generated' && c.names.join() === 'localhost' && c.certFile.includes('localhost');
}

async function check(cmd: Extract<Command, { kind: 'check' }>): Promise<number> {
  await nonDumpable(); // it reads the keys too (an upgrade's pre-flight runs it)
  // Warnings (a key file others can read) are printed whatever the outcome, and never fail the check; one per file.
  const warnings = new Map<string, string>();
  try {
    const r = await resolveConfig({ file: cmd.config, flags: cmd.flags, generateDefaultCert: false });
    // First every problem with the files at once, in the config's terms...
    const problems: string[] = [];
    for (const l of r.config.listeners) {
      const where = r.config.listeners.length > 1 ? `listener "${l.name}": ` : '';
      for (const c of l.certs) {
        if (notYetGenerated(r, c)) continue;
        problems.push(...(await checkCertificateFiles(c.certFile, c.keyFile)).map((p) => where + p));
        const loose = warnings.has(c.keyFile) ? undefined : await keyPermissionWarning(c.keyFile);
        if (loose) warnings.set(c.keyFile, loose);
      }
      if (l.clientAuth) problems.push(...(await checkCaFile(l.clientAuth.caFile)).map((p) => where + p));
      if (l.clientAuth?.crlFile) {
        const crl = await checkCrlFile(l.clientAuth.crlFile, l.clientAuth.caFile);
        problems.push(...crl.problems.map((p) => where + p));
        if (crl.warnings.length > 0 && !warnings.has(l.clientAuth.crlFile)) warnings.set(l.clientAuth.crlFile, where + crl.warnings.join('; '));
      }
    }
    // The session ticket key file is read as run and reload read it (HAProxy's format, 48-byte keys, at least 3).
    const ticketFile = r.config.sessionTickets.keyFile;
    if (ticketFile !== undefined) {
      const t = await checkTicketKeyFile(ticketFile);
      problems.push(...t.problems);
      if (t.warning) warnings.set(ticketFile, t.warning);
    }
    // The key log debug switch: `run` refuses a file that is not ours alone, so check says so too (and warns when it is on).
    const keylogFile = keylogFileFromEnv();
    if (keylogFile !== undefined) {
      const refused = keylogFileProblem(keylogFile);
      if (refused !== undefined) problems.push(`${KEYLOG_ENV}=${keylogFile}: ${refused}`);
      else warnings.set(KEYLOG_ENV, keylogWarning(keylogFile));
    }
    const capProblem = transparentProblem(r.config);
    if (capProblem) problems.push(capProblem);
    if (problems.length > 0) throw new ConfigError(problems);
    // ...then everything `run` checks before it binds, by the function run calls: `user`/`group`, --ktls require on
    // this kernel, certificates served together, backend and listen addresses. It binds nothing and creates no file.
    const { UNPROBED, discardPreflight, preflight } = await import('../runtime/preflight.js');
    const probe = r.config.ktls === 'require' ? (await import('../kernel/probe.js')).probeKernel() : UNPROBED;
    const config = { ...r.config, listeners: r.config.listeners.map((l) => ({ ...l, certs: l.certs.filter((c) => !notYetGenerated(r, c)) })) };
    const warn = (message: string, file: string) => {
      if (!warnings.has(file)) warnings.set(file, message);
    };
    discardPreflight(await preflight(config, { probe, warn, dryRun: true }));
    // Load the proxy's code too, so an upgrade's pre-flight catches new code that cannot even load.
    await import('../runtime/start.js');
    if (r.config.metrics) await import('../metrics/metrics.js');
    process.stdout.write('config OK\n');
    for (const [label, text] of limitsLines(r.config)) process.stdout.write(`${label}: ${text}\n`);
    for (const w of warnings.values()) process.stdout.write(`warning: ${w}\n`);
    if (r.certSource !== 'configured') {
      process.stdout.write(`note: no cert/key configured; run will use the self-signed localhost certificate in ${defaultCertificatePaths().certFile}\n`);
    }
    return EXIT_OK;
  } catch (e) {
    for (const w of warnings.values()) err(`ironsocket: warning: ${w}`);
    reportFailure('check failed', e, isDebug(cmd.flags.logLevel));
    return EXIT_FAILURE;
  }
}

/** The admin socket a client command talks to: --admin-socket, else the config file's, else the default. */
async function adminSocketOf(cmd: { adminSocket?: string; config?: string }): Promise<string> {
  if (cmd.adminSocket !== undefined) return resolve(cmd.adminSocket);
  if (cmd.config !== undefined) return (await resolveConfig({ file: cmd.config, flags: {}, generateDefaultCert: false })).config.adminSocket;
  return defaultAdminSocketPath();
}

async function status(cmd: Extract<Command, { kind: 'status' }>): Promise<number> {
  try {
    const socket = await adminSocketOf(cmd);
    const result = await adminRequest(socket, 'status');
    if (cmd.json) {
      process.stdout.write(JSON.stringify(result, null, 2) + '\n');
      return EXIT_OK;
    }
    const parsed = StatusSnapshotSchema.safeParse(result);
    if (!parsed.success) {
      err(`ironsocket: unexpected status answer from ${socket} (try --json): ${parsed.error.issues[0]?.path.join('.')}`);
      return EXIT_FAILURE;
    }
    process.stdout.write(formatStatus(parsed.data));
    return EXIT_OK;
  } catch (e) {
    if (e instanceof AdminError) {
      err(`ironsocket: ${e.message}`);
      return EXIT_FAILURE;
    }
    reportFailure('status failed', e, false);
    return EXIT_FAILURE;
  }
}

async function upgrade(cmd: Extract<Command, { kind: 'upgrade' }>): Promise<number> {
  try {
    const socket = await adminSocketOf(cmd);
    const { requestUpgrade } = await import('./upgrade.js');
    const outcome = await requestUpgrade(socket, cmd.timeoutS);
    process.stdout.write(JSON.stringify(outcome) + '\n');
    if (!outcome.ok) err(`ironsocket: upgrade ${outcome.error ? `failed: ${outcome.error}` : 'failed'}; the running proxy keeps serving`);
    return outcome.ok ? EXIT_OK : EXIT_FAILURE;
  } catch (e) {
    if (e instanceof AdminError) {
      err(`ironsocket: ${e.message}`);
      return EXIT_FAILURE;
    }
    reportFailure('upgrade failed', e, false);
    return EXIT_FAILURE;
  }
}

async function reload(cmd: Extract<Command, { kind: 'reload' }>): Promise<number> {
  try {
    const socket = await adminSocketOf(cmd);
    const outcome = await adminRequest<{ ok: boolean; error?: string; needsUpgrade?: string[] }>(socket, 'reload', undefined, 60_000);
    process.stdout.write(JSON.stringify(outcome) + '\n');
    if (!outcome.ok) err(`ironsocket: reload refused: ${outcome.error}; the running configuration is unchanged`);
    else if (outcome.needsUpgrade?.length) err(`ironsocket: these changed settings apply after \`ironsocket upgrade\`: ${outcome.needsUpgrade.join(', ')}`);
    return outcome.ok ? EXIT_OK : EXIT_FAILURE;
  } catch (e) {
    if (e instanceof AdminError) {
      err(`ironsocket: ${e.message}`);
      return EXIT_FAILURE;
    }
    reportFailure('reload failed', e, false);
    return EXIT_FAILURE;
  }
}

async function main(argv: string[]): Promise<number> {
  let cmd: Command;
  try {
    cmd = parseCli(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    err(`ironsocket: ${e.message}\n`);
    err(usage(e.topic));
    return EXIT_USAGE;
  }
  switch (cmd.kind) {
    case 'help':
      process.stdout.write(usage(cmd.topic) + '\n');
      return EXIT_OK;
    case 'version':
      process.stdout.write(`ironsocket ${packageVersion()}\n`);
      return EXIT_OK;
    case 'run':
      // A running proxy may hold handles that never drain on their own; exit explicitly once closed.
      return exitAfterRun(await run(cmd));
    case 'check':
      return check(cmd);
    case 'status':
      return status(cmd);
    case 'upgrade':
      return upgrade(cmd);
    case 'reload':
      return reload(cmd);
    case 'keeper': {
      await nonDumpable();
      const { keep } = await import('../service/keeper.js');
      process.exit(await keep({ runArgs: cmd.runArgs, log: createLogger('info').child({ keeper: process.pid }) }));
    }
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    reportFailure('internal error', e, true);
    process.exitCode = EXIT_FAILURE;
  },
);
