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
import { SessionStore } from '../session/store';
import type { ServerContext } from './context';
import { closeSession } from './handlers/closeSession';
import { createSession } from './handlers/createSession';
import { exportState } from './handlers/exportState';
import { getCapabilities } from './handlers/getCapabilities';
import { importState } from './handlers/importState';
import { step } from './handlers/step';
import { stepStream } from './handlers/stepStream';
import { toServiceError } from './status';

export interface ServerOptions {
  port?: number;
  host?: string;
  maxMessageBytes?: number;
  chunkBytes?: number;
  maxStreamElements?: number;
  defaultSpec?: SpecJson;
  /** The backend name to report (tensorflow-gpu shares tfjs's 'tensorflow'). */
  backend?: BackendName;
}

export interface RunningServer {
  port: number;
  context: ServerContext;
  /** Stops accepting, lets in-flight calls finish, disposes every session. */
  close(graceMs?: number): Promise<void>;
}

function unary<Req, Res>(name: string, fn: (req: Req) => Res): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    try {
      callback(null, fn(call.request));
    } catch (e) {
      callback(toServiceError(e, name));
    }
  };
}

/** proto/ at the repository root, found from this file's location (src or dist). */
export function protoRoot(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const p = path.join(dir, 'proto');
    if (fs.existsSync(path.join(p, 'mur/v1/optimizer.proto'))) return p;
  }
  throw new Error('proto/mur/v1/optimizer.proto not found above ' + __dirname);
}

export async function startServer(opts: ServerOptions = {}): Promise<RunningServer> {
  const maxMessageBytes = opts.maxMessageBytes ?? 64 * 1024 * 1024;
  if (opts.defaultSpec) checkSpecJson(opts.defaultSpec, 'config: ');
  const ctx: ServerContext = {
    store: new SessionStore(),
    backend: opts.backend ?? (currentEngine().name as BackendName),
    maxMessageBytes,
    chunkBytes: opts.chunkBytes ?? 1024 * 1024,
    maxStreamElements: opts.maxStreamElements ?? 2 ** 30,
    defaultSpec: opts.defaultSpec,
  };
  const impl: OptimizerServer = {
    getCapabilities: unary('GetCapabilities', () => getCapabilities(ctx)),
    createSession: unary('CreateSession', (req) => createSession(ctx, req)),
    step: unary('Step', (req) => step(ctx, req)),
    closeSession: unary('CloseSession', (req) => closeSession(ctx, req)),
    stepStream: (call) => stepStream(ctx, call),
    exportState: (call) => exportState(ctx, call),
    importState: (call, cb) => importState(ctx, call, cb),
  };
  const server = new grpc.Server({
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
  });
  server.addService(OptimizerService, impl);
  const health = new HealthImplementation({ '': 'SERVING', 'mur.v1.Optimizer': 'SERVING' });
  health.addToServer(server);
  const root = protoRoot();
  const pkg = protoLoader.loadSync(path.join(root, 'mur/v1/optimizer.proto'), { includeDirs: [root] });
  new ReflectionService(pkg).addToServer(server);

  const address = `${opts.host ?? '127.0.0.1'}:${opts.port ?? 0}`;
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
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
