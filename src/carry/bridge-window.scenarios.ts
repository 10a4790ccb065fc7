// Connections that end while an upgrade carries them (their batch going into the bridge, or coming back out) end as if never carried: every byte, then close_notify and FIN.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { before, test } from 'node:test';
import { promisify } from 'node:util';
import { modeArgs, type Mode } from '../scenarios/real-clients.scenarios.js';
import { BridgeGate } from '../testkit/bridge-gate.js';
import { Conversation, ENDINGS, conversationBackend, type Ending, type Received } from '../testkit/closing-conversations.js';
import { CLI, FAULT_CLI, childProcesses, eventually, startProxyProcess, type RunningProxy } from '../testkit/proxy-process.js';
import { assertLaneKernel } from '../testkit/lane.js';

const run = promisify(execFile);

/**
 * When a conversation takes its two steps, each while the bridge holds the conversation's own batch and nobody relays
 * it: both as it goes in ('into'), the first then and the second as it comes back ('across'), or both as it comes back
 * ('out'). A client-first ending's second step waits for the backend to see the client's close, wherever that is.
 */
type Schedule = 'into' | 'across' | 'out';
const SCHEDULES: readonly Schedule[] = ['into', 'across', 'out'];

export interface BridgeWindowPlan {
  upgrades: number;
  /** Conversations opened before each upgrade, all ending during it. */
  conversations: number;
  /** How long a conversation may take to end once its steps are taken (only a failing run waits that long). */
  waitMs: number;
}

async function upgradeOk(proxy: RunningProxy, generation: number): Promise<void> {
  const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket, '--timeout', '300']);
  const o = JSON.parse(stdout) as { ok: boolean; pid: number; generation: number };
  assert.deepEqual([o.ok, o.pid, o.generation], [true, proxy.pid, generation], stdout);
}

/** The steps a conversation takes, where: each while the bridge holds its batch, unless it waits for the backend to see the client's close. */
function plannedSteps(s: Schedule, ending: Ending): string[] {
  const [first, second] = {
    into: ['held going in', 'held going in'],
    across: ['held going in', 'held coming back'],
    out: ['held coming back', 'held coming back'],
  }[s];
  // Held, the client's close cannot reach the backend: a client-first ending's second step then waits for it.
  const waits = ending.startsWith('client-first') && s !== 'across';
  return waits ? [first, `${second}: waiting for the client's close at the backend`, 'once the backend saw the close'] : [first, second];
}

/** How the proxy saw each conversation (by its client's address): its mode, and the reason it logged for the close. */
function proxySide(proxy: RunningProxy): Map<string, { mode: string; closed?: string }> {
  const byConn = new Map<string, { mode: string; closed?: string }>();
  const byClient = new Map<string, { mode: string; closed?: string }>();
  for (const line of proxy.logs()) {
    if (!line.includes('"msg":"established"') && !line.includes('"msg":"closed: ')) continue;
    const l = JSON.parse(line) as { conn: string; client?: string; mode?: string; msg: string };
    if (l.msg === 'established') {
      const e = { mode: l.mode ?? '?' };
      byConn.set(l.conn, e);
      byClient.set(l.client!, e);
    } else {
      const e = byConn.get(l.conn);
      if (e) e.closed = l.msg;
    }
  }
  return byClient;
}

