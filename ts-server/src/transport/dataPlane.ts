// The "tcp" data plane: Step for clients on another host, without protobuf
// or HTTP/2 around the tensor bytes (the framing is documented at
// DataStepHeader in proto/mur/v1/optimizer.proto, the design in
// docs/data-path.md). A plain socket moves a step's bytes several times
// faster than grpc-js and grpcio do (make bench-e2e measures both), so the
// bytes of a step travel here while every other call stays on gRPC.
//
// One connection steps once at a time: a request is read whole (the header
// first, checked before any gradient byte is accepted), the step runs through
// the reader gRPC's Step uses too (session/stepRequest.ts), and the next
// request is read only after the reply is written (the socket is paused
// meanwhile, which is the backpressure). Buffers are per connection and reused.
import * as net from 'net';
import * as tls from 'tls';
import { status } from '@grpc/grpc-js';
import { DataStepHeader, DataStepReplyHeader, DType, type StepRequest } from '../../generated/mur/v1/optimizer';
import { InvalidArgument, ResourceExhausted } from '../errors';
import type { ServerContext } from '../grpc/context';
import type { Metered } from '../metrics';
import { toServiceError } from '../grpc/status';
import type { Session } from '../session/session';
import { closureFields } from '../wire/closure';
import { applyStep, checkGradients, rowsOf, valuesOf, type Grad } from '../session/stepRequest';
import { paramValue } from '../wire/paramValue';
import { bytesToF32, isHalf, widenInto } from '../wire/tensors';
import { log } from '../log';

const RPC = 'DataStep';

export interface DataPlaneOptions {
  host: string;
  port: number;
  tls?: { cert: Buffer; key: Buffer; clientCa?: Buffer };
  /** Connections idle this long are closed (ms). */
  idleMs: number;
}

export interface DataPlane {
  port: number;
  close(): Promise<void>;
}

/** A request whose header was accepted: where its gradients go in the payload. */
interface Pending {
  session: Session;
  request: StepRequest;
  /** Each gradient's bytes in the payload. */
  sizes: number[];
  total: number;
}

/** Bytes per element of a gradient dtype on the wire. */
const width = (d: DType) => (isHalf(d) ? 2 : 4);

/**
 * Checks a header against its session before a gradient byte is read: the
 * session and token, each gradient's id (known, once), dtype and shape. What
 * the payload must hold follows from the shapes, so a peer cannot make the
 * server buffer more than the session's own gradients.
 */
function accept(ctx: ServerContext, bytes: Buffer): Pending {
  let header: DataStepHeader;
  try {
    header = DataStepHeader.decode(bytes);
  } catch {
    throw new InvalidArgument('data plane: malformed DataStepHeader');
  }
  const request = header.request;
  if (!request) throw new InvalidArgument('data plane: DataStepHeader.request is missing');
  if (request.arenaGrads.length > 0 || (request.arenaSparse?.rows.length ?? 0) > 0)
    throw new InvalidArgument('data plane: arena_grads is for the shm transport; send the gradients');
  const session = ctx.store.get(request.sessionId, header.sessionToken || undefined);
  request.grads.forEach((g, i) => {
    const t = valuesOf(g);
    if (t && t.data.byteLength > 0) throw new InvalidArgument(`grads[${i}] '${g.paramId}': data must follow the header, not be in it`);
  });
  const sizes = checkGradients(session, request.grads).map((n, i) => n * width(valuesOf(request.grads[i])!.dtype));
  return { session, request, sizes, total: sizes.reduce((a, n) => a + n, 0) };
}

/** The frame of a reply: u32 LE length, then the header. */
function frame(h: DataStepReplyHeader): Buffer {
  const body = DataStepReplyHeader.encode(h).finish();
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32LE(body.length, 0);
  out.set(body, 4);
  return out;
}

class Connection {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private need = 4;
  private state: 'length' | 'header' | 'payload' | 'busy' | 'closed' = 'length';
  private pending?: Pending;
  private recv = Buffer.allocUnsafe(0);
  private send = Buffer.allocUnsafe(0);
  /** bfloat16 and float16 gradients widened to float32 (reused: fresh large buffers cost page faults every step). */
  private widened = Buffer.allocUnsafe(0);
  private received = 0;

