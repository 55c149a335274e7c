// Binds the Optimizer service, grpc.health.v1 and server reflection.
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { currentEngine } from '../engine/engine';
import { OptimizerService, type OptimizerServer } from '../../generated/mur/v1/optimizer';
import type { BackendName } from '../engine/backend';
import { checkSpecJson, type SpecJson } from '../registry';
import { SessionStore, type Limits } from '../session/store';
import type { ServerContext } from './context';
import { addParameters } from './handlers/addParameters';
import { closeSession } from './handlers/closeSession';
import { createSession } from './handlers/createSession';
import { exportState } from './handlers/exportState';
import { getCapabilities } from './handlers/getCapabilities';
import { importState } from './handlers/importState';
import { openArena } from './handlers/openArena';
import { step } from './handlers/step';
import { stepStream } from './handlers/stepStream';
import { Credentials, tokenOf } from '../session/credentials';
import { StateDir } from '../session/durable';
import { fsyncName, type FsyncMode } from '../session/fsync';
import { checkWellFormed, tolerantDeserializers, tolerantService } from './malformed';
import { encodeStepReply } from '../wire/stepReply';
import { toServiceError } from './status';
import { Metrics } from '../metrics';
import { startDataPlane, type DataPlane } from '../transport/dataPlane';
import { log } from '../log';

export interface ServerOptions {
  port?: number;
  host?: string;
  /** A Unix domain socket path to listen on instead of host:port. */
  socket?: string;
  maxMessageBytes?: number;
  chunkBytes?: number;
  maxStreamElements?: number;
  defaultSpec?: SpecJson;
  /** The backend name to report (tensorflow-gpu shares tfjs's 'tensorflow'). */
  backend?: BackendName;
  /**
   * HTTP/2 flow-control window, per stream and per connection, in bytes
   * (default 16 MiB; 0 keeps Node's 64 KiB). Large gradients otherwise wait
   * for a WINDOW_UPDATE every 64 KiB.
   */
  flowControlWindow?: number;
  /** Session limits (default: none). */
  limits?: Limits;
  /** The clock session idle times are read from (tests). */
  clock?: () => number;
  /** Keep sessions in this directory across restarts (docs/state-dir.md, session/durable.ts). */
  stateDir?: string;
  /** When the state directory's writes are forced to disk (session/fsync.ts; default FSYNC_DEFAULT). */
  fsync?: FsyncMode;
  /** Concurrent calls per connection (default 64). */
  maxStreams?: number;
  /** Connections idle this long are closed (ms, default 15 min). */
  maxConnectionIdleMs?: number;
  /**
   * TLS: the server's certificate chain and key (PEM). With `clientCa`,
   * mutual TLS: every client must present a certificate signed by it.
   */
  tls?: { cert: Buffer; key: Buffer; clientCa?: Buffer };
  /** Serve Prometheus metrics at http://host:port/metrics (port 0: any free port; host default 127.0.0.1). */
  metrics?: { port: number; host?: string };
  /**
   * The "tcp" data plane's port on the server's host (transport/dataPlane.ts;
   * default 0: any free port), or null for none. Only when listening on TCP:
   * a client on a Unix socket shares the host and gets shared memory.
   */
  dataPort?: number | null;
}

/** Plaintext, TLS, or mutual TLS (client certificates required and checked against clientCa). */
function serverCredentials(tls: ServerOptions['tls']): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(
    tls.clientCa ?? null,
    [{ cert_chain: tls.cert, private_key: tls.key }],
    tls.clientCa !== undefined,
  );
}

/** The session store; with a state directory, its credentials key and recovered sessions. */
function makeStore(opts: ServerOptions): SessionStore {
  if (!opts.stateDir) return new SessionStore(opts.limits, undefined, opts.clock);
  const dir = new StateDir(opts.stateDir, opts.fsync);
  const store = new SessionStore(opts.limits, new Credentials(dir.key()), opts.clock, dir);
  const n = store.recover();
  log('info', 'state_dir', { dir: opts.stateDir, sessions: n, damaged: store.damagedCount, fsync: fsyncName(dir.syncer.mode) });
  return store;
}