/** What is wrong with how one conversation ended, if anything: it must end exactly as it would have without an upgrade. */
function verdict(c: Conversation, schedule: Schedule, got: Received, mode: Mode, proxy: { mode: string; closed?: string } | undefined): string | undefined {
  const problems: string[] = [];
  if (c.steps.join() !== plannedSteps(schedule, c.ending).join()) problems.push('steps not taken at the moments planned');
  if (proxy?.mode !== mode) problems.push(`relayed in ${proxy?.mode} mode`);
  const reason = c.ending === 'client-first-rst' ? 'backend read failed: ECONNRESET' : 'both sides closed';
  if (!new RegExp(`^closed: ${reason}( \\(during an upgrade\\))?$`).test(proxy?.closed ?? '')) {
    problems.push(`the proxy logged ${JSON.stringify(proxy?.closed)}, expected "closed: ${reason}"`);
  }
  const want = c.expected;
  if (!got.data.equals(want)) {
    let at = 0;
    while (at < got.data.length && got.data[at] === want[at]) at++;
    problems.push(`received ${got.data.length} of the backend's ${want.length} bytes (first difference at ${at})`);
  }
  const alerts = c.ending === 'client-first-rst' ? ['fatal 80'] : ['close_notify'];
  if (got.alerts.join() !== alerts.join()) problems.push(`alerts [${got.alerts.join(', ')}], expected [${alerts.join(', ')}]`);
  if (got.ending === 'open') problems.push('the proxy never closed the connection');
  else if (c.ending !== 'client-first-rst' && got.ending !== 'fin') problems.push(`ended by ${got.ending}, expected FIN`);
  if (got.other.length) problems.push(`records of type ${got.other.join(', ')}`);
  if (got.error) problems.push(got.error);
  const b = c.atBackend;
  if (b.request !== `conv ${c.key}\n`) problems.push(`the backend got ${JSON.stringify(b.request)}`);
  if (c.ending !== 'backend-first-rst' && !b.sawEnd) problems.push("the client's close never reached the backend");
  return problems.length ? `${c.key} (${c.ending}, ${schedule}, ${c.client.version}; steps: ${c.steps.join(' → ')}): ${problems.join('; ')}` : undefined;
}