  constructor(
    private readonly ctx: ServerContext,
    private readonly socket: net.Socket,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.buffered += c.length;
      this.drain();
    });
  }

  /** The first n buffered bytes, removed from the buffer. */
  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.buffered);
    this.buffered -= n;
    this.chunks = this.buffered > 0 ? [all.subarray(n)] : [];
    return all.subarray(0, n);
  }

  private drain(): void {
    for (;;) {
      if (this.state === 'length') {
        if (this.buffered < 4) return;
        this.need = this.take(4).readUInt32LE(0);
        if (this.need > this.ctx.maxMessageBytes) {
          return this.refuse(
            new ResourceExhausted(
              `data plane: a ${this.need}-byte header is over the server's ${this.ctx.maxMessageBytes}-byte message limit`,
            ),
          );
        }
        this.state = 'header';
      } else if (this.state === 'header') {
        if (this.buffered < this.need) return;
        try {
          this.pending = accept(this.ctx, this.take(this.need));
        } catch (e) {
          return this.refuse(e);
        }
        if (this.recv.length < this.pending.total) this.recv = Buffer.allocUnsafe(this.pending.total);
        this.received = 0;
        this.state = 'payload';
      } else if (this.state === 'payload') {
        // Gradient bytes go straight into the reused receive buffer.
        const total = this.pending!.total;
        while (this.chunks.length > 0 && this.received < total) {
          const c = this.chunks[0];
          const n = Math.min(c.length, total - this.received);
          c.copy(this.recv, this.received, 0, n);
          this.received += n;
          this.buffered -= n;
          if (n === c.length) this.chunks.shift();
          else this.chunks[0] = c.subarray(n);
        }
        if (this.received < total) return;
        this.state = 'busy';
        this.socket.pause();
        void this.step(this.pending!);
        return;
      } else {
        return;
      }
    }
  }

  /** The payload's gradients as float32: views of the receive buffer (copies where misaligned); 2-byte ones widened into the reused buffer. */
  private gradients(p: Pending): Grad[] {
    const wide = p.request.grads.reduce((n, g, i) => n + (isHalf(valuesOf(g)!.dtype) ? 2 * p.sizes[i] : 0), 0);
    if (this.widened.length < wide) this.widened = Buffer.allocUnsafe(wide);
    let at = 0;
    let w = 0;
    return p.request.grads.map((g, i) => {
      const data = this.recv.subarray(at, at + p.sizes[i]);
      at += p.sizes[i];
      const dtype = valuesOf(g)!.dtype;
      const rows = rowsOf(g, i);
      if (!isHalf(dtype)) return { id: g.paramId, data: bytesToF32(data, `grads[${i}] '${g.paramId}'`), rows };
      const out = new Float32Array(this.widened.buffer, this.widened.byteOffset + w, data.length / 2);
      w += 2 * data.length;
      return { id: g.paramId, data: widenInto(dtype, data, out), rows };
    });
  }

  /** Runs the step; the reply's frame and the parameter bytes that follow it. */
  private async run(p: Pending): Promise<Metered<{ head: Buffer; body: Buffer }>> {
    const { session, request } = p;
    const r = await applyStep(session, request, this.gradients(p));
    // Copied out before the reply is written: the values are the session's
    // own memory, which another step may change while the socket drains.
    const size = r.values.reduce((n, v) => n + v.data.byteLength, 0);
    if (this.send.length < size) this.send = Buffer.allocUnsafe(size);
    let off = 0;
    for (const v of r.values) {
      this.send.set(new Uint8Array(v.data.buffer, v.data.byteOffset, v.data.byteLength), off);
      off += v.data.byteLength;
    }
    const params = r.values.map((v) => paramValue(v, session.shapeOf(v.id, 'reply'), false));
    const head = frame({ code: 0, message: '', reply: { step: r.step, replayed: r.replayed, params, ...closureFields(r) } });
    // Metered with the bytes that came over the wire (2-byte ones counted as sent).
    return { reply: { head, body: this.send.subarray(0, size) }, replayed: r.replayed, gradientBytes: p.total, parameterBytes: size };
  }

  private async step(p: Pending): Promise<void> {
    let head: Buffer;
    let body: Buffer | undefined;
    try {
      // validate_only (phase 1 of a step across servers) steps nothing: not metered as a step, as on gRPC.
      ({ head, body } = p.request.validateOnly ? (await this.run(p)).reply : await this.ctx.metrics.step('tcp', () => this.run(p)));
    } catch (e) {
      const s = toServiceError(e, RPC, this.ctx.metrics);
      head = frame({ code: s.code ?? status.INTERNAL, message: s.details ?? '', reply: undefined });
    }
    if (this.state === 'closed') return;
    this.socket.cork();
    this.socket.write(head);
    if (body && body.length > 0) this.socket.write(body);
    this.socket.uncork();
    // The send buffer is reused: the next request is read once this reply is out.
    this.socket.write(Buffer.alloc(0), () => {
      if (this.state === 'closed') return;
      this.state = 'length';
      this.pending = undefined;
      this.socket.resume();
      this.drain();
    });
  }

  /** Answers a request that cannot be read on, and closes the connection (its remaining bytes are not read). */
  private refuse(e: unknown): void {
    const s = toServiceError(e, RPC, this.ctx.metrics);
    this.ctx.metrics.refused('tcp');
    this.state = 'closed';
    this.socket.end(frame({ code: s.code ?? status.INTERNAL, message: s.details ?? '', reply: undefined }));
  }

  closed(): void {
    this.state = 'closed';
  }
}

export async function startDataPlane(ctx: ServerContext, opts: DataPlaneOptions): Promise<DataPlane> {
  const sockets = new Set<net.Socket>();
  const onSocket = (socket: net.Socket) => {
    sockets.add(socket);
    const c = new Connection(ctx, socket);
    socket.setTimeout(opts.idleMs, () => socket.destroy());
    socket.on('error', (e) => log('debug', 'data_plane_socket_error', { message: e.message }));
    socket.on('close', () => {
      c.closed();
      sockets.delete(socket);
    });
  };
  const server = opts.tls
    ? tls.createServer(
        {
          cert: opts.tls.cert,
          key: opts.tls.key,
          ca: opts.tls.clientCa,
          requestCert: opts.tls.clientCa !== undefined,
          rejectUnauthorized: opts.tls.clientCa !== undefined,
        },
        onSocket,
      )
    : net.createServer(onSocket);
  server.on('tlsClientError', (e: Error) => log('debug', 'data_plane_tls_error', { message: e.message }));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (e: Error) => log('error', 'data_plane_error', { message: e.message }));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
