// Sessions by id, with their credentials and the server's limits. Every
// per-session call finds its session through get(id, token): the token is
// checked first (credentials.ts), then the session is looked up and its idle
// clock reset; a session whose kept state failed its checks (--state-dir)
// answers DATA_LOSS. Closing a session (or the store) disposes everything it
// holds.
import { randomUUID } from 'crypto';
import { currentEngine } from '../engine/engine';
import { slotBytes, type StateDtype } from '../engine/stateDtype';
import type { SlotDecl } from '../engine/types';
import { type DataLoss, NotFound, ResourceExhausted } from '../errors';
import { slotSize } from '../engine/slots';
import { log } from '../log';
import { optimizerOf, resolveGroup, type ResolvedSpec } from '../registry';
import { Credentials } from './credentials';
import { sizeOf, type ParamDeclaration } from './declarations';
import type { StateDir } from './durable';
import { Session } from './session';

export interface Limits {
  /** Open sessions at once (0: no limit). */
  maxSessions: number;
  /** Bytes of parameters and state slots of every session together (0: no limit). */
  maxBytes: number;
  /** A session unused this long is closed (ms; 0: never). */
  idleTimeoutMs: number;
}

export const NO_LIMITS: Limits = { maxSessions: 0, maxBytes: 0, idleTimeoutMs: 0 };

interface Entry {
  session: Session;
  bytes: number;
  lastUsed: number;
  /** The fast-lane steps the session had taken in when the sweep last looked (they make no call). */
  laneSteps: number;
}

/** How often idle sessions are looked for: a quarter of the timeout, at least 250 ms, at most 30 s. */
export function sweepPeriodMs(idleTimeoutMs: number): number {
  return Math.min(30_000, Math.max(250, idleTimeoutMs / 4));
}

/**
 * The bytes a session will hold: each parameter (float32) and every slot its
 * optimizer and rule declare for its group's hyperparameters: one float32
 * value, or per element 4 bytes (float32 state), 2 (bfloat16 state) or 1 and
 * a float32 per 256 (q8 state, engine/stateDtype.ts slotBytes), on an engine
 * that stores it (`stored`, the engine's storedStateDtypes). Rule
 * slots are one value each. L-BFGS counts its whole history (2 history_size
 * vectors of the parameters' size) and its working vectors.
 */
export function projectedBytes(
  spec: ResolvedSpec,
  decls: ParamDeclaration[],
  stored: readonly StateDtype[] = currentEngine().storedStateDtypes,
): number {
  const dtype = stored.includes(spec.state.dtype) ? spec.state.dtype : 'float32';
  let bytes = 0;
  for (const d of decls) {
    const n = sizeOf(d.shape);
    const h = resolveGroup(spec, d.group);
    const on = (s: SlotDecl) => !s.when || s.when(h);
    bytes += 4 * n;
    // A per-element slot is stored as `dtype`; a scalar, shaped (Adafactor's rows and columns) or
    // float32 one (SlotDecl.float32: Schedule-Free's z) float32.
    for (const s of optimizerOf(spec, d.group).slots.filter(on))
      bytes += slotBytes(s.scalar || s.shape || s.float32 ? 'float32' : dtype, slotSize(s, d.shape));
    for (const s of spec.rule.slots.filter(on)) bytes += 4 * slotSize(s, d.shape);
    // L-BFGS at its fullest: history_size pairs (s, y), d, g_prev and, during a step, the point it started
    // from and the gradients of the line search's bracket (float32 vectors of the whole model).
    if (optimizerOf(spec, d.group).closure) bytes += 4 * n * (2 * (h.history_size as number) + 6);
  }
  return bytes;
}

export class SessionStore {
  private readonly sessions = new Map<string, Entry>();
  /** Sessions of --state-dir that failed recovery's checks: every call about them answers DATA_LOSS. */
  private readonly damaged = new Map<string, { error: DataLoss; checkToken: boolean }>();
  private readonly sweeper: NodeJS.Timeout | null;
  private bytes = 0;

