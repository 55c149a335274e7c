// Prometheus metrics of one server (its own prom-client registry, so servers
// in one process never mix counts), served as text on --metrics-port. The
// handlers report through two calls: step() around each optimizer step and
// error() where an error becomes a gRPC status (grpc/status.ts).
import * as http from 'http';
import type { AddressInfo } from 'net';
import { status } from '@grpc/grpc-js';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { SessionStore } from './session/store';

/** How a step's tensors travelled: in gRPC messages, in the session's shared-memory arena, or on the tcp data plane. */
export type Transport = 'grpc' | 'shm' | 'tcp';

/** What a step handler hands back for counting: the reply, and the tensor bytes it moved. */
export interface Metered<T> {
  reply: T;
  replayed: boolean;
  gradientBytes: number;
  parameterBytes: number;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly steps: Counter<'transport' | 'result'>;
  private readonly seconds: Histogram<'transport'>;
  private readonly gradientBytes: Counter<'transport'>;
  private readonly parameterBytes: Counter<'transport'>;
  private readonly errors: Counter<'rpc' | 'code'>;
  private defaults = false;

  /** `store`: where open sessions and held bytes are read at each scrape. */
  constructor(private readonly store: () => Pick<SessionStore, 'size' | 'heldBytes'> & Partial<Pick<SessionStore, 'syncLanes'>>) {
    const registers = [this.registry];
    this.steps = new Counter({
      name: 'mur_steps_total',
      help: 'Optimizer steps asked for by Step, StepStream or the tcp data port (validate_only requests step nothing and are not counted), by transport and result: ok (applied), replayed (a repeated step number answered from memory), refused (answered with an error; nothing applied). Steps rung through the shm fast lane make no call: they count as shm ok when the session takes them in (before each scrape at the latest), with no latency or bytes',
      labelNames: ['transport', 'result'],
      registers,
    });
    this.seconds = new Histogram({
      name: 'mur_step_duration_seconds',
      help: 'Server time of an answered step (ok or replayed), from the whole request received to the reply ready',
      labelNames: ['transport'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.gradientBytes = new Counter({
      name: 'mur_gradient_bytes_total',
      help: 'Gradient bytes of answered steps: grpc, tensor bytes received (float32, bfloat16 or float16); shm, bytes read from the arena (replays read none)',
      labelNames: ['transport'],
      registers,
    });
    this.parameterBytes = new Counter({
      name: 'mur_parameter_bytes_total',
      help: 'Parameter bytes of answered steps: grpc, tensor bytes sent back; shm, bytes written in the arena (replays write none)',
      labelNames: ['transport'],
      registers,
    });
    this.errors = new Counter({
      name: 'mur_errors_total',
      help: 'Calls answered with an error status, by RPC and gRPC status code',
      labelNames: ['rpc', 'code'],
      registers,
    });
    new Gauge({
      name: 'mur_sessions_open',
      help: 'Open sessions',
      registers,
      collect() {
        this.set(store().size);
      },
    });
    new Gauge({
      name: 'mur_held_bytes',
      help: 'Bytes of parameters and optimizer state held by every session (counted against --max-bytes)',
      registers,
      collect() {
        this.set(store().heldBytes);
      },
    });
    // Every series exists from the start (a scrape before the first step shows zeros).
    for (const transport of ['grpc', 'shm', 'tcp'] as const) {
      for (const result of ['ok', 'replayed', 'refused']) this.steps.inc({ transport, result }, 0);
      this.gradientBytes.inc({ transport }, 0);
      this.parameterBytes.inc({ transport }, 0);
      this.seconds.zero({ transport });
    }
  }

  /** Runs one step: counts it as ok, replayed or refused, with its latency and bytes; returns its reply. */
  async step<T>(transport: Transport, run: () => Promise<Metered<T>>): Promise<T> {
    const end = this.seconds.startTimer({ transport });
    let m: Metered<T>;
    try {
      m = await run();
    } catch (e) {
      this.steps.inc({ transport, result: 'refused' });
      throw e;
    }
    end();
    this.steps.inc({ transport, result: m.replayed ? 'replayed' : 'ok' });
    this.gradientBytes.inc({ transport }, m.gradientBytes);
    this.parameterBytes.inc({ transport }, m.parameterBytes);
    return m.reply;
  }

  /** Steps the shm fast lane applied (no call, so no latency or bytes recorded). */
  laneSteps(n: number): void {
    this.steps.inc({ transport: 'shm', result: 'ok' }, n);
  }

  /** A step that failed before it could be handed to step() (a stream cut inside its frames). */
  refused(transport: Transport): void {
    this.steps.inc({ transport, result: 'refused' });
  }

  /** An error answered to a client. */
  error(rpc: string, code: status): void {
    this.errors.inc({ rpc, code: status[code] ?? String(code) });
  }

  /**
   * Serves the text exposition at http://host:port/metrics (port 0: any free
   * port), with prom-client's process and Node.js metrics (memory, CPU, event
   * loop, GC). Resolves once listening.
   */
  async serve(host: string, port: number): Promise<{ port: number; close(): Promise<void> }> {
    if (!this.defaults) collectDefaultMetrics({ register: this.registry });
    this.defaults = true;
    const server = http.createServer((req, res) => {
      const path = (req.url ?? '').split('?')[0];
      if (req.method !== 'GET' || (path !== '/metrics' && path !== '/')) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('mur: metrics are at /metrics\n');
        return;
      }
      // Fast-lane steps make no call: take them in first.
      (this.store().syncLanes?.() ?? Promise.resolve())
        .then(() => this.registry.metrics())
        .then(
          (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
          (e) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(e as Error).message}\n`),
        );
    });
    server.keepAliveTimeout = 5000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return {
      port: (server.address() as AddressInfo).port,
      close: () =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    };
  }
}