export function bridgeWindowScenarios(mode: Mode, plan: BridgeWindowPlan): void {
  before(() => assertLaneKernel(mode));

  test(
    `${plan.conversations} conversations per upgrade, over ${plan.upgrades} upgrades, that end while the upgrade bridge holds their batch going in or coming back end as if never carried: ` +
      `every byte the backend sent, then close_notify and FIN (or, for a backend that reset, internal_error) (${mode} mode)`,
    async (t) => {
      const startedAt = Date.now();
      const backend = await conversationBackend();
      const gate = new BridgeGate();
      const proxy = await startProxyProcess({ backendPort: backend.port, args: modeArgs(mode), entry: FAULT_CLI, env: gate.env });
      const problems: string[] = [];
      const tally = { clean: 0, reset: 0, stepsHeldIn: 0, stepsHeldOut: 0 };
      try {
        const counters = (await proxy.status()).counters;
        gate.start();
        for (let k = 1; k <= plan.upgrades; k++) {
          const convs: Conversation[] = [];
          for (let j = 0; j < plan.conversations; j += 8) {
            const group = Array.from({ length: Math.min(8, plan.conversations - j) }, (_, i) => j + i);
            const open = (n: number) =>
              Conversation.open(
                proxy.port,
                backend,
                `u${k}-${n}`,
                ENDINGS[n % ENDINGS.length]!,
                Math.floor(n / 12) % 2 ? 'TLSv1.2' : 'TLSv1.3',
                1 + ((n * 7919 + k * 131) % 32_000),
                plan.waitMs,
              );
            convs.push(...(await Promise.all(group.map(open))));
          }
          const schedule = (n: number) => SCHEDULES[Math.floor(n / ENDINGS.length) % SCHEDULES.length]!;
          const byClient = new Map(convs.map((c, n) => [c.clientAddress, { c, s: schedule(n) }]));
          const heldIn = new Set<Conversation>();
          const heldOut = new Set<Conversation>();
          /** Second steps that wait for the backend to see the client's close (which cannot happen while the bridge holds it). */
          const later: Promise<void>[] = [];
          const step = async (c: Conversation, where: string) => {
            const ready = c.ready;
            const p = c.step(where);
            if (ready) await p;
            else later.push(p);
          };
          gate.handle(async (moment, clients) => {
            for (const addr of clients) {
              const e = byClient.get(addr);
              assert.ok(e, `the bridge holds ${addr}, which is none of this round's conversations`);
              const { c, s } = e;
              if (moment === 'adopt') {
                heldIn.add(c);
                if (s !== 'out') await step(c, 'held going in');
                if (s === 'into') await step(c, 'held going in');
              } else {
                heldOut.add(c);
                if (s === 'out') await step(c, 'held coming back');
                if (s !== 'into') await step(c, 'held coming back');
              }
            }
            // Loopback delivers within the send: this only leaves the peers a moment to act on what they got.
            await new Promise((r) => setTimeout(r, 10));
          });
          await upgradeOk(proxy, k + 1);
          // Every conversation was held going in, and those with a step left, coming back: nothing ended by luck.
          const unheld = convs.filter((c, n) => !heldIn.has(c) || (schedule(n) !== 'into' && !heldOut.has(c)));
          for (const c of unheld) while (c.stepsTaken < 2) later.push(c.step('after the upgrade (never held)'));
          await Promise.all(later);
          const results = await Promise.all(convs.map((c) => c.result()));
          for (const c of convs) c.dispose();
          // What ended in the bridge is logged once this image has it back: by now (the upgrade is done).
          const closedLogged = () => convs.every((c) => proxySide(proxy).get(c.clientAddress)?.closed !== undefined);
          await eventually(closedLogged, 10_000).catch(() => {}); // the verdicts say which one is missing
          const seen = proxySide(proxy);
          convs.forEach((c, n) => {
            const bad = verdict(c, schedule(n), results[n]!, mode, seen.get(c.clientAddress));
            if (bad) return problems.push(`upgrade ${k}: ${bad}`);
            tally[c.ending === 'client-first-rst' ? 'reset' : 'clean']++;
            tally.stepsHeldIn += c.steps.filter((x) => x === 'held going in').length;
            tally.stepsHeldOut += c.steps.filter((x) => x === 'held coming back').length;
          });
          assert.deepEqual(
            unheld.map((c) => c.key),
            [],
            'conversations the bridge never held at the moment planned',
          );
          gate.check();
          assert.deepEqual(problems.slice(0, 20), [], `after upgrade ${k}; proxy warnings:\n${warnings(proxy)}`);
        }
        const after = (await proxy.status()).counters;
        const delta = (name: string) => (after[name] ?? 0) - (counters[name] ?? 0);
        assert.equal(delta('closed_restore_failed'), 0, 'no connection failed its restore');
        assert.equal(delta('upgrade_restore_failed'), 0);
        assert.equal(delta('closed_completed'), tally.clean, 'every clean ending counted as completed');
        assert.equal(delta('closed_backend_error'), tally.reset, "every backend's reset counted as backend_error");
        assert.deepEqual(
          proxy.logs().filter((l) => /cannot restore connection/.test(l)),
          [],
        );
        // None of them is listed as live: not even one that ended between coming back and the upgrade's end.
        await eventually(async () => (await proxy.status()).connections.length === 0, 30_000, 'status to list no connection');
        await eventually(() => childProcesses(proxy.pid).length === 0, 30_000, 'the upgrade bridges to be gone');
        t.diagnostic(
          `${tally.clean + tally.reset} conversations over ${plan.upgrades} upgrades (${tally.clean} clean, ${tally.reset} backend resets), ` +
            `${gate.held.adopt} batches held going in and ${gate.held.return} coming back, ` +
            `${tally.stepsHeldIn} steps taken while the bridge held them going in and ${tally.stepsHeldOut} coming back, in ${((Date.now() - startedAt) / 1000).toFixed(1)} s`,
        );
      } finally {
        gate.close();
        await proxy.stop();
        await backend.close();
      }
    },
  );
}

/** The proxy's last warnings and errors, for a failure message. */
function warnings(proxy: RunningProxy): string {
  return proxy
    .logs()
    .filter((l) => /"level":(40|50|60)/.test(l))
    .slice(-20)
    .join('\n');
}
