// The per-lane test files of every `*.scenarios.ts`, as one list: the build writes each entry's `NAME.test.js` (native lane) and `NAME.ktls-test.js` (kTLS lane) beside its compiled scenarios (scripts/lane-tests.mjs).

/** One lane's file: a one-line header, then its calls of the scenarios function. */
export interface LaneFile {
  /** The generated file's header comment. */
  about: string;
  /** Each call's arguments (the mode first), inside `describe(title)` when it has one. */
  calls: { args: readonly unknown[]; describe?: string }[];
}

export interface LaneEntry {
  /** The scenarios file under src/, without `.scenarios.ts` (the lane files take this name). */
  name: string;
  /** The function it exports. */
  run: string;
  /** Native lane (`npm test`): `NAME.test.js`. */
  user: LaneFile;
  /** kTLS lane (`npm run test:ktls`): `NAME.ktls-test.js`. */
  kernel: LaneFile;
}

/** A lane file that calls the scenarios function once, with these arguments. */
const lane = (about: string, ...args: unknown[]): LaneFile => ({ about, calls: [{ args }] });
const userPace = { chunk: 4096, everyMs: 20 };
const kernelPace = { chunk: 1024, everyMs: 100 };

export const LANES: LaneEntry[] = [
  {
    name: 'relay/streams',
    run: 'streamScenarios',
    user: lane('Native lane: bulk, concurrent and Finished-coalesced verified streams over the userspace record layer.', 'user'),
    kernel: lane('kTLS lane: bulk, concurrent and Finished-coalesced verified streams over kernel-carried sessions.', 'kernel'),
  },
  {
    name: 'relay/record-integrity',
    run: 'recordIntegrityScenarios',
    user: lane('Native lane: record integrity failures in the userspace record layer.', 'user'),
    kernel: lane('kTLS lane: record integrity failures detected by the kernel (EBADMSG).', 'kernel'),
  },
  {
    name: 'relay/conformance',
    run: 'conformanceScenarios',
    user: lane("User mode: every record-layer case after the handshake gets OpenSSL's answer.", 'user'),
    kernel: lane("kTLS lane: every record-layer case after the handshake gets OpenSSL's answer where the kernel lets us tell the cases apart.", 'kernel'),
  },
  {
    name: 'relay/floods',
    run: 'floodScenarios',
    user: lane('User mode, two relay workers: a client flooding records without data is cut off and costs the others nothing.', 'user'),
    kernel: lane('kTLS lane: a client flooding empty records is cut off exactly as in user mode.', 'kernel'),
  },
  {
    name: 'carry/upgrade',
    run: 'upgradeScenarios',
    user: lane('Native lane: in-place upgrades carrying userspace-record connections across exec.', 'user', userPace),
    kernel: lane('kTLS lane: in-place upgrades carrying kernel-TLS connections across exec (the TLS state travels with the fd).', 'kernel', kernelPace),
  },
  {
    name: 'carry/bridge-window',
    run: 'bridgeWindowScenarios',
    user: lane('Native lane: connections ending while the upgrade bridge holds them, going in or coming back (userspace records).', 'user', {
      upgrades: 20,
      conversations: 24,
      waitMs: 30_000,
    }),
    // CI runs this file in its second guest, after the soak (.ci/run): 12 upgrades take 5 to 10 minutes there.
    kernel: lane('kTLS lane: connections ending while the upgrade bridge holds them, going in or coming back (kernel-TLS connections).', 'kernel', {
      upgrades: 12,
      conversations: 24,
      waitMs: 120_000,
    }),
  },
  {
    name: 'carry/upgrade-edges',
    run: 'upgradeEdgeScenarios',
    user: lane('Native lane: upgrade edge cases with userspace-record connections.', 'user'),
    kernel: lane('kTLS lane: upgrade edge cases with kernel-TLS connections.', 'kernel'),
  },
  {
    name: 'carry/dumpable',
    run: 'dumpableScenarios',
    user: lane('Native lane: the proxy, its upgraded image and its upgrade bridge are non-dumpable (userspace-record connections).', 'user'),
    kernel: lane('kTLS lane: the proxy, its upgraded image and its upgrade bridge are non-dumpable (kernel-TLS connections).', 'kernel'),
  },
  {
    name: 'carry/fd-store',
    run: 'fdStoreScenarios',
    user: lane('Native lane: the fd store with userspace-record connections (deposited, removed on every close, closed and counted after a crash).', 'user', {
      ...userPace,
      streams: 0,
    }),
    kernel: lane('kTLS lane: the fd store with kernel-TLS connections, which survive kill -9 of the proxy and a restart from the store.', 'kernel', {
      ...kernelPace,
      streams: 100,
    }),
  },
  {
    name: 'service/keeper',
    run: 'keeperScenarios',
    user: lane('Native lane: `ironsocket keeper` with userspace-record connections (closed cleanly after the proxy is killed, the port kept).', 'user', {
      ...userPace,
      streams: 0,
    }),
    kernel: lane('kTLS lane: `ironsocket keeper` with kernel-TLS connections, which carry on after the proxy is killed with SIGKILL.', 'kernel', {
      ...kernelPace,
      streams: 10,
    }),
  },
  {
    name: 'cli/npm-start',
    run: 'npmStartScenario',
    user: lane('Native lane: `npm start` works out of the box (userspace records: this kernel has no kTLS).', 'user'),
    kernel: lane('kTLS lane: `npm start` works out of the box and the default `--ktls auto` puts the session in the kernel.', 'kernel'),
  },
  {
    name: 'scenarios/close-behaviour',
    run: 'closeBehaviourScenarios',
    user: lane('Native lane: the same endings with the userspace record layer carrying the connections.', 'user'),
    kernel: lane('kTLS lane: how kernel-carried connections end, and that each leaves no fd behind.', 'kernel'),
  },
  {
    name: 'scenarios/early-data',
    run: 'earlyDataScenarios',
    user: lane('Native lane: 0-RTT early data refused by a proxy carrying sessions with the userspace record layer.', 'user'),
    kernel: lane('kTLS lane: 0-RTT early data refused by a proxy whose sessions the kernel carries.', 'kernel'),
  },
  {
    name: 'scenarios/faults',
    run: 'faultScenarios',
    user: lane('Native lane: the fault scenarios with the userspace record layer carrying the connections.', 'user'),
    kernel: lane('kTLS lane: the fault scenarios with kernel TLS carrying the connections (bytes spliced, never copied through JavaScript).', 'kernel'),
  },
  {
    name: 'scenarios/listeners',
    run: 'listenerScenarios',
    user: lane('Native lane: listeners (SNI, ALPN routes, client certificates, PROXY headers, backend pools) with the userspace record layer.', 'user'),
    kernel: lane('kTLS lane: the same listener scenarios with the kernel carrying every session.', 'kernel'),
  },
  {
    name: 'scenarios/real-clients',
    run: 'realClientScenarios',
    user: {
      about: 'Native lane: every suite through real clients with the userspace record layer, with --ktls off and with the default auto.',
      calls: [
        { describe: '--ktls off', args: ['user'] },
        { describe: '--ktls auto on a kernel without kTLS', args: ['user', 'auto'] },
      ],
    },
    kernel: lane('kTLS lane: every suite through real clients with the kernel carrying the session.', 'kernel'),
  },
  {
    name: 'scenarios/session-tickets',
    run: 'sessionTicketScenarios',
    user: lane('Native lane: session tickets resume on both handshake workers, across upgrades, renewed each time, over the userspace record layer.', 'user'),
    kernel: lane('kTLS lane: session tickets resume on both handshake workers and across upgrades with the kernel carrying every resumed session.', 'kernel'),
  },
  {
    name: 'scenarios/secrets-memory',
    run: 'secretsMemoryScenarios',
    user: lane("User mode: a closed session's secrets and record keys do not stay in the proxy's memory.", 'user'),
    kernel: lane("kTLS lane: once the kernel has a session's keys, the proxy keeps no copy of its secrets while it relays.", 'kernel'),
  },
];

/** The text of one lane file, for the compiled scenarios module `./BASE.scenarios.js` beside it. */
export function laneFileText(entry: LaneEntry, mode: 'user' | 'kernel'): string {
  const base = entry.name.slice(entry.name.lastIndexOf('/') + 1);
  const args = (a: readonly unknown[]): string => a.map((x) => JSON.stringify(x)).join(', ');
  const { about, calls } = entry[mode];
  const lines = [`// ${about}`, '// Generated by scripts/lane-tests.mjs from src/testkit/lanes.ts.'];
  if (calls.some((c) => c.describe !== undefined)) lines.push(`import { describe } from 'node:test';`);
  lines.push(`import { ${entry.run} } from './${base}.scenarios.js';`, '');
  for (const c of calls) {
    const call = `${entry.run}(${args(c.args)})`;
    lines.push(c.describe === undefined ? `${call};` : `describe(${JSON.stringify(c.describe)}, () => ${call});`);
  }
  return lines.join('\n') + '\n';
}
