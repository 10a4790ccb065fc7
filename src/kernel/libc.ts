// The libc system calls Iron Socket needs that Node does not expose (kTLS options, cmsg, epoll), via koffi.
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');

export const E = koffi.os.errno as Record<string, number>;
export const EAGAIN = E.EAGAIN!;
export const EINTR = E.EINTR!;
export const EINPROGRESS = E.EINPROGRESS!;

export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_SEQPACKET = 5;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_LINGER = 13;
export const SO_ERROR = 4;
export const SO_TYPE = 3;
export const SO_SNDTIMEO = 21;
export const SO_ACCEPTCONN = 30;
export const SO_DOMAIN = 39;
export const SO_PEERNAME = 28;
export const CLOCK_MONOTONIC = 1;
export const IPPROTO_TCP = 6;
export const TCP_NODELAY = 1;
export const SOL_IP = 0;
export const SOL_IPV6 = 41;
export const IP_TRANSPARENT = 19;
export const IP_BIND_ADDRESS_NO_PORT = 24;
export const IPV6_TRANSPARENT = 75;
export const SHUT_WR = 1;
export const SHUT_RDWR = 2;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const F_GETFD = 1;
export const F_SETFD = 2;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const F_DUPFD_CLOEXEC = 1030;
export const FD_CLOEXEC = 1;
export const O_NONBLOCK = 0o4000;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 1;
export const F_SEAL_SHRINK = 2;
export const F_SEAL_GROW = 4;
export const F_SEAL_WRITE = 8;
export const PR_GET_DUMPABLE = 3;
export const PR_SET_DUMPABLE = 4;

const fn = {
  socket: libc.func('int socket(int, int, int)'),
  bind: libc.func('int bind(int, const void *, uint32_t)'),
  listen: libc.func('int listen(int, int)'),
  accept4: libc.func('int accept4(int, void *, _Inout_ uint32_t *, int)'),
  connect: libc.func('int connect(int, const void *, uint32_t)'),
  setsockopt: libc.func('int setsockopt(int, int, int, const void *, uint32_t)'),
  getsockopt: libc.func('int getsockopt(int, int, int, void *, _Inout_ uint32_t *)'),
  getsockname: libc.func('int getsockname(int, void *, _Inout_ uint32_t *)'),
  getpeername: libc.func('int getpeername(int, void *, _Inout_ uint32_t *)'),
  close: libc.func('int close(int)'),
  shutdown: libc.func('int shutdown(int, int)'),
  fcntl: libc.func('int fcntl(int, int, ...)'),
  recv: libc.func('intptr_t recv(int, void *, size_t, int)'),
  send: libc.func('intptr_t send(int, const void *, size_t, int)'),
  recvmsg: libc.func('intptr_t recvmsg(int, void *, int)'),
  sendmsg: libc.func('intptr_t sendmsg(int, const void *, int)'),
  read: libc.func('intptr_t read(int, void *, size_t)'),
  write: libc.func('intptr_t write(int, const void *, size_t)'),
  epoll_create1: libc.func('int epoll_create1(int)'),
  epoll_ctl: libc.func('int epoll_ctl(int, int, int, void *)'),
  epoll_wait: libc.func('int epoll_wait(int, void *, int, int)'),
  eventfd: libc.func('int eventfd(unsigned int, int)'),
  memfd_create: libc.func('int memfd_create(const char *, unsigned int)'),
  lseek: libc.func('int64_t lseek(int, int64_t, int)'),
  pwrite: libc.func('intptr_t pwrite(int, const void *, size_t, int64_t)'),
  ioctl: libc.func('int ioctl(int, unsigned long, ...)'),
  execve: libc.func('int execve(const char *, const char **, const char **)'),
  socketpair: libc.func('int socketpair(int, int, int, void *)'),
  ftruncate: libc.func('int ftruncate(int, int64_t)'),
  waitpid: libc.func('int waitpid(int, void *, int)'),
  pipe2: libc.func('int pipe2(void *, int)'),
  splice: libc.func('intptr_t splice(int, void *, int, void *, size_t, unsigned int)'),
  clock_gettime: libc.func('int clock_gettime(int, void *)'),
  getenv: libc.func('void *getenv(const char *)'),
  strlen: libc.func('size_t strlen(const void *)'),
  /** memset at an address computed in JavaScript (a pointer that koffi does not hold). */
  memsetAt: libc.func('void *memset(uintptr_t, int, size_t)'),
  mallopt: libc.func('int mallopt(int, int)'),
  malloc_trim: libc.func('int malloc_trim(size_t)'),
  prctl: libc.func('int prctl(int, unsigned long, unsigned long, unsigned long, unsigned long)'),
  _exit: libc.func('void _exit(int)'),
  alarm: libc.func('unsigned int alarm(unsigned int)'),
};

