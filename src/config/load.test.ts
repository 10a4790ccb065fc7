// Checks how defaults, the config file and flags combine into a ProxyConfig, and the cert/key check.
import { availableParallelism } from 'node:os';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ensureDefaultCertificate } from './default-cert.js';
import { checkCertificateFiles, defaultAdminSocketPath, loadConfig, resolveConfig } from './load.js';
import { ConfigError } from './schema.js';

let dir: string;
let env: NodeJS.ProcessEnv;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ironsocket-load-'));
  env = { IRONSOCKET_STATE_DIR: join(dir, 'state'), XDG_RUNTIME_DIR: join(dir, 'run') };
});
after(() => rm(dir, { recursive: true, force: true }));

async function writeConfig(name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

async function configProblems(p: Promise<unknown>): Promise<string[]> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  assert.fail('expected a ConfigError');
}

describe('loadConfig', () => {
  it('uses the documented defaults and the generated certificate when nothing is given', async () => {
    const c = await loadConfig({ flags: {}, env });
    assert.equal(c.listeners.length, 1);
    const l = c.listeners[0]!;
    assert.deepEqual(l.listen, { host: '127.0.0.1', port: 8443 });
    assert.deepEqual(l.backends, [{ host: '127.0.0.1', port: 8080 }]);
    assert.equal(l.name, '127.0.0.1:8443');
    assert.deepEqual([l.alpn, l.routes, l.clientAuth, l.proxyProtocol, l.transparent], [[], [], undefined, 'off', false]);
    assert.equal(c.backendRetryMs, 10_000);
    assert.equal(c.metrics, undefined);
    assert.equal(c.ktls, 'auto');
    assert.equal(c.adminSocket, join(dir, 'run', 'ironsocket', 'admin.sock'));
    assert.equal(c.handshakeTimeoutMs, 10_000);
    assert.equal(c.backendConnectTimeoutMs, 5_000);
    assert.equal(c.idleTimeoutMs, 0);
    assert.equal(c.maxConnections, 10_000);
    assert.equal(c.maxConnectionsPerSource, 1000);
    assert.equal(c.maxHandshakesPerSource, 256);
    assert.equal(c.logLevel, 'info');
    assert.equal(c.workers, availableParallelism());
    assert.deepEqual(l.certs, [
      { certFile: join(dir, 'state', 'localhost', 'cert.pem'), keyFile: join(dir, 'state', 'localhost', 'key.pem'), names: ['localhost'], default: true },
    ]);
  });

  it('reads every key of the file and resolves paths against the file directory', async () => {
    const file = await writeConfig(
      'full.toml',
      `listen = "[::1]:9443"
backend = "backend.internal:9000"
cert = "certs/c.pem"
key = "/abs/k.pem"
ktls = "require"
admin_socket = "run/a.sock"
workers = 3
[timeouts]
handshake = "500ms"
backend_connect = "2s"
idle = "5m"
[limits]
max_connections = 42
max_connections_per_source = 7
max_handshakes_per_source = 0
[log]
level = "debug"
[session_tickets]
lifetime = "30m"
key_file = "tickets.keys"
`,
    );
    const c = await loadConfig({ file, flags: {}, env });
    assert.deepEqual(c, {
      listeners: [
        {
          name: '[::1]:9443',
          listen: { host: '::1', port: 9443 },
          backends: [{ host: 'backend.internal', port: 9000 }],
          certs: [{ certFile: join(dir, 'certs', 'c.pem'), keyFile: '/abs/k.pem', names: [], default: true }],
          alpn: [],
          routes: [],
          clientAuth: undefined,
          proxyProtocol: 'off',
          transparent: false,
        },
      ],
      ktls: 'require',
      adminSocket: join(dir, 'run', 'a.sock'),
      handshakeTimeoutMs: 500,
      backendConnectTimeoutMs: 2000,
      backendRetryMs: 10_000,
      idleTimeoutMs: 300_000,
      maxConnections: 42,
      maxConnectionsPerSource: 7,
      maxHandshakesPerSource: 0,
      logLevel: 'debug',
      workers: 3,
      fdStore: false,
      sessionTickets: { rotateEveryMs: 7_200_000, lifetimeMs: 1_800_000, keyFile: join(dir, 'tickets.keys') },
    });
  });

  it('lets flags override file values, which override defaults', async () => {
    const file = await writeConfig('partial.toml', 'listen = "0.0.0.0:443"\nbackend = "10.0.0.2:80"\nktls = "off"\n');
    const c = await loadConfig({ file, flags: { listen: '[::]:8443', logLevel: 'warn', workers: '5' }, env });
    assert.deepEqual(c.listeners[0]!.listen, { host: '::', port: 8443 });
    assert.equal(c.workers, 5);
    assert.deepEqual(c.listeners[0]!.backends, [{ host: '10.0.0.2', port: 80 }]);
    assert.equal(c.ktls, 'off');
    assert.equal(c.logLevel, 'warn');
  });

  it('turns the fd store on from fd_store = true or --fd-store, and leaves it off by default', async () => {
    const on = await writeConfig('fdstore.toml', 'fd_store = true\n');
    const off = await writeConfig('fdstore-off.toml', 'fd_store = false\n');
    assert.equal((await loadConfig({ flags: {}, env })).fdStore, false);
    assert.equal((await loadConfig({ file: on, flags: {}, env })).fdStore, true);
    assert.equal((await loadConfig({ file: off, flags: { fdStore: true }, env })).fdStore, true);
    const bad = await writeConfig('fdstore-bad.toml', 'fd_store = "yes"\n');
    assert.deepEqual(await configProblems(loadConfig({ file: bad, flags: {}, env })), [`${bad}: fd_store: expected true or false, got "yes"`]);
  });

  it('resolves flag paths against the working directory', async () => {
    const r = await resolveConfig({ flags: { cert: 'c.pem', key: 'k.pem', adminSocket: 's.sock' }, env });
    assert.equal(r.config.listeners[0]!.certs[0]!.certFile, join(process.cwd(), 'c.pem'));
    assert.equal(r.config.adminSocket, join(process.cwd(), 's.sock'));
    assert.equal(r.certSource, 'configured');
  });

  it('names the flag in flag errors and the file in file errors', async () => {
    const file = await writeConfig('bad.toml', 'listen = "foo"\n');
    const p = await configProblems(loadConfig({ file, flags: { backend: 'nope', ktls: 'sometimes', workers: '0' }, env }));
    assert.deepEqual(p, [
      `${file}: listen: expected "HOST:PORT", got "foo"`,
      '--backend: expected "HOST:PORT", got "nope"',
      '--ktls: expected one of "auto", "require", "off", got "sometimes"',
      '--workers: expected a number of at least 1, got 0',
    ]);
  });

  it('takes a tenth of max_connections per source when max_connections_per_source is unset (at least 64, at most half), and 0 as no limit', async () => {
    const perSource = async (max: number) =>
      (await loadConfig({ file: await writeConfig(`per-source-${max}.toml`, `[limits]\nmax_connections = ${max}\n`), flags: {}, env })).maxConnectionsPerSource;
    assert.deepEqual(await Promise.all([100_000, 10_000, 1000, 50, 2, 1].map(perSource)), [10_000, 1000, 100, 25, 1, 1]);
    const off = await loadConfig({
      file: await writeConfig('per-source-off.toml', '[limits]\nmax_connections_per_source = 0\nmax_handshakes_per_source = 0\n'),
      flags: {},
      env,
    });
    assert.deepEqual([off.maxConnectionsPerSource, off.maxHandshakesPerSource], [0, 0]);
  });

  it('rejects per-source limits that are not whole numbers of at least 0', async () => {
    const file = await writeConfig('per-source-bad.toml', '[limits]\nmax_connections_per_source = -1\nmax_handshakes_per_source = 2.5\n');
    assert.deepEqual(await configProblems(loadConfig({ file, flags: {}, env })), [
      `${file}: limits.max_connections_per_source: expected a number of at least 0 (0: no limit), got -1`,
      `${file}: limits.max_handshakes_per_source: expected a whole number, got 2.5`,
    ]);
    const text = await writeConfig('per-source-text.toml', '[limits]\nmax_handshakes_per_source = "64"\n');
    assert.deepEqual(await configProblems(loadConfig({ file: text, flags: {}, env })), [
      `${text}: limits.max_handshakes_per_source: expected a whole number, got "64"`,
    ]);
  });

  it('rejects unknown keys', async () => {
    const file = await writeConfig('unknown.toml', 'listen = "127.0.0.1:1"\n[timeouts]\nread = "1s"\n');
    const p = await configProblems(loadConfig({ file, flags: {}, env }));
    assert.deepEqual(p, [`${file}: timeouts.read: unknown key (allowed here: handshake, backend_connect, idle, backend_retry)`]);
  });

  it('reports TOML syntax errors with line and column', async () => {
    const file = await writeConfig('syntax.toml', 'listen = "127.0.0.1:1"\nbackend = \n');
    const [p] = await configProblems(loadConfig({ file, flags: {}, env }));
    assert.match(p, new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2:\\d+: invalid TOML: `));
  });

  it('says so when the config file does not exist', async () => {
    const file = join(dir, 'missing.toml');
    assert.deepEqual(await configProblems(loadConfig({ file, flags: {}, env })), [`${file}: cannot read config file: no such file`]);
  });

  it('requires cert and key together', async () => {
    const [p] = await configProblems(loadConfig({ flags: { cert: 'c.pem' }, env }));
    assert.match(p, /^--cert was given without --key/);
  });

  it('rejects admin socket paths too long for a Unix socket', async () => {
    const [p] = await configProblems(loadConfig({ flags: { adminSocket: '/' + 'x'.repeat(120) }, env }));
    assert.match(p, /^--admin-socket: expected a Unix socket path of at most 107 bytes/);
  });

  it('does not generate the default certificate when asked not to', async () => {
    const e = { ...env, IRONSOCKET_STATE_DIR: join(dir, 'never') };
    const r = await resolveConfig({ flags: {}, env: e, generateDefaultCert: false });
    assert.equal(r.certSource, 'default-not-generated');
    assert.equal(r.config.listeners[0]!.certs[0]!.certFile, join(dir, 'never', 'localhost', 'cert.pem'));
  });
});

describe('listeners in the config file', () => {
  it('reads several [[listener]] tables with certificates, ALPN routes, client auth and PROXY protocol', async () => {
    const file = await writeConfig(
      'multi.toml',
      `workers = 1
user = "nobody"
group = "nogroup"
[metrics]
listen = "127.0.0.1:9100"
[timeouts]
backend_retry = "30s"

[[listener]]
name = "web"
listen = "0.0.0.0:443"
backends = ["10.0.0.1:80", "10.0.0.2:80"]
alpn = ["h2", "http/1.1"]
proxy_protocol = "v2"
certs = [
  { cert = "a.pem", key = "a.key" },
  { cert = "b.pem", key = "b.key", names = ["*.example.com"], default = true },
]
[[listener.route]]
alpn = "h2"
backend = "10.0.0.9:8080"
[listener.client_auth]
ca = "clients.pem"
verify = "optional"

[[listener]]
listen = "[::]:8443"
backend = "127.0.0.1:6379"
cert = "/etc/r.pem"
key = "/etc/r.key"
transparent = true
`,
    );
    const c = await loadConfig({ file, flags: {}, env });
    assert.deepEqual(c.metrics, { host: '127.0.0.1', port: 9100 });
    assert.deepEqual([c.user, c.group, c.backendRetryMs], ['nobody', 'nogroup', 30_000]);
    assert.deepEqual(c.listeners, [
      {
        name: 'web',
        listen: { host: '0.0.0.0', port: 443 },
        backends: [
          { host: '10.0.0.1', port: 80 },
          { host: '10.0.0.2', port: 80 },
        ],
        certs: [
          { certFile: join(dir, 'a.pem'), keyFile: join(dir, 'a.key'), names: [], default: false },
          { certFile: join(dir, 'b.pem'), keyFile: join(dir, 'b.key'), names: ['*.example.com'], default: true },
        ],
        alpn: ['h2', 'http/1.1'],
        routes: [{ alpn: 'h2', backends: [{ host: '10.0.0.9', port: 8080 }] }],
        clientAuth: { caFile: join(dir, 'clients.pem'), required: false },
        proxyProtocol: 'v2',
        transparent: false,
      },
      {
        name: '[::]:8443',
        listen: { host: '::', port: 8443 },
        backends: [{ host: '127.0.0.1', port: 6379 }],
        certs: [{ certFile: '/etc/r.pem', keyFile: '/etc/r.key', names: [], default: true }],
        alpn: [],
        routes: [],
        clientAuth: undefined,
        proxyProtocol: 'off',
        transparent: true,
      },
    ]);
  });

  it('says which listener and key is wrong, and why', async () => {
    const file = await writeConfig(
      'multi-bad.toml',
      `[[listener]]
listen = "127.0.0.1:1"
backend = "127.0.0.1:2"
backends = ["127.0.0.1:3"]
alpn = ["http/1.1"]
certs = [{ cert = "a", key = "a", default = true }, { cert = "b", key = "b", default = true }]
[[listener.route]]
alpn = "h2"
backend = "127.0.0.1:4"

[[listener]]
backend = "127.0.0.1:2"

[[listener]]
listen = "127.0.0.1:1"
backend = "127.0.0.1:2"
`,
    );
    assert.deepEqual(await configProblems(loadConfig({ file, flags: {}, env })), [
      `${file}: listener[1].backends: give backend or backends, not both`,
      `${file}: listener[1].certs: 2 certificates say default = true; at most one can be the default`,
      `${file}: listener[1].route[1].alpn: "h2" is not offered by this listener (alpn = ["http/1.1"])`,
      `${file}: listener[2].listen: required in every [[listener]] table, e.g. listen = "0.0.0.0:443"`,
      `${file}: listeners "127.0.0.1:1" and "127.0.0.1:1" both listen on 127.0.0.1:1`,
    ]);
  });

  it('names unknown keys inside a listener with the keys allowed there', async () => {
    const file = await writeConfig('multi-unknown.toml', '[[listener]]\nlisten = "127.0.0.1:1"\nbackend = "127.0.0.1:2"\n[[listener]]\nport = 4\n');
    const [p] = await configProblems(loadConfig({ file, flags: {}, env }));
    assert.match(
      p,
      new RegExp(
        `^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: listener\\[2\\]\\.port: unknown key \\(allowed here: name, listen, backend, backends, cert, key, certs, alpn, route, client_auth, proxy_protocol, transparent\\)$`,
      ),
    );
  });

  it('refuses top-level listener keys next to [[listener]] tables, and listener flags with several listeners', async () => {
    const file = await writeConfig(
      'multi-mixed.toml',
      'listen = "127.0.0.1:1"\n[[listener]]\nlisten = "127.0.0.1:2"\nbackend = "127.0.0.1:3"\n[[listener]]\nlisten = "127.0.0.1:4"\nbackend = "127.0.0.1:3"\n',
    );
    assert.deepEqual(await configProblems(loadConfig({ file, flags: { backend: '127.0.0.1:9' }, env })), [
      `${file}: listen: with [[listener]] tables, listener settings go inside them, not at the top level`,
      '--backend: the config file has 2 listeners; these flags can only override a file with one',
    ]);
  });

  it('lets flags override the single [[listener]] of a file', async () => {
    const file = await writeConfig('one.toml', '[[listener]]\nname = "db"\nlisten = "127.0.0.1:1"\nbackend = "127.0.0.1:3"\nproxy_protocol = "v1"\n');
    const c = await loadConfig({ file, flags: { listen: '127.0.0.1:7' }, env });
    assert.deepEqual([c.listeners[0]!.name, c.listeners[0]!.listen.port, c.listeners[0]!.proxyProtocol], ['db', 7, 'v1']);
  });
});

describe('defaultAdminSocketPath', () => {
  it('prefers $XDG_RUNTIME_DIR', () => {
    assert.equal(defaultAdminSocketPath({ XDG_RUNTIME_DIR: '/run/user/1000' }), '/run/user/1000/ironsocket/admin.sock');
  });

  it('falls back to /run as root and to the user’s own ~/.local/state otherwise', () => {
    const expected = process.getuid?.() === 0 ? '/run/ironsocket/admin.sock' : '/home/u/.local/state/ironsocket/admin.sock';
    assert.equal(defaultAdminSocketPath({ HOME: '/home/u' }), expected);
  });
});

describe('checkCertificateFiles', () => {
  it('accepts a matching pair and reports a mismatched or missing one', async () => {
    const a = await ensureDefaultCertificate({ IRONSOCKET_STATE_DIR: join(dir, 'pair-a') });
    const b = await ensureDefaultCertificate({ IRONSOCKET_STATE_DIR: join(dir, 'pair-b') });
    assert.deepEqual(await checkCertificateFiles(a.certFile, a.keyFile), []);
    const [mismatch] = await checkCertificateFiles(a.certFile, b.keyFile);
    assert.match(mismatch, /do not match/);
    const [missing] = await checkCertificateFiles(join(dir, 'nope.pem'), a.keyFile);
    assert.match(missing, /^cert: cannot read ".*nope\.pem": no such file$/);
  });

  it('reports an expired certificate', async () => {
    const a = await ensureDefaultCertificate({ IRONSOCKET_STATE_DIR: join(dir, 'pair-a') });
    const [p] = await checkCertificateFiles(a.certFile, a.keyFile, Date.now() + 400 * 86_400_000);
    assert.match(p, /expired on/);
  });
});
