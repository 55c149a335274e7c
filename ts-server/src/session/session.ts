// One optimizer session: its parameters' storage (held by the engine), the
// resolved spec, per-parameter step counts and the last client step number.
//
// A step is a transaction: validate everything (ids, sizes, finiteness, the
// step number, overrides) -> the engine computes and commits every parameter
// or throws having changed nothing -> the session records the step. A
// repeated last step number replays the result without stepping.
import { createHash } from 'crypto';
import { currentEngine, disposeParam, type Engine, type ParamState, type StepJob } from '../engine/engine';
import type { Hypers, OptimizerDef } from '../engine/types';
import { DataLoss, FailedPrecondition, InvalidArgument, MurError, Reason } from '../errors';
import type { Arena } from '../transport/arena';
import { checkShapes, isMixed, optimizerOf, resolveGroup, resolveSpec, specJson, withOverrides, type ResolvedSpec } from '../registry';
import { checkImport, paramTensors, slotRef, type SessionHeader, type SlotTensor } from './checkpoint';
import { checkDeclarations, checkFinite, sizeOf, type ParamDeclaration } from './declarations';
import type { StepJournal } from './durable';
import { SessionLane } from './lane';
import { checkRows, elementName, gatherRows, gradientKindRefusal, rowLength } from './rows';
import { LbfgsRun, roundDigest, type RoundInput, type RoundOutcome } from './lbfgs';
import { LBFGS_SLOTS, stateFromSlots, stateSlots } from '../optimizers/lbfgs';
import { isPathRule, PATH_RULES } from '../optimizers/lbfgsPath';

/** The lane's staging an overlapping client asks for (Session.openArena): its bytes, reserved by `reserve` (false: no room). */
export interface Staging {
  bytes: number;
  reserve: (bytes: number) => boolean;
}

export type { ParamDeclaration } from './declarations';
export type { SessionHeader, SlotTensor } from './checkpoint';
export { sizeOf } from './declarations';

interface Param {
  id: string;
  /** Declaration order in the session: the parameter's bfloat16 rounding stream. */
  index: number;
  shape: number[];
  group: string;
  size: number;
  state: ParamState;
}

export type Overrides = Record<string, Record<string, unknown>>;
/** Names the i-th gradient of a request in messages. */
type Where = (i: number) => string;
const gradsAt: Where = (i) => `grads[${i}]`;

/** One gradient of a step: dense (the parameter's size), or row-sparse (`rows`, and `data` their values, packed). */
export interface StepGrad {
  id: string;
  data: Float32Array;
  rows?: Uint32Array;
}

/** A planned step: validated, laid out, not yet applied. */
interface Plan {
  spec: ResolvedSpec;
  jobs: StepJob[];
  /** The jobs by optimizer (one batch unless groups have optimizers of their own), in order of first use. */
  batches: Array<{ opt: OptimizerDef; jobs: StepJob[] }>;
  ids: string[];
  /** Each gradient's rows (row-sparse ones). */
  rows: Array<Uint32Array | undefined>;
  /** The gradients' digests, when the plan scanned them (the synchronous path). */
  digests?: string[];
}

/** One digest of a step request: which parameters, their gradients' digests, the overrides. */
function requestDigest(grads: Array<{ id: string; rows?: Uint32Array }>, digests: string[], overrides: Overrides): string {
  const h = createHash('sha256');
  grads.forEach((g, i) => {
    h.update(`${g.id}\0${digests[i]}\0`);
    // A row-sparse gradient's rows are part of the request: the same values at other rows are another step.
    if (g.rows) h.update(`rows ${g.rows.length}\0`).update(new Uint8Array(g.rows.buffer, g.rows.byteOffset, g.rows.byteLength));
  });
  h.update(canonicalJson(overrides));
  return h.digest('hex');
}

/** JSON with object keys sorted, so equal overrides give equal text. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

export interface StepResult {
  step: number;
  replayed: boolean;
  /**
   * New values of the parameters of this step, in request order. Views of
   * the session's storage where the engine allows: read them before the
   * session's next step.
   */
  values: Array<{ id: string; data: Float32Array; rows?: Uint32Array }>;
  /** L-BFGS: the step needs another closure evaluation at `values` (StepReply.evaluate). */
  evaluate?: boolean;
  /** L-BFGS: the round answered. */
  round?: number;
  /** L-BFGS: why the round was not taken and the step restarts from `values` (StepReply.restart). */
  restart?: string;
}

/** An L-BFGS round as a transport reads it (StepRequest.round, .loss). */
export interface ClosureRound {
  round: number;
  loss: number | undefined;
}

