// After a crash: sorts out what the fd store handed back for each connection, resumes kernel-mode ones as an upgrade would, and closes the rest cleanly.
import type { Logger } from '../core/log.js';
import { sys } from '../kernel/libc.js';
import { TlsRecordIo } from '../kernel/ktls.js';
import type { Poller } from '../kernel/poller.js';
import { decodeSockaddr, formatEndpoint } from '../kernel/sockaddr.js';
import { lingeringClose } from '../edge/linger.js';
import { KernelClient } from '../relay/kernel-client.js';
import type { Pipe } from '../relay/pipes.js';
import type { CarriedConnection } from '../relay/protocol.js';
import type { StoredFds } from '../relay/store-hook.js';
import { connectionIdOf, connectionNumber, type FdStore } from '../service/fd-store.js';
import { checkPair, rejectPair } from './restore.js';
import { describeFd, isRecordMemfd, readRecord, type StoredConnection } from './fd-store-record.js';
import type { ConnectionInfo } from '../core/connection.js';

/** One connection's descriptors, each known for what it is. */
export interface FoundConnection {
  name: string;
  record: StoredConnection;
  carried: CarriedConnection;
  stored: StoredFds;
}

/** A store entry that cannot be a connection of ours as it stands, and why. */
export interface Unusable {
  name: string;
  reason: string;
  fds: number[];
}