  constructor(
    readonly limits: Limits = NO_LIMITS,
    readonly credentials: Credentials = new Credentials(),
    /** The clock idle times are read from (tests pass their own). */
    private readonly now: () => number = Date.now,
    /** Where sessions are kept across restarts (--state-dir), if anywhere. */
    private readonly state: StateDir | null = null,
  ) {
    // Idle sessions are found by a sweep a few times per timeout: one idle
    // for the timeout is closed by the next sweep (at most one period late).
    this.sweeper = limits.idleTimeoutMs > 0 ? setInterval(() => void this.expire(), sweepPeriodMs(limits.idleTimeoutMs)) : null;
    this.sweeper?.unref();
  }

  /** Creates a session within the limits; refused before anything is allocated. */
  create(spec: ResolvedSpec, params: ParamDeclaration[]): { session: Session; token: string } {
    const { maxSessions, maxBytes } = this.limits;
    if (maxSessions > 0 && this.sessions.size >= maxSessions) {
      throw new ResourceExhausted(`sessions: the server holds its limit of ${maxSessions} (--max-sessions); close one first`);
    }
    const bytes = projectedBytes(spec, params);
    if (maxBytes > 0 && this.bytes + bytes > maxBytes) {
      throw new ResourceExhausted(
        `memory: this session needs ${bytes} bytes (parameters and optimizer state), ${Math.max(0, maxBytes - this.bytes)} of the limit of ${maxBytes} (--max-bytes) are free`,
      );
    }
    const session = new Session(randomUUID(), spec, params);
    session.onLaneSteps = (n) => this.onLaneSteps?.(n);
    if (this.state) {
      try {
        session.journal = this.state.created(session, bytes);
      } catch (e) {
        session.dispose();
        throw e;
      }
    }
    this.sessions.set(session.id, { session, bytes, lastUsed: this.now(), laneSteps: 0 });
    this.bytes += bytes;
    log('info', 'session_created', {
      session: session.id,
      optimizer: spec.optimizer.name,
      rule: spec.rule.name,
      params: params.length,
      bytes,
    });
    return { session, token: this.credentials.tokenFor(session.id) };
  }

  /** The session `id`, if `token` opens it (else Unauthenticated / PermissionDenied, before any lookup). */
  get(id: string, token: string | undefined): Session {
    const damaged = this.damaged.get(id);
    if (damaged) {
      // A session created under a key this server no longer has cannot check its token: the answer says only that its state is lost.
      if (damaged.checkToken) this.credentials.check(id, token);
      throw damaged.error;
    }
    this.credentials.check(id, token);
    const e = this.sessions.get(id);
    if (!e) {
      throw new NotFound(
        `session '${id}' not found: it was closed, expired after being idle, or lost when the server restarted without --state-dir; ` +
          'start a new session and restore a checkpoint into it',
      );
    }
    e.lastUsed = this.now();
    if (e.session.damage) throw e.session.damage;
    return e.session;
  }

  /**
   * Adds parameters to session `id` (Session.addParameters) within
   * --max-bytes: their projected bytes are counted before anything changes;
   * an arena the session gives up returns its gradient bytes.
   */
  addParameters(id: string, groups: Record<string, Record<string, unknown>>, decls: ParamDeclaration[]): ResolvedSpec {
    const e = this.sessions.get(id);
    if (!e) throw new NotFound(`session '${id}' not found`);
    let added = 0;
    const { spec, releasedBytes } = e.session.addParameters(groups, decls, (next, d) => {
      added = projectedBytes(next, d);
      const { maxBytes } = this.limits;
      if (maxBytes > 0 && this.bytes + added > maxBytes) {
        throw new ResourceExhausted(
          `memory: the new parameters need ${added} bytes (values and optimizer state), ${Math.max(0, maxBytes - this.bytes)} of the limit of ${maxBytes} (--max-bytes) are free`,
        );
      }
    });
    e.bytes += added - releasedBytes;
    this.bytes += added - releasedBytes;
    log('info', 'session_params_added', { session: id, params: decls.length, bytes: added });
    return spec;
  }

