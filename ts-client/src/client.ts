// A typed client for mur: promises for the unary calls, async iterators for
// the streams, Float32Array in and out with no per-element copies. The client
// opens sessions and picks each one's plane; connection.ts holds the channel
// and the retries, session.ts a session, one module per plane the bytes.
import type { Capabilities, CreateSessionReply, CreateSessionRequest, OptimizerClient } from '../generated/mur/v1/optimizer';
import { openArena, ShmPlane } from './arena';
import { bytes, F32 } from './chunks';
import { Connection, type ClientOptions } from './connection';
import { INLINE_SHARE } from './grpcPlane';
import { MurSession } from './session';
import { openDataPort, TcpPlane } from './tcpPlane';
import { TRANSPORTS, type ParamInit, type SessionOptions, type Spec } from './types';

export class MurClient {
  private readonly conn: Connection;

  /** `options`: grpc channel options, `tls` to connect with TLS or mutual TLS, deadlines and retries. */
  constructor(
    readonly address: string,
    /** @internal The options as given (the tfjs adapter's worker makes its own client from them). */
    readonly options: ClientOptions = {},
  ) {
    this.conn = new Connection(address, options);
  }

  /** The generated gRPC client underneath. */
  get raw(): OptimizerClient {
    return this.conn.raw;
  }

  /** @internal */
  get deadlineMs(): number {
    return this.conn.deadlineMs;
  }

  /** @internal */
  get reconnectTimeoutMs(): number {
    return this.conn.reconnectTimeoutMs;
  }

  capabilities(): Promise<Capabilities> {
    return this.conn.capabilities();
  }

  /**
   * Creates a session; values beyond the message limit go through ImportState
   * chunks. `options.transport` picks the data plane (default "auto").
   */
  async createSession(spec: Spec, params: ParamInit[], options: SessionOptions = {}): Promise<MurSession> {
    const transport = options.transport ?? 'auto';
    if (!TRANSPORTS.includes(transport)) throw new TypeError(`transport: ${JSON.stringify(transport)} is not auto, shm, tcp or grpc`);
    const conn = this.conn;
    const caps = await conn.capabilities();
    // Asked for tcp: checked before the session exists, so a refusal leaves nothing behind.
    const data =
      transport === 'tcp'
        ? await openDataPort(conn, caps).catch((e: Error) => {
            throw new Error(`transport "tcp" is not possible here: ${e.message}`);
          })
        : null;
    const total = params.reduce((n, p) => n + p.values.byteLength, 0);
    const inline = total < caps.maxMessageBytes * INLINE_SHARE;
    const reply = await conn
      .call<CreateSessionRequest, CreateSessionReply>(conn.raw.createSession.bind(conn.raw), {
        spec: {
          optimizer: spec.optimizer,
          rule: spec.rule,
          defaults: spec.defaults,
          groups: spec.groups ?? {},
          stateDtype: spec.stateDtype,
          stateSeed: spec.stateSeed,
          groupOptimizers: { byGroup: spec.groupOptimizers ?? {} },
        },
        params: params.map((p) => ({
          id: p.id,
          name: p.name ?? p.id,
          shape: p.shape,
          dtype: F32,
          group: p.group ?? '',
          data: inline ? bytes(p.values) : Buffer.alloc(0),
        })),
      })
      .catch((e) => {
        void data?.close();
        throw e;
      });
    const session = new MurSession(conn, reply.sessionId, reply.sessionToken, new Map(params.map((p) => [p.id, p.shape])), caps);
    if (data) await session.use(new TcpPlane(session.link, data));
    if (!inline) {
      await session.importState(params.map((p) => ({ paramId: p.id, slot: '', values: p.values }))).catch(async (e) => {
        await session.close().catch(() => undefined);
        throw e;
      });
    }
    if (transport === 'auto' || transport === 'shm') {
      try {
        await session.use(new ShmPlane(session.link, await openArena(session.link)));
      } catch (e) {
        if (transport === 'shm') {
          await session.close().catch(() => undefined);
          throw new Error(`transport "shm" is not possible here: ${(e as Error).message}`, { cause: e });
        }
      }
    }
    if (transport === 'auto' && session.transport === 'grpc') {
      // Any failure to reach the data port from here: gRPC, silently.
      const plane = await openDataPort(conn, caps).catch(() => null);
      if (plane) await session.use(new TcpPlane(session.link, plane));
    }
    return session;
  }

  close(): void {
    this.conn.close();
  }
}