/** The address the socket is or was connected to (one the peer closed or reset while the proxy was down is still ours). */
function peerOf(fd: number): string | undefined {
  try {
    const peer = sys.peerOf(fd);
    return peer ? formatEndpoint(decodeSockaddr(peer)) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Tells a store entry's descriptors apart, whatever order they come back in: the record memfd by
 * its name, the sockets by their peer (the record names client and backend), the pipes by inode
 * and direction. Nothing is closed here.
 */
export function identify(name: string, fds: number[]): FoundConnection | Unusable {
  const unusable = (reason: string): Unusable => ({ name, reason, fds });
  const id = connectionIdOf(name);
  if (!id) return unusable(`${JSON.stringify(name)} is not a connection's store name`);
  const memfds = fds.filter(isRecordMemfd);
  if (memfds.length !== 1) return unusable(`${memfds.length} connection records among its ${fds.length} descriptors (want 1)`);
  let record: StoredConnection;
  try {
    record = readRecord(memfds[0]!);
  } catch (e) {
    return unusable((e as Error).message);
  }
  const info = record.info;
  if (info.id !== id) return unusable(`its record describes connection ${info.id}`);
  const rest = fds.filter((fd) => fd !== memfds[0]);
  const sockets = rest.filter((fd) => describeFd(fd).startsWith('socket:'));
  const clientFd = sockets.find((fd) => peerOf(fd) === info.client);
  const backendFd = sockets.find((fd) => fd !== clientFd && peerOf(fd) === info.backend);
  if (clientFd === undefined || backendFd === undefined) {
    return unusable(`no socket connected to its ${clientFd === undefined ? `client ${info.client}` : `backend ${info.backend}`}`);
  }
  let pipes: StoredFds['pipes'];
  if (record.pipes) {
    const end = (ino: number, mode: number) => rest.find((fd) => describeFd(fd) === `pipe:[${ino}]` && sys.accessMode(fd) === mode);
    const pipe = (ino: number): Pipe | undefined => {
      const r = end(ino, 0);
      const w = end(ino, 1);
      return r !== undefined && w !== undefined ? { r, w } : undefined;
    };
    const c2b = pipe(record.pipes.c2b);
    const b2c = pipe(record.pipes.b2c);
    if (!c2b || !b2c) return unusable('a pipe end named in its record is missing');
    pipes = { c2b, b2c };
  }
  const known = new Set([memfds[0]!, clientFd, backendFd, ...(pipes ? [pipes.c2b.r, pipes.c2b.w, pipes.b2c.r, pipes.b2c.w] : [])]);
  if (known.size !== fds.length) return unusable(`${fds.length - known.size} descriptor(s) its record does not account for`);
  const carried: CarriedConnection = { clientFd, backendFd, pair: { info, bytesIn: 0, bytesOut: 0, flags: record.flags } };
  return { name, record, carried, stored: { memfd: memfds[0]!, pipes } };
}

export interface StoreRestart {
  /** Kernel-mode connections verified and handed to the relay. */
  resumed: ConnectionInfo[];
  /** User-mode connections (their record state died with the process), closed. */
  notResumable: ConnectionInfo[];
  /** Entries that could not be verified or made sense of, closed. */
  failed: { id: string; reason: string }[];
  /** The highest connection number seen: new connections are numbered after it. */
  highestId: number;
}

export interface StoreRestartDeps {
  /** Where to take entries out of the store (every close path removes first). */
  store: FdStore;
  /** False when fd_store is now off: everything found is closed instead of resumed. */
  resume: boolean;
  /** Takes over a verified connection (Relay.add). */
  adopt(info: ConnectionInfo, clientFd: number, backendFd: number, carried: CarriedConnection, stored: StoredFds): void;
  poller: Poller;
  log: Logger;
}

/**
 * Resumes the connections the fd store handed back (`groups`: descriptors by store name). Kernel-mode
 * ones are checked exactly as an upgrade checks what it carried (restore.ts) and adopted with their
 * pipes; user-mode ones are taken out of the store and closed without a reset (FIN after draining).
 */
export function restartFromStore(groups: Map<string, number[]>, deps: StoreRestartDeps): StoreRestart {
  const out: StoreRestart = { resumed: [], notResumable: [], failed: [], highestId: 0 };
  const io = new TlsRecordIo();
  const remove = (name: string) => {
    try {
      deps.store.remove(name);
    } catch (e) {
      deps.log.warn({ entry: name }, `could not take ${name} out of the fd store: ${(e as Error).message}`);
    }
  };
  for (const [name, fds] of groups) {
    const id = connectionIdOf(name);
    if (id) out.highestId = Math.max(out.highestId, connectionNumber(id));
    const found = identify(name, fds);
    if ('reason' in found) {
      remove(name);
      for (const fd of fds)
        if (describeFd(fd).startsWith('socket:')) lingeringClose(deps.poller, fd);
        else sys.close(fd);
      deps.log.warn({ entry: name }, `fd store entry ${name} is not usable (${found.reason}); closed it`);
      out.failed.push({ id: id ?? name, reason: found.reason });
      continue;
    }
    const { info } = found.record;
    // Checked exactly as an upgrade checks what it carried (user mode has no kernel state to check).
    // One caught moving through an upgrade lost what the bridge held: resuming it would drop bytes silently.
    const moving = found.record.moving ? 'it was moving through an in-place upgrade: bytes the upgrade bridge held are lost' : undefined;
    const bad = info.mode === 'kernel' ? (checkPair(found.carried) ?? moving) : undefined;
    if (info.mode === 'kernel' && !bad && deps.resume) {
      deps.adopt(info, found.carried.clientFd, found.carried.backendFd, found.carried, found.stored);
      out.resumed.push(info);
      continue;
    }
    remove(name);
    closeStored(found.stored);
    if (bad) {
      rejectPair(found.carried, io);
      deps.log.warn({ conn: info.id }, `cannot resume connection from the fd store: ${bad}; closed it`);
      out.failed.push({ id: info.id, reason: bad });
      continue;
    }
    // A kernel-mode session (fd_store now off) can still end properly: the kernel has its keys.
    if (info.mode === 'kernel') new KernelClient(found.carried.clientFd, io, info.version).closeNotify();
    lingeringClose(deps.poller, found.carried.clientFd);
    lingeringClose(deps.poller, found.carried.backendFd);
    const why = info.mode === 'user' ? 'its userspace TLS state was lost with the previous process' : 'fd_store is off';
    deps.log.info({ conn: info.id, client: info.client, listener: info.listener }, `closed connection found in the fd store: ${why}`);
    out.notResumable.push(info);
  }
  return out;
}

function closeStored(s: StoredFds): void {
  sys.close(s.memfd);
  if (s.pipes) for (const fd of [s.pipes.c2b.r, s.pipes.c2b.w, s.pipes.b2c.r, s.pipes.b2c.w]) sys.close(fd);
}
