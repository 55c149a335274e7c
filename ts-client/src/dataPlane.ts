// The client end of the "tcp" data plane (proto: DataStepHeader; the server
// end is ts-server/src/transport/dataPlane.ts). A step's tensor bytes travel
// on a plain TCP connection (TLS when the gRPC channel uses TLS) beside the
// gRPC channel, without protobuf or HTTP/2 around them:
//
//   request: u32 LE n | DataStepHeader (n bytes)      | gradient bytes, in header order
//   reply:   u32 LE n | DataStepReplyHeader (n bytes) | float32 parameter bytes, in reply order
//
// One connection carries one step at a time; it is opened on first use and
// again after any failure (the session's retry loop sends the step again under
// its number, so a step whose reply was lost is replayed, not applied twice).
import * as net from 'net';
import * as tls from 'tls';
import { status } from '@grpc/grpc-js';
import { DataStepHeader, DataStepReplyHeader, type StepReply, type StepRequest } from '../generated/mur/v1/optimizer';
import { fromStatus, type MurError } from './errors';

/** The channel's TLS material, used as is for the data port (same server certificate). */
export interface DataPlaneTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/**
 * A reply header is a few hundred bytes (tensor bytes follow it): a length
 * beyond this means the port is not a mur data port, and nothing is allocated for it.
 */
const MAX_REPLY_HEADER = 1 << 24;

/**
 * The host of a gRPC target ("host:port", "dns:host:port", "dns:///host:port",
 * "ipv4:1.2.3.4:port", "[::1]:port", "ipv6:[::1]:port"), where the server's data
 * port is; null for a target without one (unix:, vsock:).
 */
export function hostOf(address: string): string | null {
  let rest = address;
  const scheme = /^([a-z][a-z0-9+.-]*):(.*)$/i.exec(rest);
  if (scheme && !/^\d+$/.test(scheme[2])) {
    const name = scheme[1].toLowerCase();
    if (!['dns', 'ipv4', 'ipv6'].includes(name)) return null;
    rest = scheme[2].replace(/^\/\/[^/]*\//, ''); // dns://authority/host:port
    rest = rest.split(',')[0]; // ipv4:a:p,b:p lists addresses: the first one
  }
  const bracket = /^\[([^\]]+)\](?::\d+)?$/.exec(rest);
  if (bracket) return bracket[1];
  const colon = rest.lastIndexOf(':');
  // One colon: host:port. More: a bare IPv6 literal (no port). None: a host alone.
  const host = colon >= 0 && rest.indexOf(':') === colon ? rest.slice(0, colon) : rest;
  return host === '' ? null : host;
}

/** Bytes arriving on one socket, handed out in exact amounts. */
class Inbox {
  private chunks: Buffer[] = [];
  private failure: MurError | null = null;
  private wake: (() => void) | null = null;

  push(c: Buffer): void {
    this.chunks.push(c);
    this.wake?.();
  }

  /** Ends the reading: bytes already received are still handed out, then `e` is thrown. The first failure wins. */
  fail(e: MurError): void {
    this.failure ??= e;
    this.wake?.();
  }

  /** Fills `target` with the next bytes, copied straight from the socket's chunks. */
  async fill(target: Uint8Array): Promise<void> {
    let got = 0;
    while (got < target.length) {
      if (this.chunks.length === 0) {
        if (this.failure) throw this.failure;
        await new Promise<void>((r) => (this.wake = r));
        this.wake = null;
        continue;
      }
      const c = this.chunks[0];
      const n = Math.min(c.length, target.length - got);
      target.set(n === c.length ? c : c.subarray(0, n), got);
      got += n;
      if (n === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(n);
    }
  }
}

/** One open connection to the data port. */
class Connection {
  readonly inbox = new Inbox();
  private ended = false;

  constructor(
    readonly socket: net.Socket,
    where: string,
  ) {
    const lost = (why: string) => {
      this.ended = true;
      this.inbox.fail(fromStatus(status.UNAVAILABLE, `data plane: connection to ${where} lost: ${why}`));
    };
    socket.on('data', (c: Buffer) => this.inbox.push(c));
    socket.on('end', () => lost('the server closed it'));
    socket.on('close', () => lost('closed'));
    socket.on('error', (e) => lost(e.message));
  }

  /** False once the server closed it (an idle timeout, a restart) or it failed. */
  get usable(): boolean {
    return !this.ended && !this.socket.destroyed;
  }

  /** Fails the step in progress with `e` (a deadline) and closes the connection. */
  abort(e: MurError): void {
    this.inbox.fail(e);
    this.socket.destroy();
  }
}

const asBytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

export class DataPlane {
  private conn: Connection | null = null;
  /** The step in progress: the next one waits for it (one step at a time per connection). */
  private busy: Promise<unknown> = Promise.resolve();

  constructor(
    readonly host: string,
    /** The server's data port; a server restarted on its --state-dir listens on another one. */
    public port: number,
    private readonly tlsOptions?: DataPlaneTls,
  ) {}

  get address(): string {
    return net.isIPv6(this.host) ? `[${this.host}]:${this.port}` : `${this.host}:${this.port}`;
  }

  /**
   * Opens the connection unless it is open. Refused, unreachable or a failed
   * TLS handshake: UNAVAILABLE; not open within `deadlineMs` (0: no limit): DEADLINE_EXCEEDED.
   */
  async connect(deadlineMs: number): Promise<void> {
    await this.open(deadlineMs > 0 ? Date.now() + deadlineMs : 0);
  }

