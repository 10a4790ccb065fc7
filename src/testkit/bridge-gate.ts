// Test support: the test's side of the upgrade bridge's gate (IRONSOCKET_FAULT_BRIDGE=gate:DIR): each batch it holds is handed to the test, then let go.
import fs from 'node:fs';
import path from 'node:path';
import { tempDir } from './proxy-process.js';

/** Where the bridge holds a batch: just received ('adopt'), or just detached to be sent back ('return'). */
export type GateMoment = 'adopt' | 'return';

export class BridgeGate {
  readonly dir = tempDir('gate');
  /** Batches held so far, per moment. */
  readonly held = { adopt: 0, return: 0 };
  private readonly seen = new Set<string>();
  private readonly errors: Error[] = [];
  private timer: NodeJS.Timeout | undefined;
  private on: (moment: GateMoment, clients: string[]) => Promise<void> = async () => {};

  /** The proxy's environment (run it with FAULT_CLI as its entry). */
  get env(): NodeJS.ProcessEnv {
    return { IRONSOCKET_FAULT_BRIDGE: `gate:${this.dir}` };
  }

  /** From now on, each batch held goes to `on` (its clients as the proxy names them, host:port); the bridge goes on once it resolves. */
  handle(on: (moment: GateMoment, clients: string[]) => Promise<void>): void {
    this.on = on;
  }

  /** Starts watching for held batches, one at a time, in order. */
  start(): void {
    const tick = async () => {
      const names = fs
        .readdirSync(this.dir)
        .filter((f) => f.endsWith('.held') && !this.seen.has(f))
        .sort();
      for (const f of names) {
        this.seen.add(f);
        const moment = /-(adopt|return)\.held$/.exec(f)![1] as GateMoment;
        this.held[moment] += 1;
        try {
          await this.on(moment, JSON.parse(fs.readFileSync(path.join(this.dir, f), 'utf8')) as string[]);
        } catch (e) {
          this.errors.push(e as Error);
        } finally {
          fs.writeFileSync(path.join(this.dir, f.replace(/\.held$/, '.go')), '');
        }
      }
      if (this.timer) this.timer = setTimeout(() => void tick(), 2);
    };
    this.timer = setTimeout(() => void tick(), 2);
  }

  /** Throws what a handler threw, if anything did. */
  check(): void {
    if (this.errors.length) throw new Error(`bridge gate handler failed: ${this.errors.map((e) => e.stack ?? e.message).join('\n')}`);
  }

  /** Stops watching (a bridge still holding goes on after its own bound) and removes the directory. */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