export class Session {
  readonly id: string;
  private spec: ResolvedSpec;
  private readonly params = new Map<string, Param>();
  private lastStep = 0;
  private lastStepIds: string[] = [];
  /** The rows of each of the last step's row-sparse gradients (its reply carries those rows only). */
  private lastStepRows: Array<Uint32Array | undefined> = [];
  /** What the last applied step's request was (ids, gradient digests, overrides); null after an import. */
  private lastDigest: string | null = null;
  private disposed = false;
  private readonly engine: Engine;
  /** The same-host data plane, once a client asked for it (OpenArena). */
  private arena: Arena | null = null;
  /** Operations queued on this session (see exclusive). */
  private queue: Promise<unknown> = Promise.resolve();
  /** Where steps are recorded before they are applied (--state-dir), if anywhere. */
  journal: StepJournal | null = null;
  /** The arena's fast lane (steps rung through shared memory: lane.ts). */
  private lane: SessionLane | null = null;
  /** Bytes reserved (--max-bytes) for the lane's staged updates (OpenArenaRequest.overlap); 0: it stages none. */
  private stagingBytes = 0;
  /** The step number this session was recovered at (--state-dir), until its next step. */
  private resumedAt: number | null = null;
  /** The highest step number refused past the last applied one (clients do not reuse it). */
  private lastRefused = 0;
  /** Set when the session's kept state is known to be behind its client's: every call answers it. */
  damage: DataLoss | null = null;
  /** Told how many steps the fast lane applied, each time they are taken in (metrics). */
  onLaneSteps: ((steps: number) => void) | null = null;
  /** Steps the fast lane applied, taken in so far (they make no call: the idle sweep looks at this). */
  private laneStepsTaken = 0;
  /** L-BFGS sessions (optimizer "lbfgs"): the algorithm's state and the step in progress. */
  private readonly lbfgs: LbfgsRun | null = null;

  constructor(id: string, spec: ResolvedSpec, decls: ParamDeclaration[], engine: Engine = currentEngine()) {
    this.id = id;
    this.engine = engine;
    const { dtype } = spec.state;
    // Every optimizer of the session (a mixed one's groups' too) must keep its state as state_dtype.
    for (const opt of new Set([spec.optimizer, ...Object.values(spec.groupOptimizers)])) {
      if (engine.storedStateDtypes.includes(dtype) && engine.takesStateDtype && !engine.takesStateDtype(opt.name, dtype)) {
        throw new InvalidArgument(`state_dtype: ${opt.name} cannot keep its state as ${dtype} on the ${engine.name} engine (use float32)`);
      }
    }
    checkDeclarations(decls, (a) => engine.firstNonFinite(a));
    this.spec = resolveGroups(
      spec,
      decls.map((d) => d.group),
    );
    checkShapes(this.spec, decls);
    if (spec.optimizer.closure || Object.values(spec.groupOptimizers).some((o) => o.closure)) {
      checkClosureSpec(this.spec, decls);
      this.lbfgs = new LbfgsRun(engine, () => [...this.params.values()]);
    }
    for (const d of decls) this.declare(d);
  }

  /** True for L-BFGS sessions: steps come as rounds (stepClosure). */
  get closure(): boolean {
    return this.lbfgs !== null;
  }

  /** A declared parameter joins the session: its values (or none yet: ImportState), no optimizer state, no steps. */
  private declare(d: ParamDeclaration): void {
    this.params.set(d.id, {
      id: d.id,
      index: this.params.size,
      shape: [...d.shape],
      group: d.group,
      size: sizeOf(d.shape),
      state: { theta: d.values ? this.engine.create(d.values, d.shape) : null, opt: new Map(), rule: new Map(), steps: 0 },
    });
  }

  get resolvedSpec(): ResolvedSpec {
    return this.spec;
  }

  paramIds(): string[] {
    return [...this.params.keys()];
  }

  /** The parameters as declared (no values). */
  declarations(): ParamDeclaration[] {
    return [...this.params.values()].map((p) => ({ id: p.id, name: p.id, shape: [...p.shape], group: p.group, values: null }));
  }

  /** The declared shape of a parameter; InvalidArgument (naming `where`) if unknown. */
  shapeOf(id: string, where: string): number[] {
    return this.param(id, where).shape;
  }

  private groups(): Set<string> {
    return new Set([...this.params.values()].map((p) => p.group));
  }

  private param(id: string, where: string): Param {
    const p = this.params.get(id);
    if (!p) throw new InvalidArgument(`${where}: unknown parameter id '${id}'`);
    return p;
  }

  private element(g: StepGrad, index: number): string {
    const p = this.params.get(g.id);
    return elementName(index, g.rows, g.rows && p ? rowLength(p.shape, g.id) : 0);
  }

  private finite(a: Float32Array, what: string): void {
    checkFinite(a, what, (x) => this.engine.firstNonFinite(x));
  }

  /**
   * Applies one step. `grads` holds one flat gradient per parameter that has
   * one, in the parameter's row-major order. Runs on the calling thread; the
   * gRPC handlers use stepAsync.
   */
  step(step: number, grads: StepGrad[], overrides: Overrides = {}, where: Where = gradsAt): StepResult {
    this.syncLane();
    try {
      const plan = this.plan(step, grads, overrides, where, true);
      if ('replay' in plan) return plan.replay;
      const rec = this.journal?.step(step, grads, overrides);
      try {
        rec?.durableSync();
        this.apply(plan);
      } catch (e) {
        rec?.cancel();
        throw e;
      }
      return this.record(step, plan, requestDigest(grads, plan.digests!, overrides));
    } catch (e) {
      this.refused(step, e);
      throw e;
    }
  }

  /**
   * A step numbered past every number so far was refused: clients do not
   * send that number again, so with --state-dir it is journaled (a restarted
   * server then expects the number after it; see resumed()).
   */
  private refused(step: number, e: unknown): void {
    if (!this.journal || !(e instanceof MurError) || e instanceof DataLoss || !Number.isSafeInteger(step)) return;
    if (step <= Math.max(this.lastStep, this.lastRefused)) return;
    try {
      this.journal.refused(step).durableSync();
    } catch (w) {
      return; // not kept (a full disk): after a restart the next number may read as lost steps (DATA_LOSS), never as a wrong state
    }
    this.lastRefused = step;
  }