  /** Reserves `bytes` more for a session (an arena's gradient regions); ResourceExhausted beyond --max-bytes. */
  reserve(id: string, bytes: number, what: string): void {
    const e = this.sessions.get(id);
    if (!e) return;
    if (this.limits.maxBytes > 0 && this.bytes + bytes > this.limits.maxBytes) {
      throw new ResourceExhausted(
        `memory: ${what} needs ${bytes} bytes, ${Math.max(0, this.limits.maxBytes - this.bytes)} of the limit of ${this.limits.maxBytes} (--max-bytes) are free`,
      );
    }
    e.bytes += bytes;
    this.bytes += bytes;
  }

  close(id: string, reason = 'closed'): void {
    const e = this.sessions.get(id);
    if (!e) return;
    this.sessions.delete(id);
    this.bytes -= e.bytes;
    e.session.dispose();
    this.state?.removed(id);
    log('info', reason === 'closed' ? 'session_closed' : 'session_expired', { session: id, reason });
  }

  /**
   * Closes every session unused for longer than the timeout (after anything
   * queued on it). A call uses a session when it looks it up (get); steps
   * through the shared-memory fast lane make no call, so a session with a
   * lane is looked at on every sweep: steps it took in since the last one
   * count as a use now.
   */
  expire(): Promise<void> {
    const idle = (e: Entry) => this.now() - e.lastUsed > this.limits.idleTimeoutMs;
    const closing: Promise<void>[] = [];
    for (const [id, e] of this.sessions) {
      if (!e.session.hasLane && !idle(e)) continue;
      closing.push(
        e.session.exclusive(() => {
          if (this.sessions.get(id) !== e) return;
          const lane = e.session.laneSteps; // exclusive() took in what the lane applied
          if (lane !== e.laneSteps) {
            e.laneSteps = lane;
            e.lastUsed = this.now();
          }
          if (idle(e)) this.close(id, 'idle');
        }),
      );
    }
    return Promise.all(closing).then(() => undefined);
  }

  /** Loads every session of the state directory (at start-up); the number served (damaged ones are not counted). */
  recover(): number {
    if (!this.state) return 0;
    let n = 0;
    for (const r of this.state.recover((id, spec, decls) => ({
      session: new Session(id, spec, decls),
      stateBytes: projectedBytes(spec, decls),
    }))) {
      if ('damage' in r) {
        this.damaged.set(r.id, { error: r.damage, checkToken: r.checkToken });
        continue;
      }
      const { session, journal } = r;
      const bytes = projectedBytes(session.resolvedSpec, session.declarations());
      session.journal = journal;
      session.onLaneSteps = (n) => this.onLaneSteps?.(n);
      this.sessions.set(session.id, { session, bytes, lastUsed: this.now(), laneSteps: 0 });
      this.bytes += bytes;
      n++;
    }
    return n;
  }

  /** Told the fast-lane steps of every session as they are taken in (metrics). */
  onLaneSteps: ((steps: number) => void) | null = null;

  /** Takes in what every session's fast lane applied (each after its queued work). */
  async syncLanes(): Promise<void> {
    await Promise.all([...this.sessions.values()].map((e) => e.session.exclusive(() => undefined)));
  }

  get size(): number {
    return this.sessions.size;
  }

  /** Sessions of --state-dir that answer DATA_LOSS. */
  get damagedCount(): number {
    return this.damaged.size;
  }

  /** Bytes held by every session (projected at creation, arenas included). */
  get heldBytes(): number {
    return this.bytes;
  }

  /** Disposes every session; with a state directory their files stay for the next start. */
  closeAll(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    const state = this.state;
    for (const [id, e] of this.sessions) {
      e.session.dispose();
      if (!state) log('info', 'session_closed', { session: id, reason: 'server stopped' });
    }
    this.sessions.clear();
    this.bytes = 0;
    state?.close();
  }
}
