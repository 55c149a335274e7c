// Binds the Optimizer service, grpc.health.v1 and server reflection.
import * as fs from 'fs';
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
import { closeSession } from './handlers/closeSession';
import { createSession } from './handlers/createSession';
import { exportState } from './handlers/exportState';
import { getCapabilities } from './handlers/getCapabilities';
import { importState } from './handlers/importState';
import { openArena } from './handlers/openArena';
import { step } from './handlers/step';
import { stepStream } from './handlers/stepStream';
import { tokenOf } from '../session/credentials';
import { checkWellFormed, tolerantDeserializers } from './malformed';
import { toServiceError } from './status';
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
  /** Concurrent calls per connection (default 64). */
  maxStreams?: number;
  /** Connections idle this long are closed (ms, default 15 min). */
  maxConnectionIdleMs?: number;
}

/**
 * Raises the HTTP/2 receive windows of the server: grpc-js 1.14 has no server
 * option for them (its `grpc-node.flow_control_window` is client-only), so
 * this sets the SETTINGS_INITIAL_WINDOW_SIZE it passes to http2.createServer
 * and the connection window of each new session. It reaches into grpc-js
 * internals, guarded: where they differ it changes nothing and says so.
 */
function raiseFlowControlWindow(server: grpc.Server, bytes: number): boolean {
  const s = server as unknown as { commonServerOptions?: { settings?: Record<string, number> }; http2Servers?: Map<unknown, unknown> };
  if (!s.commonServerOptions) return false;
  s.commonServerOptions.settings = { ...(s.commonServerOptions.settings ?? {}), initialWindowSize: bytes };
  return true;
}

function raiseSessionWindows(server: grpc.Server, bytes: number): void {
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
  /** Stops accepting, lets in-flight calls finish, disposes every session. */
  close(graceMs?: number): Promise<void>;
}

/** The one adapter for unary calls: a handler returns a value or a promise; errors map in status.ts. */
function unary<Req, Res>(name: string, fn: (req: Req, token: string | undefined) => Res | Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => fn(checkWellFormed(call.request), tokenOf(call.metadata)))
      .then(
        (r) => callback(null, r),
        (e) => callback(toServiceError(e, name)),
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
    store: new SessionStore(opts.limits, undefined, opts.clock),
    backend: opts.backend ?? (currentEngine().name as BackendName),
    maxMessageBytes,
    chunkBytes: opts.chunkBytes ?? 1024 * 1024,
    maxStreamElements: opts.maxStreamElements ?? 2 ** 30,
    defaultSpec: opts.defaultSpec,
  };
  const impl: OptimizerServer = {
    getCapabilities: unary('GetCapabilities', () => getCapabilities(ctx)),
    createSession: unary('CreateSession', (req) => createSession(ctx, req)),
    step: unary('Step', (req, token) => step(ctx, req, token)),
    closeSession: unary('CloseSession', (req, token) => closeSession(ctx, req, token)),
    openArena: unary('OpenArena', (req, token) => openArena(ctx, req, token)),
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
  if (window > 0 && !tuned) log('warn', 'flow_control_window', { message: 'grpc-js internals changed: HTTP/2 windows left at their defaults' });
  server.addService(tolerantDeserializers(OptimizerService), impl);
  const health = new HealthImplementation({ '': 'SERVING', 'mur.v1.Optimizer': 'SERVING' });
  health.addToServer(server);
  new ReflectionService(reflectionDescriptors()).addToServer(server);

  const address = opts.socket ? `unix:${opts.socket}` : `${opts.host ?? '127.0.0.1'}:${opts.port ?? 0}`;
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  if (tuned) raiseSessionWindows(server, window);
  let closed = false;
  return {
    port,
    context: ctx,
    close: async (graceMs = 5000) => {
      if (closed) return;
      closed = true;
      health.setStatus('', 'NOT_SERVING');
      // In-flight calls get graceMs to finish; then open streams are cut.
      const force = setTimeout(() => server.forceShutdown(), graceMs);
      force.unref();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      clearTimeout(force);
      ctx.store.closeAll();
    },
  };
}