  /** The highest step number refused past every applied one (kept with durable snapshots). */
  get refusedUpTo(): number {
    return this.lastRefused;
  }

  set refusedUpTo(step: number) {
    this.lastRefused = Math.max(this.lastRefused, step);
  }

  /**
   * The same step, after any step or checkpoint operation already queued on
   * this session; its journal record (--state-dir) is on disk as --fsync
   * asks before the engine runs, and on the native engine the finiteness
   * scan and the kernel run off the event loop, so other sessions are served
   * meanwhile.
   */
  stepAsync(step: number, grads: StepGrad[], overrides: Overrides = {}, where: Where = gradsAt): Promise<StepResult> {
    return this.exclusive(async () => {
      const engine = this.engine;
      try {
        // A mixed session (groups with optimizers of their own) steps on this thread, its gradients scanned here.
        const mixed = isMixed(this.spec);
        const plan = this.plan(step, grads, overrides, where, !engine.stepAsync || mixed);
        if ('replay' in plan) return plan.replay;
        const rec = this.journal?.step(step, grads, overrides);
        let digests = plan.digests;
        try {
          await rec?.durable();
          if (!engine.stepAsync || plan.batches.length > 1 || mixed) {
            this.apply(plan);
          } else {
            const r = await engine.stepAsync(plan.batches[0].opt, plan.spec.rule, plan.jobs, plan.spec.state);
            if ('nonFinite' in r) {
              const bad = r.nonFinite;
              throw new InvalidArgument(
                `${where(bad.job)} '${grads[bad.job].id}': ${this.element(grads[bad.job], bad.index)} is ${bad.value} (must be finite)`,
              );
            }
            digests = r.digests;
          }
        } catch (e) {
          rec?.cancel();
          throw e;
        }
        return this.record(step, plan, requestDigest(grads, digests!, overrides));
      } catch (e) {
        this.refused(step, e);
        throw e;
      }
    });
  }

  /**
   * Phase 1 of a step across servers (StepRequest.validate_only): every
   * check the step would make, the finiteness scan included, in its turn
   * among this session's operations, and nothing applied or recorded: the
   * same request may then be sent as the step. The result carries no values;
   * `replayed` says the number is the last applied step's (the step would
   * replay it).
   */
  validateStep(step: number, grads: StepGrad[], overrides: Overrides = {}, where: Where = gradsAt): Promise<StepResult> {
    return this.exclusive(() => {
      const plan = this.plan(step, grads, overrides, where, true);
      return { step, replayed: 'replay' in plan, values: [] };
    });
  }

