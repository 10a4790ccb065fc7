// `ironsocket keeper`: systemd's part on a host without it — runs the proxy with an fd store, and restarts it after a crash with the stored descriptors.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../core/log.js';
import { EPOLLIN, Poller } from '../kernel/poller.js';
import { NotifyStore } from './notify-store.js';

/** At most this many crashes within CRASH_WINDOW_MS, then the keeper gives up (like systemd's StartLimitBurst=). */
const CRASH_BURST = 5;
const CRASH_WINDOW_MS = 60_000;
/** Pause before a restart (RestartSec=). */
const RESTART_DELAY_MS = 500;

const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));

export interface KeeperOptions {
  /** `ironsocket run` options, passed on as given (--fd-store is added). */
  runArgs: string[];
  log: Logger;
  /** Where the notify socket's private directory goes (default: the temporary directory). */
  runtimeDir?: string;
}

/**
 * Runs `ironsocket run ... --fd-store` with NOTIFY_SOCKET pointing at its own store. When the proxy
 * dies of a signal or exits non-zero, starts it again with every stored descriptor at fds 3, 4, ...
 * (LISTEN_FDS, LISTEN_FDNAMES, and LISTEN_PID = the new process, as a shell that execs sets it).
 * SIGTERM and SIGINT are passed on and end the keeper once the proxy has stopped; SIGHUP (reload)
 * and SIGUSR2 (in-place upgrade: the same PID, so no restart) are passed on. Resolves with the exit code.
 */
export function keep(opts: KeeperOptions): Promise<number> {
  const { log } = opts;
  const store = new NotifyStore({ parent: opts.runtimeDir });
  const poller = new Poller();
  poller.add(store.fd, EPOLLIN, () => {
    try {
      for (const m of store.receive()) if (m.fields.READY === '1') log.info({ status: m.fields.STATUS }, 'proxy ready');
    } catch (e) {
      log.error(`reading the notify socket: ${(e as Error).message}`);
    }
  });
  const crashes: number[] = [];
  let child: ChildProcess | undefined;
  let restart: NodeJS.Timeout | undefined;
  let stopping = false;
  return new Promise<number>((done) => {
    const finish = (code: number) => {
      for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR2'] as const) process.off(s, onSignal);
      poller.close();
      store.close();
      done(code);
    };
    const start = () => {
      store.receive(); // every deposit and removal so far, before handing the store back
      const back = store.handBack();
      const env: NodeJS.ProcessEnv = { ...process.env, NOTIFY_SOCKET: store.address };
      delete env.LISTEN_PID;
      delete env.LISTEN_FDS;
      delete env.LISTEN_FDNAMES;
      if (back.fds.length > 0) Object.assign(env, back.env);
      const command = [process.execPath, ...process.execArgv, CLI, 'run', ...opts.runArgs, '--fd-store'];
      // Its own process group: a terminal's Ctrl-C reaches the keeper only, which passes it on once.
      child = spawn('/bin/sh', ['-c', 'LISTEN_PID=$$ exec "$0" "$@"', ...command], {
        stdio: ['inherit', 'inherit', 'inherit', ...back.fds],
        env,
        detached: true,
      });
      log.info({ pid: child.pid, passed: back.fds.length }, `started the proxy (pid ${child.pid}) with ${back.fds.length} stored descriptor(s)`);
      const group = child.pid;
      child.once('exit', (code, signal) => {
        store.receive();
        // What the proxy left in its process group (an upgrade bridge relaying for a dead image) goes
        // too, as systemd kills what is left in the unit's cgroup: two relays must never share a socket.
        if (group !== undefined) {
          try {
            process.kill(-group, 'SIGKILL');
          } catch {
            /* nothing left */
          }
        }
        if (stopping || code === 0) return finish(code ?? 1);
        const now = Date.now();
        crashes.push(now);
        while (crashes.length > 0 && now - crashes[0]! > CRASH_WINDOW_MS) crashes.shift();
        const why = signal ? `killed by ${signal}` : `exited with code ${code}`;
        if (crashes.length > CRASH_BURST) {
          log.error(`the proxy ${why}, its ${crashes.length}th crash within ${CRASH_WINDOW_MS / 1000} s: giving up (its connections close now)`);
          return finish(1);
        }
        log.warn({ code, signal }, `the proxy ${why}; restarting it with its stored connections`);
        restart = setTimeout(start, RESTART_DELAY_MS);
      });
    };
    const onSignal = (signal: NodeJS.Signals) => {
      if (signal === 'SIGTERM' || signal === 'SIGINT') stopping = true;
      if (child && child.exitCode === null && child.signalCode === null) child.kill(signal);
      else if (stopping) {
        clearTimeout(restart); // between a crash and its restart: nothing to stop
        finish(0);
      }
    };
    for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR2'] as const) process.on(s, onSignal);
    start();
  });
}
