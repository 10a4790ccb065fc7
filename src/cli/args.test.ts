// Checks command-line parsing: subcommands, flags mapped to config flags, and usage errors.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseCli, usage, UsageError } from './args.js';

function usageError(argv: string[]): UsageError {
  try {
    parseCli(argv);
  } catch (err) {
    assert.ok(err instanceof UsageError, String(err));
    return err;
  }
  assert.fail(`expected a UsageError for ${argv.join(' ')}`);
}

describe('parseCli', () => {
  it('maps run flags to config flags', () => {
    assert.deepEqual(
      parseCli([
        'run',
        '-c',
        'x.toml',
        '--listen',
        '[::1]:1',
        '--backend',
        'b:2',
        '--cert',
        'c',
        '--key',
        'k',
        '--ktls',
        'off',
        '--admin-socket',
        's',
        '--log-level',
        'debug',
      ]),
      { kind: 'run', config: 'x.toml', flags: { listen: '[::1]:1', backend: 'b:2', cert: 'c', key: 'k', ktls: 'off', adminSocket: 's', logLevel: 'debug' } },
    );
    assert.deepEqual(parseCli(['run']), { kind: 'run', config: undefined, flags: {} });
  });

  it('maps --fd-store to a switch for run and check', () => {
    assert.deepEqual(parseCli(['run', '--fd-store']), { kind: 'run', config: undefined, flags: { fdStore: true } });
    assert.deepEqual(parseCli(['check', '--fd-store', '-c', 'x.toml']), { kind: 'check', config: 'x.toml', flags: { fdStore: true } });
    assert.match(usageError(['run', '--fd-store=yes']).message, /fd-store/);
  });

  it('takes the run options for keeper, checked, and passes them on as given', () => {
    assert.deepEqual(parseCli(['keeper', '--listen', '127.0.0.1:1', '--ktls', 'off']), {
      kind: 'keeper',
      runArgs: ['--listen', '127.0.0.1:1', '--ktls', 'off'],
    });
    assert.deepEqual(parseCli(['keeper', '--help']), { kind: 'help', topic: 'keeper' });
    assert.equal(usageError(['keeper', '--json']).message, 'unknown option --json');
    assert.match(usage('keeper'), /restarts? it|starts it again/);
  });

  it('parses status options', () => {
    assert.deepEqual(parseCli(['status', '--json', '--admin-socket', '/s']), { kind: 'status', config: undefined, adminSocket: '/s', json: true });
  });

  it('recognises help and version in their usual spellings', () => {
    assert.deepEqual(parseCli(['--help']), { kind: 'help' });
    assert.deepEqual(parseCli(['-h']), { kind: 'help' });
    assert.deepEqual(parseCli(['help', 'status']), { kind: 'help', topic: 'status' });
    assert.deepEqual(parseCli(['run', '--help']), { kind: 'help', topic: 'run' });
    assert.deepEqual(parseCli(['--version']), { kind: 'version' });
    assert.deepEqual(parseCli(['-V']), { kind: 'version' });
  });

  it('rejects unknown options and names them', () => {
    const e = usageError(['run', '--lisen', 'x']);
    assert.equal(e.message, 'unknown option --lisen');
    assert.equal(e.topic, 'run');
    assert.equal(usageError(['status', '--listen', 'x']).message, 'unknown option --listen');
  });

  it('rejects unknown commands, stray arguments and missing values', () => {
    assert.match(usageError(['serve']).message, /unknown command "serve"/);
    assert.match(usageError([]).message, /missing command/);
    assert.match(usageError(['run', 'extra']).message, /unexpected argument "extra"/);
    assert.match(usageError(['run', '--listen']).message, /--listen/);
    assert.match(usageError(['--listen', 'x']).message, /options go after the command/);
  });

  it('checks the defaults when given nothing, exactly as run would start (the upgrade pre-flight relies on it)', () => {
    assert.deepEqual(parseCli(['check']), { kind: 'check', config: undefined, flags: {} });
  });

  it('parses upgrade with its admin socket and timeout, and rejects a bad timeout', () => {
    assert.deepEqual(parseCli(['upgrade', '--admin-socket', '/x.sock', '--timeout', '30']), {
      kind: 'upgrade',
      config: undefined,
      adminSocket: '/x.sock',
      timeoutS: 30,
    });
    assert.match(usageError(['upgrade', '--timeout', 'soon']).message, /--timeout/);
  });

  it('has help text for every command', () => {
    for (const topic of ['run', 'status', 'check', 'upgrade'] as const) assert.match(usage(topic), new RegExp(`^Usage: ironsocket ${topic}`));
    assert.match(usage(), /^Usage: ironsocket <command>/);
  });
});
