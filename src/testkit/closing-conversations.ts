// Test support: TLS conversations that end in each order a connection can end (client's close_notify first, the backend's FIN first, a backend reset), in two steps a test times, each checked byte for byte and for how it closed.
import net from 'node:net';
import { streamChunk } from './backends.js';
import { scriptedClient, type ScriptedClient } from './scripted-client.js';

/**
 * How a conversation ends, in two steps. client-first: close_notify + FIN from the client, then (once the proxy has
 * passed it on as FIN) the backend's last bytes and FIN. client-first-rst: the same, but the backend resets after its
 * last bytes instead of FIN. backend-first: the backend's last bytes and FIN, then close_notify + FIN from the client.
 * backend-first-rst: the same, and the backend resets as the client closes.
 */
export type Ending = 'client-first' | 'client-first-rst' | 'backend-first' | 'backend-first-rst';
export const ENDINGS: readonly Ending[] = ['client-first', 'client-first-rst', 'backend-first', 'backend-first-rst'];

/** Bytes the backend sends as soon as the request is in, before any close. */
const FIRST_BYTES = 3000;

/** The backend's end of one conversation. */
interface BackendEnd {
  socket: net.Socket;
  request: Buffer;
  /** The proxy passed the client's close on (FIN). */
  sawEnd: boolean;
  onEnd: Array<() => void>;
}

