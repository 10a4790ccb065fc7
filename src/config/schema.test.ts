// Checks the value rules (HOST:PORT, durations) and the wording of validation messages.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, FileSchema, formatHostPort, parseDuration, parseHostPort, validate } from './schema.js';

function problems(raw: unknown): string[] {
  try {
    validate(FileSchema, raw, 'config.toml');
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err.problems;
  }
  assert.fail('expected a ConfigError');
}

describe('parseHostPort', () => {
  it('accepts IPv4, host names and bracketed IPv6 addresses', () => {
    assert.deepEqual(parseHostPort('127.0.0.1:8443'), { host: '127.0.0.1', port: 8443 });
    assert.deepEqual(parseHostPort('localhost:80'), { host: 'localhost', port: 80 });
    assert.deepEqual(parseHostPort('[::1]:8443'), { host: '::1', port: 8443 });
    assert.deepEqual(parseHostPort('[2001:db8::1]:443'), { host: '2001:db8::1', port: 443 });
  });

  it('rejects unbracketed IPv6, bad ports, bad hosts and missing parts', () => {
    for (const bad of ['foo', '::1:8443', '127.0.0.1:70000', '127.0.0.1:', ':8443', '[::1]', '[zz]:80', '1.2.3.999:80', 'a b:80', 'host:8x']) {
      assert.ok('error' in parseHostPort(bad), bad);
    }
  });

  it('allows port 0 only when asked to', () => {
    assert.ok('error' in parseHostPort('127.0.0.1:0'));
    assert.deepEqual(parseHostPort('127.0.0.1:0', true), { host: '127.0.0.1', port: 0 });
  });

  it('formats IPv6 hosts back with brackets', () => {
    assert.equal(formatHostPort({ host: '::1', port: 1 }), '[::1]:1');
    assert.equal(formatHostPort({ host: '10.0.0.1', port: 2 }), '10.0.0.1:2');
  });
});

describe('parseDuration', () => {
  it('understands ms, s, m, h, d, compound forms and "0"', () => {
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('10s'), 10_000);
    assert.equal(parseDuration('5m'), 300_000);
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('1.5s'), 1500);
    assert.equal(parseDuration('2d'), 172_800_000);
    assert.equal(parseDuration('0'), 0);
  });

  it('rejects unit-less numbers, unknown units and empty strings', () => {
    for (const bad of ['10', '', '5x', 's', '10 s', '-1s', '1s ']) assert.equal(parseDuration(bad), null, bad);
  });
});

describe('file schema messages', () => {
  it('names the file, the key path, what was expected and what was found', () => {
    assert.deepEqual(problems({ listen: 'foo' }), ['config.toml: listen: expected "HOST:PORT", got "foo"']);
    assert.deepEqual(problems({ timeouts: { handshake: 'soon' } }), [
      'config.toml: timeouts.handshake: expected a duration like "500ms", "10s", "5m" or "1h30m", got "soon"',
    ]);
    assert.deepEqual(problems({ ktls: 'maybe' }), ['config.toml: ktls: expected one of "auto", "require", "off", got "maybe"']);
    assert.deepEqual(problems({ limits: { max_connections: 0 } }), ['config.toml: limits.max_connections: expected a number of at least 1, got 0']);
    assert.deepEqual(problems({ timeouts: '5s' }), ['config.toml: timeouts: expected a table, got "5s"']);
    assert.deepEqual(problems({ backend: 8080 }), ['config.toml: backend: expected "HOST:PORT", got 8080']);
  });

  it('reports unknown keys at any level with the keys allowed there', () => {
    const p = problems({ lisen: 'x', log: { lvl: 'info' } });
    assert.ok(
      p.includes(
        'config.toml: lisen: unknown key (allowed here: listen, backend, backends, cert, key, certs, alpn, route, client_auth, proxy_protocol, transparent, listener, ktls, admin_socket, workers, user, group, fd_store, timeouts, limits, log, metrics, session_tickets)',
      ),
      p.join('\n'),
    );
    assert.ok(p.includes('config.toml: log.lvl: unknown key (allowed here: level)'), p.join('\n'));
  });

  it('reports every problem at once', () => {
    assert.equal(problems({ listen: 'a', backend: 'b', ktls: 'c', timeouts: { idle: 'd' } }).length, 4);
  });

  it('allows idle "0" and numeric 0 but not a zero handshake or connect timeout', () => {
    assert.equal(validate(FileSchema, { timeouts: { idle: '0' } }, 'f').timeouts?.idle, 0);
    assert.equal(validate(FileSchema, { timeouts: { idle: 0 } }, 'f').timeouts?.idle, 0);
    assert.match(problems({ timeouts: { backend_connect: '0' } })[0], /timeouts\.backend_connect: expected a duration greater than 0/);
  });

  it('rejects durations longer than Node timers can represent', () => {
    assert.match(problems({ timeouts: { idle: '30d' } })[0], /at most 24d, got "30d"/);
  });
});
