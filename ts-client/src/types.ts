// The client's vocabulary: what a session is made of and what a step carries.

/** Hyperparameters by name; a pair may hold null where the optimizer allows it (Adafactor's eps: [null, 1e-3]); a choice is a string (Muon's adjust_lr_fn, L-BFGS's line_search_fn). */
export type Hypers = Record<string, number | boolean | string | Array<number | null>>;

/** How the server stores the optimizer's per-element state (GetCapabilities.stateDtypes lists what it takes). */
export type StateDtype = 'float32' | 'bfloat16' | 'q8';

export interface Spec {
  optimizer: string;
  rule: string;
  defaults?: Hypers;
  groups?: Record<string, Hypers>;
  /**
   * "float32" (default), "bfloat16" (half the state bytes, computed in
   * float32 and stored with stochastic rounding seeded by stateSeed, default
   * 0) or "q8" (8-bit block-quantised, 1 + 4/256 bytes an element, computed
   * in float32). Checkpoints carry the values as float32 either way.
   */
  stateDtype?: StateDtype;
  stateSeed?: number;
  /**
   * Groups stepped by an optimizer other than `optimizer`, by group name (the
   * Muon recipe: `{ optimizer: 'muon', groupOptimizers: { rest: 'adamw' } }`).
   * Each such group's hyperparameters (in `groups`) are that optimizer's.
   */
  groupOptimizers?: Record<string, string>;
}

export interface ParamInit {
  id: string;
  name?: string;
  shape: number[];
  values: Float32Array;
  group?: string;
}

/** Tensors by parameter id (a step's gradients in, its new parameter values out). */
export type Values = Map<string, Float32Array>;
/** Hyperparameters of this step only, by group. */
export type Overrides = Record<string, Hypers>;

/**
 * How tensors travel. "shm": the session's shared-memory arena on the
 * server's host (gradients are written into it and parameters read from it
 * with pwrite/pread on the server's memfd; gRPC carries only control);
 * "tcp": a step's bytes on a plain TCP connection (TLS when the channel uses
 * TLS) to the server's data port, beside gRPC (dataPlane.ts; for a server on
 * another host); "grpc": tensors inside messages; "auto" (default): shm when
 * the server offers it and its arena opens from here (same host, same user),
 * else tcp when the server has a data port that answers from here, else grpc.
 */
export type Transport = 'auto' | 'shm' | 'tcp' | 'grpc';
export const TRANSPORTS: Transport[] = ['auto', 'shm', 'tcp', 'grpc'];

export interface SessionOptions {
  transport?: Transport;
}

/**
 * A session's complete state as ExportState gives it: the spec as it is now,
 * each parameter's optimizer step count, the last step number applied, and
 * every tensor (parameters and optimizer slots). `session.restore(cp)` puts it
 * back; a resumed optimizer continues exactly as an uninterrupted one.
 */
export interface Checkpoint {
  spec?: Spec;
  /** Optimizer steps applied to each parameter (Adam's bias correction counts them). */
  stepCounts: Record<string, number>;
  /** The last client step number applied (0: none). */
  lastStep: number;
  tensors: SlotValues[];
}

export interface SlotValues {
  paramId: string;
  /** "" for the parameter; an optimizer slot ("exp_avg"), or "rule.<slot>". */
  slot: string;
  values: Float32Array;
}