/** A backend whose connections each start with "conv KEY\n": it answers with FIRST_BYTES of stream(KEY) and waits for the test. */
export async function conversationBackend() {
  const waiting = new Map<string, (b: BackendEnd) => void>();
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    const end: BackendEnd = { socket: s, request: Buffer.alloc(0), sawEnd: false, onEnd: [] };
    let known = false;
    s.on('data', (d: Buffer) => {
      end.request = Buffer.concat([end.request, d]);
      const m = known ? null : /^conv (\S+)\n/.exec(end.request.toString('latin1'));
      if (!m) return;
      known = true;
      s.write(streamChunk(m[1]!, 0, FIRST_BYTES));
      waiting.get(m[1]!)?.(end);
    });
    s.on('end', () => {
      end.sawEnd = true;
      for (const f of end.onEnd.splice(0)) f();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    /** Resolves once the conversation `key` has reached the backend. */
    expect: (key: string) => new Promise<BackendEnd>((r) => waiting.set(key, r)),
    close: () => new Promise<void>((r) => (sockets.forEach((s) => s.destroy()), server.close(() => r()))),
  };
}
type ConversationBackend = Awaited<ReturnType<typeof conversationBackend>>;

/** What the client got: every data byte, the alerts, and how the TCP connection ended. */
export interface Received {
  data: Buffer;
  alerts: string[];
  ending: 'fin' | 'reset' | 'open';
  /** Records other than data and alerts (none expected). */
  other: number[];
  /** A record that would not open, say. */
  error?: string;
}

export class Conversation {
  /** Steps taken, and where: the test's own labels. */
  readonly steps: string[] = [];
  private stepped = 0;
  private readonly received: Promise<Received>;
  /** Until when the proxy may take to end the connection: `waitMs` after the last step. */
  private deadline: number;

  private constructor(
    readonly key: string,
    readonly ending: Ending,
    /** How many bytes the backend sends at its close. */
    readonly lastBytes: number,
    readonly client: ScriptedClient,
    private readonly backend: BackendEnd,
    private readonly waitMs: number,
  ) {
    this.deadline = Date.now() + waitMs;
    this.received = this.collect();
  }

  /** Opens one conversation through the proxy at `port`; resolves once its request reached the backend (the relay runs). */
  static async open(
    port: number,
    backend: ConversationBackend,
    key: string,
    ending: Ending,
    version: 'TLSv1.2' | 'TLSv1.3',
    lastBytes: number,
    waitMs: number,
  ) {
    const atBackend = backend.expect(key);
    const client = await scriptedClient(port, { version, allowHalfOpen: true });
    client.send(client.seal(23, Buffer.from(`conv ${key}\n`)));
    return new Conversation(key, ending, lastBytes, client, await atBackend, waitMs);
  }

  /** The client as the proxy names it. */
  get clientAddress(): string {
    return `127.0.0.1:${this.client.localPort}`;
  }

  /** Takes the next step of the ending now, labelled `where` (the second step of a client-first ending waits until the backend has seen the client's close). */
  async step(where: string): Promise<void> {
    const n = ++this.stepped;
    if (n > 2) throw new Error(`${this.key}: a third step`);
    if (n === 2 && this.ending.startsWith('client-first') && !this.backend.sawEnd) {
      this.steps.push(`${where}: waiting for the client's close at the backend`);
      await new Promise<void>((r) => this.backend.onEnd.push(r));
      where = 'once the backend saw the close';
    }
    this.steps.push(where);
    this.deadline = Date.now() + this.waitMs;
    const clientCloses = n === (this.ending.startsWith('client-first') ? 1 : 2);
    if (this.ending === 'backend-first-rst' && n === 2) this.backend.socket.resetAndDestroy();
    if (clientCloses) return this.clientCloses();
    if (n === 1 || this.ending === 'client-first') return this.backendEnds('fin');
    return this.backendEnds('rst');
  }

  /** Whether the next step can be taken at once (a client-first ending's second step needs the backend to have seen the close). */
  get ready(): boolean {
    return !(this.stepped === 1 && this.ending.startsWith('client-first') && !this.backend.sawEnd);
  }

  get stepsTaken(): number {
    return this.stepped;
  }

  private async clientCloses(): Promise<void> {
    this.client.send(this.client.seal(21, Buffer.from([1, 0])));
    await new Promise<void>((r) => this.client.socket.end(r));
  }

  /** The backend's last bytes, then FIN or a reset (SO_LINGER 0), once they are in the kernel. */
  private async backendEnds(how: 'fin' | 'rst'): Promise<void> {
    const s = this.backend.socket;
    const last = streamChunk(this.key, FIRST_BYTES, this.lastBytes);
    if (how === 'fin') return new Promise<void>((r) => s.end(last, r));
    await new Promise<void>((r) => s.write(last, () => r()));
    s.resetAndDestroy();
  }

  /** Every byte the backend sent, in order. */
  get expected(): Buffer {
    return streamChunk(this.key, 0, FIRST_BYTES + this.lastBytes);
  }

  /** What reached the backend from the client, and whether the client's close did. */
  get atBackend(): { request: string; sawEnd: boolean } {
    return { request: this.backend.request.toString('latin1'), sawEnd: this.backend.sawEnd };
  }

  /** Resolves once the proxy has ended the client's connection (or `waitMs` after the last step: ending 'open'). */
  result(): Promise<Received> {
    return this.received;
  }

  private async collect(): Promise<Received> {
    const out: Received = { data: Buffer.alloc(0), alerts: [], ending: 'open', other: [] };
    const data: Buffer[] = [];
    for (;;) {
      let r: Awaited<ReturnType<ScriptedClient['next']>>;
      try {
        r = await this.client.next(Math.max(1, this.deadline - Date.now()));
      } catch (e) {
        const timedOut = /^no record from the server within/.test((e as Error).message);
        if (timedOut && Date.now() < this.deadline) continue; // a step moved the deadline meanwhile
        if (!timedOut) out.error = (e as Error).message;
        break;
      }
      if (!r) {
        out.ending = (await this.client.ended(0)) ?? 'open';
        break;
      }
      if (r.type === 23) data.push(r.plaintext);
      else if (r.type === 21) out.alerts.push(r.plaintext[1] === 0 ? 'close_notify' : `${r.plaintext[0] === 2 ? 'fatal' : 'warning'} ${r.plaintext[1]}`);
      else out.other.push(r.type);
    }
    out.data = Buffer.concat(data);
    return out;
  }

  /** Lets go of the client (its keys wiped); once its result is in and its steps are taken. */
  dispose(): void {
    this.client.destroy();
  }
}
