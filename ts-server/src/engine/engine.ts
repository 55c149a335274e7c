// The engine contract: where a session's tensors live and how one step is
// computed. Two implementations hold every parameter to the same tests:
//   native (engine/native.ts): Float32Arrays updated in place by fused C++
//     kernels, one pass over memory per optimizer x rule;
//   tfjs (engine/tfjs.ts): tf.Variables on a tfjs backend (tensorflow,
//     tensorflow-gpu, wasm, cpu).
// The session (session/session.ts) validates a step whole, then calls
// Engine.step, which must either apply every job or throw having changed
// nothing.
import type { Arena } from '../transport/arena';
import type { StateDtype, StateFormat } from './stateDtype';
import type { Hypers, OptimizerDef, RuleDef } from './types';

/** One stored tensor: a parameter or a state slot. */
export interface Slot {
  readonly size: number;
  /** How the engine stores it (a parameter: always float32). */
  readonly dtype?: StateDtype;
  /** The current values, without a copy where the engine can (valid until the next step). */
  view(): Float32Array;
  /** A copy of the current values. */
  read(): Float32Array;
}

/** Everything the engine stores for one parameter. */
export interface ParamState {
  theta: Slot | null;
  opt: Map<string, Slot>;
  rule: Map<string, Slot>;
  /** Steps applied to this parameter (its t is steps + 1 in the next one). */
  steps: number;
}

export interface StepJob {
  state: ParamState;
  shape: number[];
  grad: Float32Array;
  h: Hypers;
  /** This parameter's step number, from 1. */
  t: number;
  /**
   * A row-sparse gradient's rows (strictly increasing, checked): `grad` holds
   * those rows of a [shape[0], ...] gradient, packed, and the step reads and
   * writes only those rows of theta and of the non-scalar slots.
   */
  rows?: Uint32Array;
  /** The parameter's index in its session (declaration order): its bfloat16 rounding stream. */
  stream: number;
}

/** What a fast lane applied between arm and disarm. */
export interface LaneReport {
  /** Steps applied per arena tensor. */
  applied: number[];
  /** The last step number it applied (the one it was armed with if none). */
  lastStep: number;
  /** The arena indices of that step. */
  lastIndices: number[];
}

/** A fast lane: armed with every arena tensor as a job, it steps them when the client rings. */
export interface FastLane {
  /** False (and nothing armed) while some slot has yet to be created. */
  arm(opt: OptimizerDef, rule: RuleDef, jobs: StepJob[], lastStep: number, state?: StateFormat): boolean;
  disarm(): LaneReport;
  /**
   * Whether the lane computes each queued gradient's update into staging while
   * backward runs, committed by the step (native/src/lane.cc); off frees it.
   */
  staging(on: boolean): void;
  close(): void;
}

/** Where a gradient is not finite: job (index into the step's jobs), element, value. */
export interface NonFinite {
  job: number;
  index: number;
  value: number;
}

export interface EngineMemory {
  /** Tensors or buffers the engine holds. */
  buffers: number;
  bytes: number;
}

export interface Engine {
  /** 'native' or the tfjs backend's name. */
  readonly name: string;
  /** Index of the first NaN or infinity, or -1. */
  firstNonFinite(a: Float32Array): number;
  /** bfloat16 bytes (little-endian, any alignment) widened into dst; engines without it: wire/tensors.ts's loop. */
  widenBf16?(src: Uint8Array, dst: Float32Array): void;
  /** The same for float16 (IEEE binary16). */
  widenF16?(src: Uint8Array, dst: Float32Array): void;
  /** The same, and a digest of the bytes (to tell a retried request from a different one), in one pass. */
  scan(a: Float32Array): { nonFinite: number; digest: string };
  /**
   * New storage holding a copy of `values`; `dtype` "bfloat16" or "q8" (an
   * optimizer slot of such a session) narrows them where the engine stores
   * it; `nonNegative` (the slot's SlotDecl.nonNegative) picks q8's unsigned map.
   */
  create(values: Float32Array, shape: number[], dtype?: StateDtype, nonNegative?: boolean): Slot;
  /** The state dtypes this engine stores as named (the others it keeps in float32). */
  readonly storedStateDtypes: readonly StateDtype[];
  /** Whether optimizer `name`'s kernels take state stored as `dtype` (absent: every optimizer does). */
  takesStateDtype?(name: string, dtype: StateDtype): boolean;
  /** Overwrites a slot of the same size (narrowed, to nearest, if it is bfloat16; quantised if q8). */
  write(slot: Slot, values: Float32Array): void;
  dispose(slot: Slot): void;
  /**
   * A slot over memory the caller owns, without a copy (a shared-memory
   * arena region), or undefined where the engine cannot compute in place in
   * foreign memory (the tfjs engines).
   */
  adopt?(memory: Float32Array): Slot;
  /** A shared-memory arena for these parameters (engines that can adopt its memory). */
  createArena?(params: Array<{ id: string; size: number }>): Arena;
  /** The arena's fast lane: steps rung through shared memory, no RPC (native/src/lane.cc). */
  createLane?(arena: Arena): FastLane;
  /**
   * Applies one step to every job: creates the slots the optimizer and rule
   * declare when first needed, computes, and commits. Called only after the
   * session validated the step; throws having changed nothing, or applies
   * every job.
   */
  step(opt: OptimizerDef, rule: RuleDef, jobs: StepJob[], state?: StateFormat): void;
  /**
   * One step of a session whose groups have optimizers of their own: every
   * batch (one optimizer's jobs) or, on a refusal, none; `state` is the
   * session's, the same for every batch.
   */
  stepBatches(rule: RuleDef, batches: Array<{ opt: OptimizerDef; jobs: StepJob[] }>, state?: StateFormat): void;
  /**
   * The same off the event loop (engines that can), with the finiteness
   * check of every gradient included: resolves the first non-finite element
   * (nothing applied) or null (applied).
   */
  stepAsync?(
    opt: OptimizerDef,
    rule: RuleDef,
    jobs: StepJob[],
    state?: StateFormat,
  ): Promise<{ nonFinite: NonFinite } | { digests: string[] }>;
  memory(): EngineMemory;
}

let current: Engine | null = null;

/** The engine sessions use; set once at start-up by engine/backend.ts. */
export function currentEngine(): Engine {
  if (!current) throw new Error('no engine: call initBackend() first');
  return current;
}

export function setEngine(e: Engine): void {
  current = e;
}

/** Disposes every slot of a parameter. */
export function disposeParam(engine: Engine, p: ParamState): void {
  if (p.theta) engine.dispose(p.theta);
  for (const s of p.opt.values()) engine.dispose(s);
  for (const s of p.rule.values()) engine.dispose(s);
  p.theta = null;
  p.opt.clear();
  p.rule.clear();
}