/**
 * A socket file left by a server that was killed blocks the next bind: it is
 * removed when nothing answers on it (a live server's socket is left alone,
 * and the bind then fails with EADDRINUSE as it should).
 */
async function removeStaleSocket(file: string): Promise<void> {
  if (!fs.existsSync(file) || !fs.statSync(file).isSocket()) return;
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect(file);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (!alive) fs.rmSync(file, { force: true });
}

/**
 * Raises the HTTP/2 receive windows of the server: grpc-js 1.14 has no server
 * option for them (its `grpc-node.flow_control_window` is client-only), so
 * this sets the SETTINGS_INITIAL_WINDOW_SIZE it passes to http2.createServer
 * and the connection window of each new session. It reaches into grpc-js
 * internals, guarded: where they differ it changes nothing and says so.
 */
export function raiseFlowControlWindow(server: grpc.Server, bytes: number): boolean {
  const s = server as unknown as { commonServerOptions?: { settings?: Record<string, number> }; http2Servers?: Map<unknown, unknown> };
  if (!s.commonServerOptions) return false;
  s.commonServerOptions.settings = { ...(s.commonServerOptions.settings ?? {}), initialWindowSize: bytes, maxFrameSize: 16777215 };
  return true;
}

export function raiseSessionWindows(server: grpc.Server, bytes: number): void {
  const servers = (server as unknown as { http2Servers?: Map<import('http2').Http2Server, unknown> }).http2Servers;
  for (const h of servers?.keys() ?? []) {
    h.on('session', (session: import('http2').ServerHttp2Session) => {
      try {
        session.setLocalWindowSize(bytes);
      } catch {
        // an old Node without setLocalWindowSize: the stream window still applies
      }
    });
  }
}

export interface RunningServer {
  port: number;
  context: ServerContext;
  /** The port of the metrics endpoint, when ServerOptions.metrics asked for one. */
  metricsPort?: number;
  /** Stops accepting, lets in-flight calls finish, disposes every session. */
  close(graceMs?: number): Promise<void>;
}

/** The one adapter for unary calls: a handler returns a value or a promise; errors map in status.ts. */
function unary<Req, Res>(
  ctx: ServerContext,
  name: string,
  fn: (req: Req, token: string | undefined) => Res | Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => fn(checkWellFormed(call.request), tokenOf(call.metadata)))
      .then(
        (r) => callback(null, r),
        (e) => callback(toServiceError(e, name, ctx.metrics)),
      );
  };
}

/**
 * What server reflection serves: protoc's descriptor set of the contract with
 * its imports and the health service (written by scripts/gen-proto.sh), so
 * every file keeps its real name and `grpcurl describe` resolves imports.
 */
function reflectionDescriptors(): protoLoader.PackageDefinition {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const p = path.join(dir, 'generated', 'descriptor.pb');
    if (fs.existsSync(p)) return protoLoader.loadFileDescriptorSetFromBuffer(fs.readFileSync(p));
  }
  throw new Error('generated/descriptor.pb not found above ' + __dirname + ' (run make proto)');
}