  private open(deadline: number): Promise<Connection> {
    if (this.conn?.usable) return Promise.resolve(this.conn);
    void this.close();
    const where = this.address;
    return new Promise((resolve, reject) => {
      const t = this.tlsOptions;
      const socket = t
        ? // Like grpc-js: the server's certificate is checked against the host the client was given.
          tls.connect({
            host: this.host,
            port: this.port,
            ca: t.ca,
            cert: t.cert,
            key: t.key,
            servername: net.isIP(this.host) ? undefined : this.host,
          })
        : net.connect({ host: this.host, port: this.port });
      let timer: NodeJS.Timeout | undefined;
      const fail = (e: MurError) => {
        clearTimeout(timer);
        socket.destroy();
        reject(e);
      };
      const onError = (e: Error) => fail(fromStatus(status.UNAVAILABLE, `data plane: cannot connect to ${where}: ${e.message}`));
      socket.once('error', onError);
      if (deadline > 0) {
        timer = setTimeout(
          () => fail(fromStatus(status.DEADLINE_EXCEEDED, `data plane: connecting to ${where}: deadline exceeded`)),
          Math.max(0, deadline - Date.now()),
        );
      }
      socket.once(t ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        socket.setNoDelay(true);
        socket.unref();
        this.conn = new Connection(socket, where);
        resolve(this.conn);
      });
    });
  }

  /**
   * One step: `request` names the gradients (shape and dtype, no data) and
   * `grads` holds their values in the same order. Resolves with the reply and
   * each updated parameter's values, in fresh arrays the caller keeps.
   * Rejects with the MurError the gRPC Step would give for the server's
   * status (the connection is then closed: the server closes it after
   * refusing a header it could not read past), UNAVAILABLE when the
   * connection is lost (the step may or may not have been applied: send it
   * again under the same number), or DEADLINE_EXCEEDED after `deadlineMs` (0: none).
   */
  step(
    token: string,
    request: StepRequest,
    grads: Float32Array[],
    deadlineMs: number,
  ): Promise<{ reply: StepReply; values: Map<string, Float32Array> }> {
    // The deadline counts from the call, as a gRPC call's does (a step queued behind another included).
    const deadline = deadlineMs > 0 ? Date.now() + deadlineMs : 0;
    const run = this.busy.then(() => this.stepNow(token, request, grads, deadline, deadlineMs));
    this.busy = run.catch(() => undefined);
    return run;
  }

  private async stepNow(token: string, request: StepRequest, grads: Float32Array[], deadline: number, deadlineMs: number) {
    const conn = await this.open(deadline);
    // Referenced only while a step is in flight: an idle connection a caller
    // forgot to close does not keep the process alive.
    conn.socket.ref();
    let timer: NodeJS.Timeout | undefined;
    if (deadline > 0) {
      const late = fromStatus(status.DEADLINE_EXCEEDED, `data plane: no reply from ${this.address} within ${deadlineMs} ms`);
      timer = setTimeout(() => conn.abort(late), Math.max(0, deadline - Date.now()));
    }
    try {
      const header = DataStepHeader.encode({ sessionToken: token, request }).finish();
      const length = Buffer.allocUnsafe(4);
      length.writeUInt32LE(header.length, 0);
      // Gradients are written from the caller's arrays (a plaintext socket
      // sends them without a copy); the caller awaits the reply, which comes
      // only after the server has read them all.
      conn.socket.cork();
      conn.socket.write(length);
      conn.socket.write(header);
      for (const g of grads) if (g.byteLength > 0) conn.socket.write(asBytes(g));
      conn.socket.uncork();

      await conn.inbox.fill(length);
      const n = length.readUInt32LE(0);
      if (n > MAX_REPLY_HEADER)
        throw fromStatus(status.INTERNAL, `data plane: ${this.address} answered with a ${n}-byte header: not a mur data port`);
      const head = Buffer.allocUnsafe(n);
      await conn.inbox.fill(head);
      let h: DataStepReplyHeader;
      try {
        h = DataStepReplyHeader.decode(head);
      } catch {
        throw fromStatus(status.INTERNAL, `data plane: ${this.address} sent a malformed DataStepReplyHeader`);
      }
      if (h.code !== 0) throw fromStatus(h.code, h.message);
      const reply = h.reply ?? { step: request.step, params: [], replayed: false, evaluate: false, round: 0, restart: '' };
      // Each parameter is read straight into its own array: one copy from the
      // socket's chunks, and nothing the next step could overwrite.
      const values = new Map<string, Float32Array>();
      for (const p of reply.params) {
        const a = new Float32Array((p.value?.shape ?? []).reduce((x, d) => x * d, 1));
        await conn.inbox.fill(new Uint8Array(a.buffer));
        values.set(p.paramId, a);
      }
      return { reply, values };
    } catch (e) {
      // After a refusal, a lost connection or a deadline the framing of this
      // connection is unknown: the next step opens a fresh one.
      if (this.conn === conn) void this.close();
      throw e;
    } finally {
      clearTimeout(timer);
      conn.socket.unref();
    }
  }

  /** Closes the connection (the next step opens another); resolves once its socket is closed. */
  close(): Promise<void> {
    const socket = this.conn?.socket;
    this.conn = null;
    if (!socket || socket.closed) return Promise.resolve();
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.destroy();
    return closed;
  }
}
