// Serves GET /metrics over plain HTTP for Prometheus to scrape; a failing scrape answers 500 and never takes the proxy down.
import http from 'node:http';
import net from 'node:net';

/** What the server needs from createMetrics(). */
export interface MetricsSource {
  render(): Promise<string>;
  contentType: string;
}

/** The one logger method used (a pino Logger fits). */
export interface MetricsLogger {
  error(obj: object, msg: string): void;
}

export interface MetricsServer {
  /** host:port actually bound (the real port when 0 was asked for); IPv6 hosts in brackets. */
  readonly address: string;
  /** Stops listening and drops open scrape connections. */
  close(): Promise<void>;
}

const formatAddress = (host: string, port: number): string => (net.isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`);

function reply(res: http.ServerResponse, head: boolean, status: number, type: string, body: string, extra: http.OutgoingHttpHeaders = {}): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store', ...extra });
  res.end(head ? undefined : body);
}

/** Listens on `at`; rejects (naming the address) when it cannot, e.g. EADDRINUSE. */
export async function startMetricsServer(at: { host: string; port: number }, metrics: MetricsSource, logger?: MetricsLogger): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    const head = req.method === 'HEAD';
    if (path !== '/metrics') return reply(res, head, 404, 'text/plain; charset=utf-8', 'not found: metrics are served at /metrics\n');
    if (req.method !== 'GET' && !head) return reply(res, false, 405, 'text/plain; charset=utf-8', 'method not allowed: use GET\n', { Allow: 'GET, HEAD' });
    metrics.render().then(
      (text) => reply(res, head, 200, metrics.contentType, text),
      (e: unknown) => {
        const message = e instanceof Error ? e.message : String(e);
        logger?.error({ err: message }, `rendering /metrics failed: ${message}`);
        reply(res, head, 500, 'text/plain; charset=utf-8', 'metrics are unavailable right now (see the proxy log)\n');
      },
    );
  });
  // Slow or idle scrapers must not hold sockets forever.
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  server.keepAliveTimeout = 5_000;

  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) => {
      const why = e.code === 'EADDRINUSE' ? 'the address is already in use' : (e.code ?? e.message);
      reject(new Error(`metrics server cannot listen on ${formatAddress(at.host, at.port)}: ${why}`));
    };
    server.once('error', onError);
    server.listen(at.port, at.host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', (e) => logger?.error({ err: e.message }, `metrics server error: ${e.message}`));

  const bound = server.address() as net.AddressInfo;
  let closing: Promise<void> | undefined;
  return {
    address: formatAddress(bound.address, bound.port),
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