  /**
   * Runs `fn` once every operation queued before it has finished: steps and
   * checkpoint operations on one session never interleave.
   */
  exclusive<T>(fn: () => T | Promise<T>): Promise<T> {
    // The fast lane is disarmed (and what it applied taken in) before, and
    // armed again after: it never runs beside another operation.
    const run = this.queue
      .then(() => {
        this.syncLane();
        return fn();
      })
      .finally(() => this.armLane());
    this.queue = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** Everything but finiteness (optionally) checked, and the jobs laid out; or the replay of the last step. */
  private plan(step: number, grads: StepGrad[], overrides: Overrides, where: Where, checkFinite: boolean): { replay: StepResult } | Plan {
    this.checkOpen();
    if (this.lbfgs) {
      throw new InvalidArgument(
        `${this.spec.optimizer.name} steps are rounds of closure evaluations: send them with Step (StepRequest.round, loss) or the tcp plane`,
      );
    }
    if (!Number.isSafeInteger(step) || step < 1) throw new InvalidArgument(`step: ${step} must be a positive integer`);
    if (this.lastStep > 0 && step === this.lastStep) {
      // A retry of the last step is answered, not applied; another request under its number is refused.
      if (this.lastDigest !== null) {
        const digest = requestDigest(
          grads,
          grads.map((g) => this.engine.scan(g.data).digest),
          overrides,
        );
        if (digest !== this.lastDigest) {
          throw new FailedPrecondition(
            `step: ${step} was already applied with a different request (other gradients or overrides); a new step needs the next number (${step + 1})`,
          );
        }
      }
      return { replay: { step, replayed: true, values: this.values(this.lastStepIds, this.lastStepRows) } };
    }
    if (step < this.lastStep) {
      throw new FailedPrecondition(`step: ${step} is before the last applied step ${this.lastStep}`);
    }
    if (this.resumedAt !== null && step > Math.max(this.lastStep, this.lastRefused) + 1) {
      // The client was told of steps the recovered state does not hold (a journal cut at a record boundary, an older file).
      this.damage = new DataLoss(
        `session ${this.id}: after the server restarted, its --state-dir holds this session up to step ${this.lastStep}, but this client's next step is ${step}: ` +
          `acknowledged steps are missing from the session's files (cut short or replaced by an older copy), so the session is not served: ` +
          'restore it from your last checkpoint (load_state_dict into a new RemoteOptimizer)',
      );
      throw this.damage;
    }
    const spec = Object.keys(overrides).length ? withOverrides(this.spec, overrides, this.groups()) : this.spec;
    for (const g of Object.keys(overrides)) {
      if (!this.groups().has(g)) throw new InvalidArgument(`group_overrides: no parameter is in group '${g}'`);
    }
    const hypers = new Map<string, Hypers>();
    const hyp = (group: string) => {
      if (!hypers.has(group)) hypers.set(group, resolveGroup(spec, group));
      return hypers.get(group)!;
    };
    const seen = new Set<string>();
    const digests: string[] = [];
    const jobs: StepJob[] = grads.map((g, i) => {
      const p = this.param(g.id, where(i));
      if (seen.has(g.id)) throw new InvalidArgument(`${where(i)}: parameter '${g.id}' appears twice`);
      seen.add(g.id);
      if (!p.state.theta) throw new FailedPrecondition(`${where(i)}: parameter '${g.id}' has no values yet (send them with ImportState)`);
      if (g.rows) {
        checkRows(g.rows, g.data.length, p.shape, `${where(i)} '${g.id}'`);
      } else if (g.data.length !== p.size) {
        throw new InvalidArgument(
          `${where(i)} '${g.id}': ${g.data.length} elements, parameter has ${p.size} (shape ${JSON.stringify(p.shape)})`,
        );
      }
      const refusal = gradientKindRefusal(optimizerOf(spec, p.group), hyp(p.group), g.rows !== undefined);
      if (refusal) throw new InvalidArgument(`${where(i)} '${g.id}': ${refusal}`);
      if (checkFinite) {
        const { nonFinite, digest } = this.engine.scan(g.data);
        if (nonFinite >= 0)
          throw new InvalidArgument(`${where(i)} '${g.id}': ${this.element(g, nonFinite)} is ${g.data[nonFinite]} (must be finite)`);
        digests.push(digest);
      }
      return { state: p.state, shape: p.shape, grad: g.data, h: hyp(p.group), t: p.state.steps + 1, rows: g.rows, stream: p.index };
    });
    const batches: Plan['batches'] = [];
    jobs.forEach((j, i) => {
      const opt = optimizerOf(spec, this.params.get(grads[i].id)!.group);
      const b = batches.find((x) => x.opt === opt);
      if (b) b.jobs.push(j);
      else batches.push({ opt, jobs: [j] });
    });
    if (batches.length === 0) batches.push({ opt: spec.optimizer, jobs: [] });
    return { spec, jobs, batches, ids: grads.map((g) => g.id), rows: grads.map((g) => g.rows), digests: checkFinite ? digests : undefined };
  }

  /** The engine applies a planned step: every batch (one per optimizer) or none. */
  private apply(plan: Plan): void {
    if (plan.batches.length === 1) this.engine.step(plan.batches[0].opt, plan.spec.rule, plan.batches[0].jobs, plan.spec.state);
    else this.engine.stepBatches(plan.spec.rule, plan.batches, plan.spec.state);
  }

  /** After the engine applied a planned step. */
  private record(step: number, plan: Plan, digest: string): StepResult {
    for (const j of plan.jobs) j.state.steps += 1;
    this.spec = plan.spec;
    this.lastStep = step;
    this.lastStepIds = plan.ids;
    this.lastStepRows = plan.rows;
    this.lastDigest = digest;
    this.resumedAt = null;
    this.journal?.committed(this);
    return { step, replayed: false, values: this.values(this.lastStepIds, this.lastStepRows) };
  }

  /** A step's reply values: each parameter whole (a view), or the rows its row-sparse gradient touched (a copy). */
  private values(ids: string[], rows: Array<Uint32Array | undefined>): StepResult['values'] {
    return ids.map((id, i) => {
      const r = rows[i];
      if (!r) return { id, data: this.view(id) };
      const p = this.params.get(id)!;
      return { id, data: gatherRows(this.view(id), r, rowLength(p.shape, id)), rows: r };
    });
  }

  /**
   * Moves every parameter into a shared-memory arena (the same-host
   * transport) and returns it; the same arena on later calls. From then on
   * the parameters live in the arena and each step updates them there.
   */
  openArena(reserve: (gradBytes: number) => void = () => undefined, staging?: Staging): Arena {
    this.checkOpen();
    if (this.arena) {
      this.reserveStaging(staging);
      return this.arena;
    }
    const engine = this.engine;
    if (!engine.createArena || !engine.adopt) {
      throw new FailedPrecondition(`the shm transport needs the native engine (this server runs '${engine.name}'); use the grpc transport`);
    }
    const params = [...this.params.values()];
    params.forEach((p, i) => {
      if (!p.state.theta) throw new FailedPrecondition(`params[${i}] '${p.id}' has no values yet (send them with ImportState first)`);
    });
    reserve(4 * params.reduce((a, p) => a + p.size, 0));
    const arena = engine.createArena(params.map((p) => ({ id: p.id, size: p.size })));
    params.forEach((p, i) => {
      const region = arena.param(i);
      region.set(p.state.theta!.view());
      engine.dispose(p.state.theta!);
      p.state.theta = engine.adopt!(region);
    });
    this.arena = arena;
    this.lane = SessionLane.open(engine, arena, this.journal !== null);
    this.lane?.staging(false);
    this.reserveStaging(staging);
    return arena;
  }

  /**
   * Staging for the lane's speculated updates (native/src/lane.cc), once a
   * client that overlaps asks: the parameters and their state once more,
   * within --max-bytes; without it (no room, no lane) the lane stages nothing.
   */
  private reserveStaging(staging: Staging | undefined): void {
    if (!staging || !this.lane || this.stagingBytes > 0 || staging.bytes <= 0) return;
    if (!staging.reserve(staging.bytes)) return;
    this.stagingBytes = staging.bytes;
    this.syncLane(); // staging is switched while disarmed; the session re-arms when idle
    this.lane.staging(true);
    this.armLane();
  }

  /** Whether the lane stages updates while backward runs (ArenaInfo.staging). */
  get staging(): boolean {
    return this.stagingBytes > 0;
  }

  /**
   * Adds parameters and the groups they are in (torch's add_param_group),
   * all or nothing: the declarations are checked as at creation, their ids
   * must be new, `groups` may only name groups no parameter is in yet, and
   * the spec with them must resolve for every group. `reserve(spec, decls)`
   * is the byte budget's say (it throws to refuse) before anything changes.
   * The new parameters start with no state, as every parameter at creation.
   * An arena, if any, is given up (its memory cannot grow): the parameters
   * move back to the engine's own memory and OpenArena makes a new one
   * covering every parameter. Returns the new spec and the arena's gradient
   * bytes no longer held.
   */
  addParameters(
    groups: Overrides,
    decls: ParamDeclaration[],
    reserve: (spec: ResolvedSpec, decls: ParamDeclaration[]) => void = () => undefined,
  ): { spec: ResolvedSpec; releasedBytes: number } {
    this.checkOpen();
    if (decls.length === 0) throw new InvalidArgument('params: adding parameters needs at least one');
    if (this.lbfgs) {
      throw new InvalidArgument(
        `params: ${this.spec.optimizer.name} takes one parameter group, fixed at session creation (torch.optim.LBFGS): create a new session instead`,
      );
    }
    checkDeclarations(decls, (a) => this.engine.firstNonFinite(a));
    decls.forEach((d, i) => {
      if (this.params.has(d.id)) throw new InvalidArgument(`params[${i}].id: '${d.id}' is already a parameter of this session`);
    });
    const inUse = this.groups();
    for (const g of Object.keys(groups)) {
      if (inUse.has(g)) {
        throw new InvalidArgument(
          `groups.${g || '""'}: the session already has parameters in this group (change its hyperparameters with group_overrides)`,
        );
      }
      if (!decls.some((d) => d.group === g)) throw new InvalidArgument(`groups.${g || '""'}: no new parameter is in this group`);
    }
    const json = { ...specJson(this.spec), groups: { ...this.spec.groups, ...groups } };
    const spec = resolveSpec(json, new Set([...inUse, ...decls.map((d) => d.group)]));
    checkShapes(spec, decls);
    reserve(spec, decls);
    this.journal?.added(groups, decls).durableSync();
    // Commit: nothing below can be refused.
    const releasedBytes = this.closeArena();
    for (const d of decls) this.declare(d);
    this.spec = spec;
    this.journal?.committed(this);
    return { spec, releasedBytes };
  }

  /** Moves the parameters out of the arena into the engine's memory and closes it; its gradient bytes. */
  private closeArena(): number {
    const arena = this.arena;
    if (!arena) return 0;
    this.syncLane();
    this.lane?.close();
    this.lane = null;
    let gradBytes = this.stagingBytes; // the staging goes with the lane
    this.stagingBytes = 0;
    for (const p of this.params.values()) {
      gradBytes += 4 * p.size;
      const theta = p.state.theta!;
      p.state.theta = this.engine.create(theta.view(), p.shape);
      this.engine.dispose(theta);
    }
    this.arena = null;
    arena.close();
    return gradBytes;
  }

  /** A step whose gradients are in the arena's gradient regions, by arena index. */
  stepArena(
    step: number,
    indices: number[],
    overrides: Overrides = {},
    validateOnly = false,
    sparse: Array<{ tensor: number; rows: Uint32Array }> = [],
    closure?: ClosureRound,
  ): Promise<StepResult> {
    this.checkOpen();
    const arena = this.arena;
    if (!arena) {
      throw new FailedPrecondition('arena_grads: this session has no arena (call OpenArena first)', {
        reason: Reason.ArenaGone,
      });
    }
    const grads: StepGrad[] = indices.map((i, k) => {
      if (!Number.isSafeInteger(i) || i < 0 || i >= arena.tensors.length) {
        throw new InvalidArgument(`arena_grads[${k}]: ${i} is not a tensor of the arena (0..${arena.tensors.length - 1})`);
      }
      return { id: arena.tensors[i].paramId, data: arena.grad(i) };
    });
    sparse.forEach(({ tensor: i, rows }, k) => {
      const what = `arena_sparse.rows[${k}]`;
      if (!Number.isSafeInteger(i) || i < 0 || i >= arena.tensors.length) {
        throw new InvalidArgument(`${what}.tensor: ${i} is not a tensor of the arena (0..${arena.tensors.length - 1})`);
      }
      const id = arena.tensors[i].paramId;
      const region = arena.grad(i);
      const n = rows.length * rowLength(this.shapeOf(id, what), `${what} '${id}'`);
      // Packed from the region's start; more rows than the parameter has are refused by the plan's checks.
      grads.push({ id, data: region.subarray(0, Math.min(n, region.length)), rows });
    });
    const where: Where = (i) =>
      i < indices.length
        ? `arena_grads[${i}] (tensor ${indices[i]})`
        : `arena_sparse.rows[${i - indices.length}] (tensor ${sparse[i - indices.length].tensor})`;
    if (this.lbfgs) return this.stepClosure(step, closure ?? { round: 0, loss: undefined }, grads, overrides, validateOnly, where);
    return validateOnly ? this.validateStep(step, grads, overrides, where) : this.stepAsync(step, grads, overrides, where);
  }

  /**
   * One round of an L-BFGS step (docs/update-rules.md, "lbfgs"; the round
   * trips: session/lbfgs.ts), in its turn among this session's operations.
   * Answers `evaluate` with the next point (every parameter), the step's
   * result when it ends, a replay of the last round taken, or a `restart`
   * (the step this round belongs to is not in progress: the session is as
   * before it).
   */
  stepClosure(
    step: number,
    closure: ClosureRound,
    grads: StepGrad[],
    overrides: Overrides = {},
    validateOnly = false,
    where: Where = gradsAt,
  ): Promise<StepResult> {
    return this.exclusive(async () => {
      let r: ReturnType<Session['closureRound']>;
      try {
        r = this.closureRound(step, closure, grads, overrides, where, validateOnly, this.journal !== null);
      } catch (e) {
        if (!validateOnly) this.refused(step, e); // a number past every one so far: kept, as for any step
        throw e;
      }
      if ('result' in r) return r.result;
      const rec = this.journal?.closureStep(step, overrides, r.outcome.rounds);
      try {
        await rec?.durable();
      } catch (e) {
        rec?.cancel();
        this.lbfgs!.rollback(); // the step is not kept: the client's retry of this round is answered with a restart
        throw e;
      }
      return this.closureCommit(step, r.outcome, r.digest);
    });
  }

  /** Replays a journaled L-BFGS step (recovery): its rounds, in order, then the commit. */
  replayClosureStep(step: number, overrides: Overrides, rounds: RoundInput[]): void {
    for (const [i, input] of rounds.entries()) {
      const r = this.closureRound(step, { round: i, loss: input.loss }, input.grads, overrides, gradsAt, false, false);
      if ('outcome' in r) {
        if (i !== rounds.length - 1) throw new Error(`step ${step} ended at round ${i} of ${rounds.length}`);
        this.closureCommit(step, r.outcome, r.digest);
        return;
      }
      if (r.result.restart) throw new Error(`step ${step} round ${i}: ${r.result.restart}`);
    }
    throw new Error(`step ${step} did not end after its ${rounds.length} rounds`);
  }

  private closureValues(): StepResult['values'] {
    return [...this.params.keys()].map((id) => ({ id, data: this.view(id) }));
  }

  private closureRound(
    step: number,
    { round, loss }: ClosureRound,
    grads: StepGrad[],
    overrides: Overrides,
    where: Where,
    validateOnly: boolean,
    keep: boolean,
  ): { result: StepResult } | { outcome: Extract<RoundOutcome, { kind: 'done' }>; digest: string } {
    this.checkOpen();
    const run = this.lbfgs!;
    if (!Number.isSafeInteger(step) || step < 1) throw new InvalidArgument(`step: ${step} must be a positive integer`);
    if (!Number.isSafeInteger(round) || round < 0) throw new InvalidArgument(`round: ${round} must be a whole number`);
    grads.forEach((g, i) => {
      if (g.rows) throw new InvalidArgument(`${where(i)} '${g.id}': ${this.spec.optimizer.name} takes dense gradients only`);
    });
    const digestOf = () => {
      const digests = grads.map((g) => this.engine.scan(g.data).digest);
      return `r${round}:${roundDigest(
        round,
        loss ?? NaN,
        digests,
        grads.map((g) => g.id),
        canonicalJson(overrides),
      )}`;
    };
    const cur = run.current;
    const result = (extra: Partial<StepResult>): { result: StepResult } => ({
      result: { step, replayed: false, values: validateOnly ? [] : this.closureValues(), round, ...extra },
    });
    if (cur?.step !== step && this.lastStep > 0 && step === this.lastStep) {
      // The last step, done: a retry of its last round is answered again.
      if (this.lastDigest !== null && digestOf() !== this.lastDigest) {
        throw new FailedPrecondition(
          `step: ${step} was already applied, ending with another round or request than this round ${round}; a new step needs the next number (${step + 1})`,
        );
      }
      return result({ replayed: true, evaluate: false });
    }
    if (step < this.lastStep) throw new FailedPrecondition(`step: ${step} is before the last applied step ${this.lastStep}`);
    if (cur?.step === step) {
      if (round === cur.round) {
        if (digestOf() !== cur.digest) {
          throw new FailedPrecondition(
            `round: ${round} of step ${step} was already taken with a different request (loss, gradients or overrides)`,
          );
        }
        return result({ replayed: true, evaluate: true });
      }
      if (round !== cur.round + 1) throw run.outOfOrder(step, round);
    } else {
      if (this.resumedAt !== null && step > Math.max(this.lastStep, this.lastRefused) + 1) {
        this.damage = new DataLoss(
          `session ${this.id}: after the server restarted, its --state-dir holds this session up to step ${this.lastStep}, but this client's next step is ${step}: ` +
            "acknowledged steps are missing from the session's files, so the session is not served: restore it from your last checkpoint (load_state_dict into a new RemoteOptimizer)",
        );
        throw this.damage;
      }
      if (round > 0 || cur) {
        const why = cur
          ? `step ${cur.step} was still in progress (round ${cur.round}) when round ${round} of step ${step} came: it is rolled back`
          : `step ${step} is not in progress on the server (it restarted in the middle of it, or the step was rolled back)`;
        if (!validateOnly) run.rollback();
        return result({
          round: 0,
          evaluate: true,
          restart: `${why}; the session is as before that step: evaluate the closure at these parameters and send round 0 of step ${step} again`,
        });
      }
    }
    const spec = cur ? this.spec : Object.keys(overrides).length ? withOverrides(this.spec, overrides, this.groups()) : this.spec;
    for (const g of Object.keys(overrides)) {
      if (!this.groups().has(g)) throw new InvalidArgument(`group_overrides: no parameter is in group '${g}'`);
    }
    const lossValue = run.check(grads, loss, where);
    grads.forEach((g, i) => {
      const { nonFinite } = this.engine.scan(g.data);
      if (nonFinite >= 0) throw new InvalidArgument(`${where(i)} '${g.id}': element ${nonFinite} is ${g.data[nonFinite]} (must be finite)`);
    });
    if (validateOnly) return result({ evaluate: true });
    const digest = digestOf();
    const input: RoundInput = { loss: lossValue, grads: grads.map((g) => ({ id: g.id, data: keep ? Float32Array.from(g.data) : g.data })) };
    const outcome = cur ? run.feed(input, digest, keep) : run.start(step, spec, overrides, input, digest, keep);
    if (outcome.kind === 'done') return { outcome, digest };
    return result({ evaluate: true, round: outcome.round });
  }

  private closureCommit(step: number, outcome: Extract<RoundOutcome, { kind: 'done' }>, digest: string): StepResult {
    this.lbfgs!.finish();
    for (const p of this.params.values()) p.state.steps += 1;
    this.spec = outcome.spec;
    this.lastStep = step;
    this.lastStepIds = [...this.params.keys()];
    this.lastStepRows = [];
    this.lastDigest = digest;
    this.resumedAt = null;
    this.journal?.committed(this);
    return { step, replayed: false, values: this.closureValues(), evaluate: false, round: outcome.round };
  }

  /** Whether steps may arrive through the fast lane, without a call. */
  get hasLane(): boolean {
    return this.lane !== null;
  }

  /** Steps the fast lane applied and the session took in (syncLane) so far. */
  get laneSteps(): number {
    return this.laneStepsTaken;
  }

  /** Stops the fast lane and takes in the steps it applied. */
  private syncLane(): void {
    const r = this.lane?.disarm();
    if (!r) return;
    for (const { id, steps } of r.applied) this.params.get(id)!.state.steps += steps;
    if (r.lastStep > this.lastStep) {
      // The lane takes only the next step number: one request per number.
      this.onLaneSteps?.(r.lastStep - this.lastStep);
      this.laneStepsTaken += r.lastStep - this.lastStep;
      this.lastStep = r.lastStep;
      this.lastStepIds = r.lastIds;
      this.lastStepRows = [];
      this.lastDigest = null; // shared memory loses no reply: a retry by RPC of that number replays
    }
  }

  /** Arms the fast lane with every parameter, when it can take steps on its own. */
  private armLane(): void {
    // SparseAdam takes row-sparse steps only, and those go by RPC: the lane steps whole regions; L-BFGS steps are rounds.
    if (this.disposed || this.journal || this.spec.optimizer.sparse === 'only' || this.lbfgs) return;
    this.lane?.arm(this.spec, (id) => this.params.get(id)!, this.lastStep);
  }

  private view(id: string): Float32Array {
    return this.params.get(id)!.state.theta!.view();
  }

  /** The last applied step's request (its parameter ids and digest), kept with durable snapshots. */
  get lastRequest(): { ids: string[]; digest: string | null } {
    return { ids: [...this.lastStepIds], digest: this.lastDigest };
  }

  set lastRequest(r: { ids: string[]; digest: string | null }) {
    this.lastStepIds = [...r.ids];
    this.lastStepRows = []; // a replay after a restart answers whole parameters
    this.lastDigest = r.digest;
  }

  header(): SessionHeader {
    this.checkOpen();
    this.syncLane();
    return {
      spec: this.spec,
      stepCounts: new Map([...this.params].map(([id, p]) => [id, p.state.steps])),
      lastStep: this.lastStep,
    };
  }

  /** Every tensor of the session, parameters first, in a stable order. */
  *exportTensors(): Generator<SlotTensor> {
    this.checkOpen();
    this.syncLane();
    if (!this.lbfgs) {
      for (const [id, p] of this.params) yield* paramTensors(id, p.state);
      return;
    }
    // L-BFGS: the parameters and state before a step in progress; the state as slots of the first parameter (as torch keeps it).
    const { x, state } = this.lbfgs.committed();
    let off = 0;
    for (const [id, p] of this.params) {
      for (const t of paramTensors(id, p.state)) yield t.slot === '' ? { ...t, data: x.slice(off, off + p.size) } : t;
      off += p.size;
    }
    const first = this.params.keys().next();
    if (!first.done) for (const t of stateSlots(state, off)) yield { paramId: first.value, ...t };
  }

  /**
   * Replaces what a checkpoint carries, all or nothing: every tensor is
   * checked before any is written. Slots not sent keep their values.
   */
  importState(header: Partial<SessionHeader> | undefined, tensors: SlotTensor[]): number {
    this.checkOpen();
    this.syncLane();
    // L-BFGS: its state's slots (on the first parameter) are checked and taken apart from the others.
    const firstId = this.params.keys().next().value;
    const isLbfgsSlot = (t: SlotTensor) =>
      this.lbfgs !== null && t.paramId === firstId && (LBFGS_SLOTS as readonly string[]).includes(t.slot);
    const lbfgsSlots = new Map(tensors.filter(isLbfgsSlot).map((t) => [t.slot, t.data]));
    tensors = tensors.filter((t) => !isLbfgsSlot(t));
    checkImport(this.params, this.spec, header, tensors, (a, what) => this.finite(a, what));
    const lbfgsState =
      this.lbfgs && lbfgsSlots.size > 0
        ? stateFromSlots(
            lbfgsSlots,
            this.lbfgs.size,
            resolveGroup(this.spec, this.lbfgs.group).history_size as number,
            (slot) => `'${firstId}' slot '${slot}'`,
          )
        : null;
    if (lbfgsState) for (const [slot, a] of lbfgsSlots) this.finite(a, `'${firstId}' slot '${slot}'`);
    // The session keeps its own state format: a checkpoint's values arrive as float32 and are narrowed to it.
    const spec = header?.spec
      ? resolveGroups(
          { ...header.spec, state: this.spec.state },
          [...this.params.values()].map((p) => p.group),
        )
      : this.spec;
    const scalar = new Set(this.spec.optimizer.slots.filter((d) => d.scalar).map((d) => d.name));
    this.journal
      ?.imported(header, [...tensors, ...[...lbfgsSlots].map(([slot, data]) => ({ paramId: firstId!, slot, data }))])
      .durableSync();
    // Commit. An import ends an L-BFGS step in progress (rolled back) and replaces its state when it carries one.
    this.lbfgs?.rollback();
    if (lbfgsState) this.lbfgs!.state = lbfgsState;
    for (const t of tensors) {
      const p = this.params.get(t.paramId)!;
      const shape = t.slot === '' || t.data.length === p.size ? p.shape : [t.data.length];
      if (t.slot === '') {
        if (p.state.theta) this.engine.write(p.state.theta, t.data);
        else p.state.theta = this.engine.create(t.data, shape);
        continue;
      }
      const { map, name } = slotRef(p.state, t.slot);
      const old = map.get(name);
      if (old && old.size === t.data.length) {
        this.engine.write(old, t.data);
      } else {
        if (old) this.engine.dispose(old);
        // One-element slots and those kept float32 (SlotDecl.float32: Schedule-Free's z, Adafactor's) stay float32.
        const decl = optimizerOf(this.spec, p.group).slots.find((d) => d.name === name);
        const dtype = map === p.state.opt && !scalar.has(name) && decl?.float32 !== true ? this.spec.state.dtype : 'float32';
        // q8: the slot's own map (unsigned for one that is never negative).
        const nonNegative = decl?.nonNegative === true;
        map.set(name, this.engine.create(t.data, shape, dtype, nonNegative));
      }
    }
    this.spec = spec;
    for (const [id, n] of header?.stepCounts ?? []) this.params.get(id)!.state.steps = n;
    if (header?.lastStep !== undefined) {
      this.lastStep = header.lastStep;
      this.lastStepIds = [];
      this.lastStepRows = [];
      this.lastDigest = null; // a checkpoint does not carry the request: its step number replays
      this.lastRefused = 0;
    }
    this.resumedAt = null;
    this.journal?.committed(this);
    return tensors.length;
  }

  /**
   * Recovered from --state-dir: until its next step is applied, a step
   * numbered past lastStep + 1 means acknowledged steps were lost on disk.
   */
  resumed(): void {
    this.resumedAt = this.lastStep;
  }

  private checkOpen(): void {
    if (this.disposed) throw new FailedPrecondition(`session ${this.id} is closed`);
    if (this.damage) throw this.damage;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.journal = null;
    this.syncLane();
    this.lane?.close();
    this.lane = null;
    for (const p of this.params.values()) disposeParam(this.engine, p.state);
    this.arena?.close();
    this.arena = null;
    this.params.clear();
  }
}

/**
 * What an L-BFGS session must be (torch.optim.LBFGS): one parameter group,
 * no other optimizer beside it, and a line search only under a rule whose
 * path has a tangent (the strong Wolfe conditions are stated along the path
 * x(t) the rule moves on: x + t d for the additive rule, optimizers/lbfgsPath.ts
 * for the others).
 */
function checkClosureSpec(spec: ResolvedSpec, decls: ParamDeclaration[]): void {
  const name = spec.optimizer.closure ? spec.optimizer.name : Object.values(spec.groupOptimizers).find((o) => o.closure)!.name;
  for (const [g, o] of Object.entries(spec.groupOptimizers)) {
    throw new InvalidArgument(
      `group_optimizers.${g || '""'}: ${o.name} beside ${spec.optimizer.name}: ${name} takes the whole session (one parameter group)`,
    );
  }
  const groups = [...new Set(decls.map((d) => d.group))];
  if (groups.length > 1) {
    const i = decls.findIndex((d) => d.group !== decls[0].group);
    throw new InvalidArgument(
      `params[${i}] '${decls[i].name || decls[i].id}': group '${decls[i].group}' is a second parameter group (the first is '${decls[0].group}'); ` +
        `${name} takes one parameter group (torch.optim.LBFGS refuses per-parameter options)`,
    );
  }
  const group = groups[0] ?? '';
  const h = resolveGroup(spec, group);
  if (h.line_search_fn === 'strong_wolfe' && spec.rule.name !== 'additive' && !isPathRule(spec.rule.name)) {
    throw new InvalidArgument(
      `${group === '' ? 'defaults' : `groups.${group}`}.line_search_fn: strong_wolfe needs the tangent of the rule's path (optimizers/lbfgsPath.ts), which the ${spec.rule.name} rule does not define: use line_search_fn none or one of the rules additive, ${PATH_RULES.join(', ')}`,
    );
  }
}

/** Checks that every group in use resolves under `spec`. */
function resolveGroups(spec: ResolvedSpec, groups: string[]): ResolvedSpec {
  for (const g of new Set(groups)) resolveGroup(spec, g);
  return spec;
}