/** A failed system call, carrying errno and its symbolic name. */
export class SysError extends Error {
  readonly errno: number;
  readonly code: string;
  constructor(call: string, errno: number) {
    const code = errnoName(errno);
    super(`${call}: ${code} (errno ${errno})`);
    this.errno = errno;
    this.code = code;
  }
}

const names = new Map<number, string>();
for (const [k, v] of Object.entries(E)) if (!names.has(v)) names.set(v, k);
export function errnoName(n: number): string {
  return names.get(n) ?? `E#${n}`;
}

export function errno(): number {
  return koffi.errno();
}

function check(call: string, r: number): number {
  if (r < 0) throw new SysError(call, koffi.errno());
  return r;
}

/** Result of a non-blocking call: a count, or the negative errno (no exception on the hot path). */
function ret(r: number): number {
  return r < 0 ? -koffi.errno() : r;
}

/** glibc's M_PERTURB: free() overwrites what it frees with this byte (a malloc'ed block starts as its complement). */
const M_PERTURB = -6;

/**
 * Makes glibc overwrite memory as it is freed, process-wide (every thread). OpenSSL frees a connection's SSL object,
 * which holds the TLS 1.3 traffic and exporter secrets, with a plain free(): without this, freed memory keeps them
 * until reused. Blocks glibc caches per thread (up to 1 KiB) are not overwritten: those are not OpenSSL's SSL objects.
 */
export function overwriteFreedMemory(): boolean {
  return fn.mallopt(M_PERTURB, 0x5a) === 1;
}

