// Turns argv into a typed command (strict: unknown flags are usage errors) and holds the help texts.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { ConfigFlags } from '../config/load.js';

export type Topic = 'run' | 'status' | 'check' | 'upgrade' | 'reload' | 'keeper';

export type Command =
  | { kind: 'help'; topic?: Topic }
  | { kind: 'version' }
  | { kind: 'run'; config?: string; flags: ConfigFlags }
  | { kind: 'check'; config?: string; flags: ConfigFlags }
  | { kind: 'status'; config?: string; adminSocket?: string; json: boolean }
  | { kind: 'upgrade'; config?: string; adminSocket?: string; timeoutS: number }
  | { kind: 'reload'; config?: string; adminSocket?: string }
  /** `runArgs`: the run options as given, for the proxy the keeper starts. */
  | { kind: 'keeper'; runArgs: string[] };

/** Bad command line; the CLI prints the message and the usage of `topic`, then exits 2. */
export class UsageError extends Error {
  readonly topic?: Topic;
  constructor(message: string, topic?: Topic) {
    super(message);
    this.name = 'UsageError';
    this.topic = topic;
  }
}

const CONFIG_OPTIONS = {
  config: { type: 'string', short: 'c' },
  listen: { type: 'string' },
  backend: { type: 'string' },
  cert: { type: 'string' },
  key: { type: 'string' },
  ktls: { type: 'string' },
  'admin-socket': { type: 'string' },
  'log-level': { type: 'string' },
  workers: { type: 'string' },
  'fd-store': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

const STATUS_OPTIONS = {
  config: { type: 'string', short: 'c' },
  'admin-socket': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

const UPGRADE_OPTIONS = {
  config: { type: 'string', short: 'c' },
  'admin-socket': { type: 'string' },
  timeout: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

const RELOAD_OPTIONS = {
  config: { type: 'string', short: 'c' },
  'admin-socket': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

const CONFIG_FLAGS_HELP = `  -c, --config FILE        TOML config file (flags override it)
      --listen HOST:PORT   address to accept TLS on (default 127.0.0.1:8443; IPv6 as [::1]:8443)
      --backend HOST:PORT  plain TCP backend to forward to (default 127.0.0.1:8080)
      --cert PEM           certificate chain file (with --key; default: a generated self-signed localhost cert)
      --key PEM            private key file
      --ktls MODE          auto (default: use kernel TLS when possible), require (refuse to start without it), off
      --admin-socket PATH  admin Unix socket (default $XDG_RUNTIME_DIR/ironsocket/admin.sock; as root
                           /run/ironsocket/admin.sock; else ~/.local/state/ironsocket/admin.sock)
      --log-level LEVEL    trace, debug, info (default), warn, error, fatal, silent
      --workers N          threads for handshakes, and as many for relaying (default: one per CPU)
      --fd-store           keep every connection's descriptors in systemd's fd store (needs NOTIFY_SOCKET,
                           FileDescriptorStoreMax=), so kernel-TLS connections survive a crash of the proxy
  -h, --help               show this help`;

const HELP: Record<Topic | 'main', string> = {
  main: `Usage: ironsocket <command> [options]

Iron Socket: a TLS-terminating TCP proxy that hands TLS sessions to the Linux kernel (kTLS).

Commands:
  run      start the proxy
  status   show the running proxy's state through its admin socket
  upgrade  replace the running proxy's code in place (same PID); live connections keep flowing
  reload   re-read the config file and certificates (new connections use them; live ones are untouched)
  keeper   run the proxy under a keeper of its connections' descriptors, restarting it after a crash
  check    validate a config file: everything run checks before it binds (files, keys, user, ...)
  help     show help for a command: ironsocket help run

Options:
  -h, --help     show this help
  -V, --version  print the version

Exit status:
  0  done (run: stopped by SIGTERM or SIGINT; check: config OK)
  1  failed: cannot start, config problems, proxy not reachable, reload or upgrade refused or failed
  2  usage error (unknown command or option, bad value)

Signals (to the running proxy):
  SIGTERM, SIGINT  stop: close the listeners and every connection, exit 0 (a second one: exit 1 at once)
  SIGHUP           reload the config file and certificates (as \`ironsocket reload\`)
  SIGUSR2          upgrade in place to the code on disk (as \`ironsocket upgrade\`)

Example:
  ironsocket run --listen 0.0.0.0:443 --backend 127.0.0.1:8080 --cert fullchain.pem --key privkey.pem`,
  run: `Usage: ironsocket run [options]

Starts the proxy. Without --cert/--key it uses a generated self-signed certificate for localhost.
SIGTERM/SIGINT stop it (exit 0), SIGHUP reloads the config and certificates, SIGUSR2 upgrades it in
place; it exits 1 when it cannot start.

Options:
${CONFIG_FLAGS_HELP}`,
  keeper: `Usage: ironsocket keeper [run options]

For a host without systemd: plays systemd's part for the fd store. Starts \`ironsocket run [run
options] --fd-store\` with NOTIFY_SOCKET pointing at the keeper, which keeps a copy of every
connection's descriptors. When the proxy crashes (killed by a signal, or exits non-zero), the
keeper starts it again with them: kernel-TLS connections carry on without a reset or a new
handshake; userspace-TLS ones are closed cleanly. SIGTERM/SIGINT stop the proxy, then the keeper;
SIGHUP and SIGUSR2 are passed on (reload, in-place upgrade). It gives up after 5 crashes in 60 s.

Options (as for run):
${CONFIG_FLAGS_HELP}`,
  check: `Usage: ironsocket check --config FILE [options]

Validates the configuration without starting the proxy; prints "config OK" or the problems. It checks
what \`run\` checks before binding, with the same code: certificates, keys, client CA and CRL, the session
ticket key file, \`user\` and \`group\`, --ktls require on this kernel, capabilities, backend and listen
addresses. It binds no port, and needs root only where run would (a switch to \`user\` is then a warning).

Options:
${CONFIG_FLAGS_HELP}`,
  status: `Usage: ironsocket status [options]

Shows the running proxy's kTLS state, listeners and connections.

Options:
      --admin-socket PATH  admin Unix socket of the proxy (default $XDG_RUNTIME_DIR/ironsocket/admin.sock;
                           as root /run/ironsocket/admin.sock; else ~/.local/state/ironsocket/admin.sock);
                           answers only from root or your own user are read
  -c, --config FILE        read admin_socket from this config file
      --json               print the raw status snapshot as JSON
  -h, --help               show this help`,
  upgrade: `Usage: ironsocket upgrade [options]

Asks the running proxy to upgrade itself in place: it checks the code now on disk against its
configuration, pauses, hands every connection to the new code by exec (same PID) and resumes.
Waits for the result and prints JSON { ok, pid, generation, moved, stallMs }; exits 1 when the
upgrade was refused or failed (the running proxy then keeps serving untouched). The same happens on
\`kill -USR2 <pid>\`; either suits a systemd ExecReload= line.

Options:
      --admin-socket PATH  admin Unix socket of the proxy (default $XDG_RUNTIME_DIR/ironsocket/admin.sock;
                           as root /run/ironsocket/admin.sock; else ~/.local/state/ironsocket/admin.sock);
                           answers only from root or your own user are read
  -c, --config FILE        read admin_socket from this config file
      --timeout SECONDS    how long to wait for the result (default 120)
  -h, --help               show this help`,
  reload: `Usage: ironsocket reload [options]

Asks the running proxy to read its config file and certificates again (the same as SIGHUP). New
connections get the new certificates, backends and listeners; established connections are not
touched. Everything is checked first: a file that does not parse or a certificate that does not load
is refused with the reason, and the running configuration stays as it was. Prints JSON
{ ok, listeners, needsUpgrade } and exits 1 when refused. Settings in needsUpgrade (workers, ktls,
admin_socket, metrics, user, group, log level, fd_store) take effect with \`ironsocket upgrade\`.

Options:
      --admin-socket PATH  admin Unix socket of the proxy (default $XDG_RUNTIME_DIR/ironsocket/admin.sock;
                           as root /run/ironsocket/admin.sock; else ~/.local/state/ironsocket/admin.sock);
                           answers only from root or your own user are read
  -c, --config FILE        read admin_socket from this config file
  -h, --help               show this help`,
};

export function usage(topic?: Topic): string {
  return HELP[topic ?? 'main'];
}

function isTopic(s: string | undefined): s is Topic {
  return s === 'run' || s === 'status' || s === 'check' || s === 'upgrade' || s === 'reload' || s === 'keeper';
}

/** Parses argv (without node and the script path). Throws UsageError. */
export function parseCli(argv: string[]): Command {
  const [first, ...rest] = argv;
  if (first === undefined) throw new UsageError('missing command');
  if (first === '-h' || first === '--help') return { kind: 'help' };
  if (first === '-V' || first === '--version') return { kind: 'version' };
  if (first === 'help') {
    if (rest.length === 0) return { kind: 'help' };
    if (rest.length === 1 && isTopic(rest[0])) return { kind: 'help', topic: rest[0] };
    throw new UsageError(`unknown help topic ${JSON.stringify(rest.join(' '))}`);
  }
  if (first.startsWith('-')) throw new UsageError(`unknown option ${first} (options go after the command, e.g. ironsocket run ${first})`);
  if (!isTopic(first)) throw new UsageError(`unknown command ${JSON.stringify(first)}`);

  if (first === 'status') {
    const v = strictParse(rest, STATUS_OPTIONS, first);
    if (v.help) return { kind: 'help', topic: first };
    return { kind: 'status', config: v.config, adminSocket: v['admin-socket'], json: v.json === true };
  }
  if (first === 'upgrade') {
    const v = strictParse(rest, UPGRADE_OPTIONS, first);
    if (v.help) return { kind: 'help', topic: first };
    const timeoutS = v.timeout === undefined ? 120 : Number(v.timeout);
    if (!Number.isFinite(timeoutS) || timeoutS <= 0) throw new UsageError(`--timeout: expected a number of seconds, got ${JSON.stringify(v.timeout)}`, first);
    return { kind: 'upgrade', config: v.config, adminSocket: v['admin-socket'], timeoutS };
  }
  if (first === 'reload') {
    const v = strictParse(rest, RELOAD_OPTIONS, first);
    if (v.help) return { kind: 'help', topic: first };
    return { kind: 'reload', config: v.config, adminSocket: v['admin-socket'] };
  }
  const v = strictParse(rest, CONFIG_OPTIONS, first);
  if (v.help) return { kind: 'help', topic: first };
  // Checked here (a usage error now, not a proxy that fails to start later), passed on as given.
  if (first === 'keeper') return { kind: 'keeper', runArgs: rest };
  const flags: ConfigFlags = {};
  const set = (name: Exclude<keyof ConfigFlags, 'fdStore'>, value: string | undefined) => {
    if (value !== undefined) flags[name] = value;
  };
  set('listen', v.listen);
  set('backend', v.backend);
  set('cert', v.cert);
  set('key', v.key);
  set('ktls', v.ktls);
  set('adminSocket', v['admin-socket']);
  set('logLevel', v['log-level']);
  set('workers', v.workers);
  if (v['fd-store']) flags.fdStore = true;
  return { kind: first, config: v.config, flags };
}

function strictParse<O extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: O, topic: Topic) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    const e = err as Error & { code?: string };
    const quoted = /'([^']+)'/.exec(e.message)?.[1];
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') throw new UsageError(`unknown option ${quoted ?? ''}`.trim(), topic);
    if (e.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') throw new UsageError(`unexpected argument ${JSON.stringify(quoted ?? '')}`, topic);
    if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') throw new UsageError(e.message.replace(/\.$/, ''), topic);
    throw err;
  }
}