export async function startServer(opts: ServerOptions = {}): Promise<RunningServer> {
  const maxMessageBytes = opts.maxMessageBytes ?? 64 * 1024 * 1024;
  if (opts.defaultSpec) checkSpecJson(opts.defaultSpec, 'config: ');
  const ctx: ServerContext = {
    store: makeStore(opts),
    backend: opts.backend ?? (currentEngine().name as BackendName),
    maxMessageBytes,
    chunkBytes: opts.chunkBytes ?? 1024 * 1024,
    maxStreamElements: opts.maxStreamElements ?? 2 ** 30,
    defaultSpec: opts.defaultSpec,
    metrics: new Metrics(() => ctx.store),
  };
  ctx.store.onLaneSteps = (n) => ctx.metrics.laneSteps(n);
  const impl: OptimizerServer = {
    getCapabilities: unary(ctx, 'GetCapabilities', () => getCapabilities(ctx)),
    createSession: unary(ctx, 'CreateSession', (req) => createSession(ctx, req)),
    step: unary(ctx, 'Step', (req, token) => step(ctx, req, token)),
    closeSession: unary(ctx, 'CloseSession', (req, token) => closeSession(ctx, req, token)),
    openArena: unary(ctx, 'OpenArena', (req, token) => openArena(ctx, req, token)),
    addParameters: unary(ctx, 'AddParameters', (req, token) => addParameters(ctx, req, token)),
    stepStream: (call) => stepStream(ctx, call),
    exportState: (call) => void exportState(ctx, call),
    importState: (call, cb) => importState(ctx, call, cb),
  };
  const server = new grpc.Server({
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    'grpc.max_concurrent_streams': opts.maxStreams ?? 64,
    'grpc.max_connection_idle_ms': opts.maxConnectionIdleMs ?? 15 * 60_000,
    // Clients may ping to keep an idle training connection alive.
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.http2.min_ping_interval_without_data_ms': 10_000,
  });
  const window = opts.flowControlWindow ?? 16 * 1024 * 1024;
  const tuned = window > 0 && raiseFlowControlWindow(server, window);
  if (window > 0 && !tuned)
    log('warn', 'flow_control_window', { message: 'grpc-js internals changed: HTTP/2 windows left at their defaults' });
  const service = tolerantDeserializers(OptimizerService);
  server.addService({ ...service, step: { ...service.step, responseSerialize: encodeStepReply } }, impl);
  const health = new HealthImplementation({ '': 'SERVING', 'mur.v1.Optimizer': 'SERVING' });
  // Health and reflection add themselves; through this they refuse malformed requests as mur's handlers do.
  const tolerant = {
    addService: (d: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation) =>
      server.addService(...tolerantService(d, impl, (e, rpc) => toServiceError(e, rpc, ctx.metrics))),
  } as unknown as grpc.Server;
  health.addToServer(tolerant);
  new ReflectionService(reflectionDescriptors()).addToServer(tolerant);

  if (opts.socket) await removeStaleSocket(opts.socket);
  const address = opts.socket ? `unix:${opts.socket}` : `${opts.host ?? '127.0.0.1'}:${opts.port ?? 0}`;
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(address, serverCredentials(opts.tls), (err, p) => (err ? reject(err) : resolve(p))),
  );
  let metrics: Awaited<ReturnType<Metrics['serve']>> | undefined;
  try {
    metrics = opts.metrics && (await ctx.metrics.serve(opts.metrics.host ?? '127.0.0.1', opts.metrics.port));
  } catch (e) {
    server.forceShutdown();
    ctx.store.closeAll();
    throw new Error(`metrics: cannot listen on ${opts.metrics?.host ?? '127.0.0.1'}:${opts.metrics?.port}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  if (tuned) raiseSessionWindows(server, window);
  let data: DataPlane | undefined;
  if (!opts.socket && opts.dataPort !== null) {
    try {
      data = await startDataPlane(ctx, {
        host: opts.host ?? '127.0.0.1',
        port: opts.dataPort ?? 0,
        tls: opts.tls,
        idleMs: opts.maxConnectionIdleMs ?? 15 * 60_000,
      });
      ctx.dataPort = data.port;
    } catch (e) {
      server.forceShutdown();
      await metrics?.close();
      ctx.store.closeAll();
      throw new Error(`data port: cannot listen on ${opts.host ?? '127.0.0.1'}:${opts.dataPort ?? 0}: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }
  let closed = false;
  return {
    port,
    context: ctx,
    metricsPort: metrics?.port,
    close: async (graceMs = 5000) => {
      if (closed) return;
      closed = true;
      health.setStatus('', 'NOT_SERVING');
      // In-flight calls get graceMs to finish; then open streams are cut.
      const force = setTimeout(() => server.forceShutdown(), graceMs);
      force.unref();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      clearTimeout(force);
      await data?.close();
      await metrics?.close();
      ctx.store.closeAll();
    },
  };
}