export const sys = {
  socket: (domain: number, type: number, proto = 0) => check('socket', fn.socket(domain, type, proto)),
  bind: (fd: number, addr: Buffer) => check('bind', fn.bind(fd, addr, addr.length)),
  listen: (fd: number, backlog: number) => check('listen', fn.listen(fd, backlog)),
  /** Returns the new fd, or -errno. */
  accept4: (fd: number, flags: number) => ret(fn.accept4(fd, null, [0], flags)),
  /** Returns 0, or -errno (EINPROGRESS for a non-blocking connect). */
  connect: (fd: number, addr: Buffer) => ret(fn.connect(fd, addr, addr.length)),
  setsockopt: (fd: number, level: number, name: number, value: Buffer) => ret(fn.setsockopt(fd, level, name, value, value.length)),
  setsockoptInt: (fd: number, level: number, name: number, value: number) => {
    const b = Buffer.alloc(4);
    b.writeInt32LE(value);
    return ret(fn.setsockopt(fd, level, name, b, 4));
  },
  getsockoptInt: (fd: number, level: number, name: number): number => {
    const b = Buffer.alloc(4);
    check('getsockopt', fn.getsockopt(fd, level, name, b, [4]));
    return b.readInt32LE(0);
  },
  /** getsockopt into `buf`; returns the option length, or -errno. */
  getsockoptBuf: (fd: number, level: number, name: number, buf: Buffer): number => {
    const len = [buf.length];
    const r = fn.getsockopt(fd, level, name, buf, len);
    return r < 0 ? -koffi.errno() : len[0]!;
  },
  getsockname: (fd: number): Buffer => {
    const b = Buffer.alloc(128);
    const len = [128];
    check('getsockname', fn.getsockname(fd, b, len));
    return b.subarray(0, len[0]);
  },
  /** Returns the peer address, or undefined when not connected. */
  getpeername: (fd: number): Buffer | undefined => {
    const b = Buffer.alloc(128);
    const len = [128];
    if (fn.getpeername(fd, b, len) < 0) return undefined;
    return b.subarray(0, len[0]);
  },
  /**
   * The address a TCP socket is connected to, or was. getpeername says ENOTCONN once the socket is in TCP_CLOSE: after
   * a reset, and after a peer's FIN that answers ours (a timewait socket takes over the connection), even while the
   * last bytes and the FIN are still queued to be read. SO_PEERNAME still answers then. Undefined for a socket that
   * never connected, or one that is not IPv4/IPv6.
   */
  peerOf: (fd: number): Buffer | undefined => {
    const d = Buffer.alloc(4);
    if (fn.getsockopt(fd, SOL_SOCKET, SO_DOMAIN, d, [4]) < 0) return undefined;
    const domain = d.readInt32LE(0);
    // The kernel refuses (EINVAL) a buffer longer than the address: ask for exactly sockaddr_in or sockaddr_in6.
    const len = domain === AF_INET ? 16 : domain === AF_INET6 ? 28 : 0;
    if (!len) return undefined;
    const b = Buffer.alloc(len);
    const got = [len];
    return fn.getsockopt(fd, SOL_SOCKET, SO_PEERNAME, b, got) < 0 || got[0] !== len ? undefined : b;
  },
  close: (fd: number) => ret(fn.close(fd)),
  shutdown: (fd: number, how: number) => ret(fn.shutdown(fd, how)),
  recv: (fd: number, buf: Buffer, len: number, flags = 0) => ret(fn.recv(fd, buf, len, flags)),
  send: (fd: number, buf: Buffer, len: number, flags = MSG_NOSIGNAL) => ret(fn.send(fd, buf, len, flags)),
  recvmsg: (fd: number, msghdr: Buffer, flags = 0) => ret(fn.recvmsg(fd, msghdr, flags)),
  sendmsg: (fd: number, msghdr: Buffer, flags = MSG_NOSIGNAL) => ret(fn.sendmsg(fd, msghdr, flags)),
  read: (fd: number, buf: Buffer, len: number) => ret(fn.read(fd, buf, len)),
  write: (fd: number, buf: Buffer, len: number) => ret(fn.write(fd, buf, len)),
  setCloexec: (fd: number, on: boolean) => {
    const cur = check('fcntl', fn.fcntl(fd, F_GETFD, 'int', 0));
    check('fcntl', fn.fcntl(fd, F_SETFD, 'int', on ? cur | FD_CLOEXEC : cur & ~FD_CLOEXEC));
  },
  setNonBlocking: (fd: number) => {
    const cur = check('fcntl', fn.fcntl(fd, F_GETFL, 'int', 0));
    check('fcntl', fn.fcntl(fd, F_SETFL, 'int', cur | O_NONBLOCK));
  },
  /** Duplicates fd with FD_CLOEXEC set. */
  dup: (fd: number) => check('fcntl(F_DUPFD_CLOEXEC)', fn.fcntl(fd, F_DUPFD_CLOEXEC, 'int', 3)),
  epollCreate: () => check('epoll_create1', fn.epoll_create1(0o2000000)),
  epollCtl: (ep: number, op: number, fd: number, ev: Buffer | null) => check('epoll_ctl', fn.epoll_ctl(ep, op, fd, ev)),
  /** Returns the free memory of every malloc arena to the kernel (glibc's malloc_trim(0)). */
  mallocTrim: (): void => void fn.malloc_trim(0),
  epollWait: (ep: number, events: Buffer, max: number, timeoutMs: number) => ret(fn.epoll_wait(ep, events, max, timeoutMs)),
  epollWaitAsync: (ep: number, events: Buffer, max: number, timeoutMs: number, cb: (r: number) => void) => {
    fn.epoll_wait.async(ep, events, max, timeoutMs, (err: unknown, r: number) => cb(err ? -EINTR : r));
  },
  eventfd: (flags: number) => check('eventfd', fn.eventfd(0, flags)),
  /**
   * Removes `name` from the environment and zeroes its `NAME=value` bytes where they are. unsetenv alone
   * leaves the bytes exec put on the stack, which /proc/<pid>/environ goes on showing.
   */
  scrubEnv: (name: string): void => {
    const value = fn.getenv(name) as unknown;
    delete process.env[name]; // unsetenv: the entry leaves environ before its bytes are overwritten
    if (value === null) return;
    const start = koffi.address(value) - BigInt(name.length + 1);
    const length = name.length + 1 + Number(fn.strlen(value));
    fn.memsetAt(start, 0, length);
  },
  /** An anonymous in-memory file (never on disk), close-on-exec. */
  memfdCreate: (name: string) => check('memfd_create', fn.memfd_create(name, 1 /* MFD_CLOEXEC */)),
  /** A memfd (close-on-exec) that accepts seals (F_ADD_SEALS): what carries state to another image or process. */
  memfdCreateSealable: (name: string) => check('memfd_create', fn.memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)),
  /** Adds seals (F_SEAL_*) to a memfd made with memfdCreateSealable. */
  addSeals: (fd: number, seals: number) => check('fcntl(F_ADD_SEALS)', fn.fcntl(fd, F_ADD_SEALS, 'int', seals)),
  /** The seals on a memfd (just F_SEAL_SEAL for one made without MFD_ALLOW_SEALING); throws for a non-memfd. */
  getSeals: (fd: number) => check('fcntl(F_GET_SEALS)', fn.fcntl(fd, F_GET_SEALS, 'int', 0)),
  /** PR_SET_DUMPABLE: 0 = no core dumps, no ptrace or /proc/PID/mem by the same uid (the files under /proc/PID become root's). */
  setDumpable: (on: boolean) => check('prctl(PR_SET_DUMPABLE)', fn.prctl(PR_SET_DUMPABLE, on ? 1 : 0, 0, 0, 0)),
  dumpable: () => check('prctl(PR_GET_DUMPABLE)', fn.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)),
  rewind: (fd: number) => check('lseek', Number(fn.lseek(fd, 0, 0))),
  /** Writes at an offset without moving the file position; bytes written or -errno. */
  pwrite: (fd: number, buf: Buffer, offset: number) => ret(fn.pwrite(fd, buf, buf.length, offset)),
  /** Bytes waiting to be read (FIONREAD: a pipe's or socket's queue). */
  readable: (fd: number): number => {
    const n = Buffer.alloc(4);
    check('ioctl(FIONREAD)', fn.ioctl(fd, 0x541b /* FIONREAD */, 'void *', n));
    return n.readInt32LE(0);
  },
  /** O_RDONLY (0), O_WRONLY (1) or O_RDWR (2): how the descriptor was opened. */
  accessMode: (fd: number): number => check('fcntl(F_GETFL)', fn.fcntl(fd, F_GETFL, 'int', 0)) & 3,
  /** Replaces the process image; returns only on failure (the errno). */
  execve: (path: string, argv: string[], env: string[]): number => {
    fn.execve(path, [...argv, null], [...env, null]);
    return koffi.errno();
  },
  /** Two connected sockets (close-on-exec) of the given type, e.g. SOCK_SEQPACKET. */
  socketpair: (type: number): [number, number] => {
    const sv = Buffer.alloc(8);
    check('socketpair', fn.socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv));
    return [sv.readInt32LE(0), sv.readInt32LE(4)];
  },
  ftruncate: (fd: number, len: number) => ret(fn.ftruncate(fd, len)),
  /** A non-blocking, close-on-exec pipe: [read end, write end]. */
  pipe: (): [number, number] => {
    const fds = Buffer.alloc(8);
    check('pipe2', fn.pipe2(fds, O_NONBLOCK | 0o2000000));
    return [fds.readInt32LE(0), fds.readInt32LE(4)];
  },
  /** Moves up to len bytes between an fd and a pipe inside the kernel (never blocking on the pipe); bytes or -errno. */
  splice: (from: number, to: number, len: number) => ret(fn.splice(from, null, to, null, len, 1 /* MOVE */ | 2 /* NONBLOCK */)),
  /** Reaps a child without blocking: its pid once it has exited, 0 while it runs, or -errno. */
  reap: (pid: number) => ret(fn.waitpid(pid, null, 1 /* WNOHANG */)),
  isCloexec: (fd: number) => (check('fcntl', fn.fcntl(fd, F_GETFD, 'int', 0)) & FD_CLOEXEC) !== 0,
  /**
   * Ends the process now (_exit): no exit handlers, and no waiting for worker or libuv pool threads, which
   * process.exit() joins and which may be what is stuck. Written output is not lost (stdout and stderr are synchronous).
   */
  exitNow: (code: number): never => {
    fn._exit(code);
    throw new Error('_exit returned');
  },
  /** SIGALRM in `seconds` (0 cancels): a bound kept by the kernel, whatever this process's threads are doing. */
  alarm: (seconds: number): void => void fn.alarm(seconds),
  /** Reads a clock (e.g. CLOCK_MONOTONIC) in nanoseconds. */
  clockNs: (clock: number): bigint => {
    const ts = Buffer.alloc(16); // struct timespec on 64-bit Linux: time_t tv_sec; long tv_nsec
    check('clock_gettime', fn.clock_gettime(clock, ts));
    return ts.readBigInt64LE(0) * 1_000_000_000n + ts.readBigInt64LE(8);
  },
};

/** Address of a Buffer's memory; Buffers from allocUnsafeSlow/alloc never move. */
export function addressOf(b: Buffer): bigint {
  return koffi.address(b) as bigint;
}
