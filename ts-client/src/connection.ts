// The channel to a server: TLS, deadlines, typed errors, and the retry policy
// (the Python client's too; written down once, in ts-client/README.md).
import * as grpc from '@grpc/grpc-js';
import { OptimizerClient, type Capabilities, type GetCapabilitiesRequest } from '../generated/mur/v1/optimizer';
import { fromServiceError, MurError } from './errors';

/**
 * TLS to a server started with --tls-cert/--tls-key (PEM contents): `ca`, the
 * CA that signed the server's certificate (default: the system's roots);
 * `cert` and `key`, this client's certificate for a server that requires one
 * (--tls-client-ca).
 */
export interface TlsOptions {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

export interface ClientOptions extends grpc.ChannelOptions {
  /** Connect with TLS (omitted: plaintext). */
  tls?: TlsOptions;
  /**
   * Every call's deadline in ms (default 120000): a unary call, or a whole
   * ExportState/ImportState stream. A StepStream kept open by the caller
   * (session.stream()) has none. 0: no deadline. A call past its deadline
   * fails with DEADLINE_EXCEEDED and is not retried.
   */
  deadlineMs?: number;
  /**
   * How long a session's calls (a step with its number, checkpoint, restore,
   * the arena re-mapped, close) keep being retried after the server became
   * unreachable (UNAVAILABLE), in ms from the first attempt (default 60000;
   * 0: never). A retried step keeps its step number: a server that applied it
   * answers with the remembered result instead of applying it twice.
   * GetCapabilities and CreateSession are not retried: a server never reached
   * fails at once.
   */
  reconnectTimeoutMs?: number;
}

/** The retry policy (the same in the Python client). */
export const RETRY = {
  /** Only a lost server is retried; a deadline is the caller's limit and ends the call. */
  statuses: new Set<grpc.status>([grpc.status.UNAVAILABLE]),
  /**
   * Backoff before the first retry, doubled per retry up to maxBackoffMs,
   * times a jitter in [0.5, 1.5): a server listening again is found within
   * about a second.
   */
  firstBackoffMs: 100,
  maxBackoffMs: 500,
  reconnectTimeoutMs: 60_000,
};

/** How long to wait before retry number `attempt` + 1 (attempt 0: the first failure). */
export function backoffMs(attempt: number, random: () => number = Math.random): number {
  return Math.min(RETRY.maxBackoffMs, RETRY.firstBackoffMs * 2 ** attempt) * (0.5 + random());
}

/** True for a failure a retry may cure (the server unreachable: down, restarting). */
export const isRetryable = (e: unknown): e is MurError => e instanceof MurError && RETRY.statuses.has(e.code);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Call metadata carrying a session's token (proto: authorization: Bearer). */
export function auth(token: string): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set('authorization', `Bearer ${token}`);
  return m;
}

export type UnaryMethod<Req, Res> = (
  req: Req,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  cb: (e: grpc.ServiceError | null, r: Res) => void,
) => unknown;

/** Options the client once had, now named otherwise: refused, so old code is told rather than ignored. */
const REPLACED: Record<string, string> = {
  retries: 'reconnectTimeoutMs (retries go on for that long, with the backoff of ts-client/README.md)',
  retryBackoffMs: 'the fixed backoff of ts-client/README.md (100 ms doubling up to 0.5 s)',
};

export class Connection {
  readonly raw: OptimizerClient;
  readonly deadlineMs: number;
  readonly reconnectTimeoutMs: number;
  private caps?: Capabilities;

  constructor(
    readonly address: string,
    readonly options: ClientOptions = {},
  ) {
    for (const k of Object.keys(REPLACED)) if (k in options) throw new TypeError(`${k}: no longer an option; use ${REPLACED[k]}`);
    const { tls, deadlineMs = 120_000, reconnectTimeoutMs = RETRY.reconnectTimeoutMs, ...channel } = options;
    for (const [k, v] of Object.entries({ deadlineMs, reconnectTimeoutMs })) {
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new TypeError(`${k}: ${v} must be a number >= 0`);
    }
    this.deadlineMs = deadlineMs;
    this.reconnectTimeoutMs = reconnectTimeoutMs;
    if (tls && (tls.cert === undefined) !== (tls.key === undefined))
      throw new TypeError('tls: cert and key go together (a client certificate needs its key)');
    const credentials = tls
      ? grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null)
      : grpc.credentials.createInsecure();
    this.raw = new OptimizerClient(address, credentials, {
      'grpc.max_receive_message_length': -1,
      'grpc.max_send_message_length': -1,
      // grpc's own reconnect backoff capped like ours: a restarted server is found
      // soon after it listens again, not after grpc's default (up to 2 min).
      'grpc.initial_reconnect_backoff_ms': RETRY.firstBackoffMs,
      'grpc.max_reconnect_backoff_ms': RETRY.maxBackoffMs,
      ...channel,
    });
  }

  /** Call options with this client's deadline, from now. */
  callOptions(): Partial<grpc.CallOptions> {
    return this.deadlineMs > 0 ? { deadline: new Date(Date.now() + this.deadlineMs) } : {};
  }

  /** One unary call (with the deadline), failures mapped to MurError subclasses. */
  call<Req, Res>(method: UnaryMethod<Req, Res>, req: Req, metadata = new grpc.Metadata()): Promise<Res> {
    return new Promise((resolve, reject) =>
      method.call(this.raw, req, metadata, this.callOptions(), (e, r) => (e ? reject(fromServiceError(e)) : resolve(r))),
    );
  }

  /**
   * Runs an idempotent operation, again after each retryable failure until
   * reconnectTimeoutMs has passed since the first attempt, with backoff;
   * `op` gets the attempt number (0 first), e.g. to re-map a restarted
   * server's arena.
   */
  async retrying<T>(op: (attempt: number) => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.reconnectTimeoutMs;
    for (let attempt = 0; ; attempt++) {
      try {
        return await op(attempt);
      } catch (e) {
        const left = deadline - Date.now();
        if (!isRetryable(e) || left <= 0) throw e;
        await sleep(Math.min(left, backoffMs(attempt)));
      }
    }
  }

  /** The server's capabilities, asked once. */
  async capabilities(): Promise<Capabilities> {
    return this.caps ?? this.freshCapabilities();
  }

  /** The capabilities asked again (a restarted server has another data port). */
  async freshCapabilities(): Promise<Capabilities> {
    this.caps = await this.call<GetCapabilitiesRequest, Capabilities>(this.raw.getCapabilities.bind(this.raw), {});
    return this.caps;
  }

  close(): void {
    this.raw.close();
  }
}
