// The native engine: parameters and slots are Float32Arrays, updated in
// place by the addon's fused kernels (ts-server/native, built by
// `make native-engine`): one pass over memory per optimizer x rule, SIMD
// chosen at run time, both cores for large steps.
//
// A step is all-or-nothing: the session has validated ids, shapes and
// finiteness before it gets here; this file lays out every job and creates
// missing slots off to the side; the addon checks the layout and prepares
// every job before it writes anything, and its element loop has no failure
// path. Only then are the new slots committed into the parameter's maps.
import * as path from 'path';
import type { Engine, EngineMemory, FastLane, LaneReport, NonFinite, Slot, StepJob } from './engine';
import { Arena } from '../transport/arena';
import { num } from './hypers';
import { dequantise, quantise } from './q8';
import { FLOAT32_STATE, narrowBf16, slotBytes, widenBf16, type StateDtype, type StateFormat } from './stateDtype';
import { slotShape, slotSize } from './slots';
import type { HyperSpec, HyperValue, Hypers, OptimizerDef, RuleDef, SlotDecl } from './types';

interface Descriptor {
  name: string;
  hypers: string[];
  slots: Array<{ name: string; scalar: boolean; unsigned: boolean; wide: boolean }>;
}

export interface NativeAddon {
  describe(): {
    optimizers: Descriptor[];
    rules: Descriptor[];
    target: string;
    threads: number;
    /** Whether the finiteness scan prefetches ahead (native/src/prefetch.h: the CPU's vendor, or MUR_SCAN_PREFETCH). */
    scanPrefetch: boolean;
    layout: {
      stride: number;
      maxOptSlots: number;
      maxRuleSlots: number;
      hyperBlock: number;
      optHyper: number;
      ruleHyper: number;
      rowsHyper: number;
    };
  };
  step(...args: StepArgs): void;
  /** Off the main thread: scans every gradient first; resolves the first non-finite one (nothing written) or their digests. */
  stepAsync(...args: StepArgs): Promise<{ nonFinite: [number, number] } | { digests: string[] }>;
  scan(a: Float32Array): [number, string];
  firstNonFinite(a: Float32Array): number;
  sumSquares(a: Float32Array): number;
  widenBf16(src: Uint8Array, dst: Float32Array): void;
  widenF16(src: Uint8Array, dst: Float32Array): void;
  /** The limit kernel of make bench-engine (native/src/limit.cc): m += g, v += g, p -= g. */
  limit(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array): void;
  /** The rule kernels' exp or tanh over an array (native/src/transcendental.cc), for tests. */
  math(fn: 'exp' | 'exp_bounded' | 'tanh', x: Float32Array, out: Float32Array): void;
  setThreads(n: number): number;
  threads(): number;
  arenaCreate(bytes: number): { buffer: ArrayBuffer; fd: number };
  /** n zeros, in a 2 MiB-aligned mapping with MADV_HUGEPAGE from 2 MiB (native/src/state.cc). */
  allocFloats(n: number): Float32Array;
  /** n bfloat16 zeros, the same way (bfloat16 state). */
  allocBf16(n: number): Uint16Array;
  /** A q8 slot of n elements, zero bytes (native/src/kernel.h Q8Bytes: n codes, then a float32 absmax per 256). */
  allocQ8(n: number): Uint8Array;
  /** The q8 map (native/src/q8map.h): its 256 values and thresholds, and whether the kernels use its bucket table. */
  q8Map(unsigned: boolean): [Float32Array, Float32Array, boolean];
  /** The kernels' codes of x (absmax 1: native/src/q8-inl.h), for tests. */
  q8Codes(x: Float32Array, unsigned: boolean): Uint8Array;
  arenaCloseFd(fd: number): void;
  laneCreate(arena: ArrayBuffer): LaneHandle;
  laneArm(
    lane: LaneHandle,
    lastStep: number,
    opt: number,
    rule: number,
    buffers: Buffers,
    hypers: Float64Array,
    fresh: Uint32Array,
    dtype?: number,
    streams?: Uint32Array,
  ): void;
  laneDisarm(lane: LaneHandle): LaneReport;
  laneStaging(lane: LaneHandle, on: boolean): void;
  laneClose(lane: LaneHandle): void;
}

/** A step's buffers, kStride per job: Float32Arrays, Uint16Arrays (bfloat16 slots), Uint8Arrays (q8 slots) or null. */
type Buffers = Array<Float32Array | Uint16Array | Uint8Array | null>;
type SlotData = Float32Array | Uint16Array | Uint8Array;

/**
 * The addon's step and stepAsync arguments: dtype, streams for bfloat16 state (native/src/bf16-inl.h); rows (one
 * per job) a row-sparse job's row indices, or null (kernel.h: Job::rows).
 */
type StepArgs = [
  opt: number,
  rule: number,
  buffers: Buffers,
  hypers: Float64Array,
  fresh: Uint32Array,
  dtype?: number,
  streams?: Uint32Array,
  rows?: Array<Uint32Array | null>,
];

/** The addon's state dtype ids (native/src/kernel.h StateDtype). */
const DTYPE_ID: Record<StateDtype, number> = { float32: 0, bfloat16: 1, q8: 2 };

/** An opaque handle of the addon's fast lane (native/src/lane.cc). */
type LaneHandle = { readonly __lane: unique symbol };

export const ADDON_PATH = path.join(__dirname, '../../../native/build/Release/mur_native.node');

let addon: NativeAddon | null = null;
let loadError: string | null = null;

/** The addon, or null (with the reason in nativeLoadError()). */
export function loadNative(): NativeAddon | null {
  if (addon || loadError) return addon;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- a native addon loaded at run time from a computed path, optional (its absence is reported)
    addon = require(ADDON_PATH) as NativeAddon;
  } catch (e) {
    loadError = (e as Error).message.split('\n')[0];
  }
  return addon;
}

export function nativeLoadError(): string | null {
  loadNative();
  return loadError;
}

/** A q8 slot's element count and map (engine/q8.ts). */
interface Q8Info {
  n: number;
  nonNegative: boolean;
}

class NativeSlot implements Slot {
  /**
   * @param borrowed memory the engine does not own (an arena region)
   * @param q8 set for a q8 slot (data: its bytes)
   */
  constructor(
    readonly data: SlotData,
    readonly borrowed = false,
    readonly q8: Q8Info | null = null,
  ) {}
  get dtype(): StateDtype {
    return this.q8 ? 'q8' : this.data instanceof Uint16Array ? 'bfloat16' : 'float32';
  }
  get size(): number {
    return this.q8 ? this.q8.n : this.data.length;
  }
  view(): Float32Array {
    if (this.q8) return dequantise(this.data as Uint8Array, this.q8.n, this.q8.nonNegative);
    return this.data instanceof Uint16Array ? widenBf16(this.data) : (this.data as Float32Array);
  }
  read(): Float32Array {
    if (this.q8) return dequantise(this.data as Uint8Array, this.q8.n, this.q8.nonNegative);
    return this.data instanceof Uint16Array ? widenBf16(this.data) : (this.data as Float32Array).slice();
  }
}

const dataOf = (s: Slot) => (s as NativeSlot).data;
/** A parameter's values (always float32). */
const floatsOf = (s: Slot) => (s as NativeSlot).data as Float32Array;

interface Layout {
  opt: number;
  rule: number;
  dtype: number;
  buffers: Buffers;
  hypers: Float64Array;
  fresh: Uint32Array;
  streams: Uint32Array;
  created: Array<{ into: Map<string, Slot>; name: string; slot: NativeSlot }>;
  /** The jobs' rows, when some job is row-sparse (else the addon's dense call). */
  rows?: Array<Uint32Array | null>;
}

/** The addon's arguments of a step laid out. */
const stepArgs = (l: Layout): StepArgs =>
  l.rows
    ? [l.opt, l.rule, l.buffers, l.hypers, l.fresh, l.dtype, l.streams, l.rows]
    : [l.opt, l.rule, l.buffers, l.hypers, l.fresh, l.dtype, l.streams];

/**
 * A hyperparameter by its flattened name: "lr", "betas.1"; booleans as 0/1, null (Adafactor's eps1) as NaN,
 * a choice (Muon's adjust_lr_fn) by its index in `choices`.
 */
function flatValue(h: Hypers, name: string, specs: readonly HyperSpec[] = []): number {
  const dot = name.indexOf('.');
  const v: HyperValue | null | undefined =
    dot < 0 ? h[name] : (h[name.slice(0, dot)] as Array<number | null> | undefined)?.[Number(name.slice(dot + 1))];
  if (typeof v === 'boolean') return v ? 1 : 0;
  if (v === null) return NaN;
  if (typeof v === 'string') {
    const i = specs.find((s) => s.name === name)?.choices?.indexOf(v) ?? -1;
    if (i < 0) throw new Error(`native engine: hyperparameter '${name}' has no choice ${JSON.stringify(v)}`);
    return i;
  }
  if (typeof v !== 'number') throw new Error(`native engine: hyperparameter '${name}' is ${JSON.stringify(v)}`);
  return v;
}

/**
 * An entry of the hyperparameter block taken from the parameter's shape, for
 * optimizers that reduce rows and columns (Adafactor): "#factored" is 1 for
 * a tensor of >= 2 dims, "#rows" and "#cols" its last two dimensions (all 0
 * for fewer dims).
 */
function shapeValue(shape: number[], name: string): number {
  if (name === '#factored') return shape.length >= 2 ? 1 : 0;
  if (shape.length < 2) return 0;
  if (name === '#rows') return shape[shape.length - 2];
  if (name === '#cols') return shape[shape.length - 1];
  throw new Error(`native engine: no shape entry '${name}'`);
}

/** Checks that the addon's slot list is the TypeScript definition's, in order. */
function sameSlots(what: string, ts: SlotDecl[], native: Descriptor['slots']): void {
  // [1]: one element; +: never negative (the unsigned q8 map); =: float32 whatever the state dtype
  const a = ts.map((s) => `${s.name}${s.scalar ? '[1]' : ''}${s.nonNegative ? '+' : ''}${s.float32 ? '=' : ''}`).join(',');
  const b = native.map((s) => `${s.name}${s.scalar ? '[1]' : ''}${s.unsigned ? '+' : ''}${s.wide ? '=' : ''}`).join(',');
  if (a !== b) throw new Error(`native engine: ${what} slots differ: TypeScript [${a}], addon [${b}]`);
}

export class NativeEngine implements Engine {
  readonly name = 'native';
  readonly storedStateDtypes = ['float32', 'bfloat16', 'q8'] as const;
  private readonly ids = new Map<string, number>();
  private readonly descs = new Map<string, Descriptor>();
  private readonly layout_: ReturnType<NativeAddon['describe']>['layout'];
  private live = { buffers: 0, bytes: 0 };

  constructor(
    private readonly addon: NativeAddon,
    optimizers: readonly OptimizerDef[],
    rules: readonly RuleDef[],
  ) {
    const d = addon.describe();
    this.layout_ = d.layout;
    const index = (kind: string, list: Descriptor[], defs: ReadonlyArray<{ name: string; slots: SlotDecl[] }>) => {
      for (const def of defs) {
        if ('closure' in def && def.closure) continue; // L-BFGS: stepped by the session in TypeScript, no kernel
        const i = list.findIndex((x) => x.name === def.name);
        if (i < 0) throw new Error(`native engine: the addon has no ${kind} '${def.name}'`);
        sameSlots(`${kind} '${def.name}'`, def.slots, list[i].slots);
        this.ids.set(`${kind}:${def.name}`, i);
        this.descs.set(`${kind}:${def.name}`, list[i]);
      }
    };
    index('optimizer', d.optimizers, optimizers);
    index('rule', d.rules, rules);
  }

  /**
   * Whether optimizer `name` takes `dtype` state: an optimizer whose kernel cannot (kCompact = false in
   * native/src) refuses a bfloat16 or q8 step before reading any job, so an empty step asks it.
   */
  takesStateDtype(name: string, dtype: StateDtype): boolean {
    if (dtype === 'float32') return true;
    const id = this.ids.get(`optimizer:${name}`);
    if (id === undefined) return false;
    try {
      this.addon.step(id, 0, [], new Float64Array(0), new Uint32Array(0), DTYPE_ID[dtype], new Uint32Array(0));
      return true;
    } catch {
      return false;
    }
  }

  /** The SIMD target the addon chose, e.g. "AVX3". */
  get target(): string {
    return this.addon.describe().target;
  }

  setThreads(n: number): number {
    return this.addon.setThreads(n);
  }

  threads(): number {
    return this.addon.threads();
  }

  widenBf16(src: Uint8Array, dst: Float32Array): void {
    this.addon.widenBf16(src, dst);
  }

  widenF16(src: Uint8Array, dst: Float32Array): void {
    this.addon.widenF16(src, dst);
  }

  firstNonFinite(a: Float32Array): number {
    return this.addon.firstNonFinite(a);
  }

  scan(a: Float32Array): { nonFinite: number; digest: string } {
    const [nonFinite, digest] = this.addon.scan(a);
    return { nonFinite, digest };
  }

  private alloc(n: number): Float32Array {
    const a = this.addon.allocFloats(n); // on huge pages from 2 MiB (native/src/state.cc)
    this.live.buffers += 1;
    this.live.bytes += 4 * n;
    return a;
  }

  private allocBf16(n: number): Uint16Array {
    const a = this.addon.allocBf16(n);
    this.live.buffers += 1;
    this.live.bytes += 2 * n;
    return a;
  }

  private allocQ8(n: number): Uint8Array {
    const a = this.addon.allocQ8(n);
    this.live.buffers += 1;
    this.live.bytes += slotBytes('q8', n);
    return a;
  }

  /** The q8 map the kernels use (tests compare it with engine/q8.ts's). */
  q8Map(unsigned: boolean): { values: Float32Array; thresholds: Float32Array; lutOk: boolean } {
    const [values, thresholds, lutOk] = this.addon.q8Map(unsigned);
    return { values, thresholds, lutOk };
  }

  /** `nonNegative`: a q8 slot that is never negative takes the unsigned map (SlotDecl.nonNegative). */
  create(values: Float32Array, _shape?: number[], dtype: StateDtype = 'float32', nonNegative = false): Slot {
    if (dtype === 'bfloat16') return new NativeSlot(narrowBf16(values, this.allocBf16(values.length)));
    if (dtype === 'q8') {
      const q8 = { n: values.length, nonNegative };
      return new NativeSlot(quantise(values, nonNegative, this.allocQ8(values.length)), false, q8);
    }
    const a = this.alloc(values.length);
    a.set(values);
    return new NativeSlot(a);
  }

  write(slot: Slot, values: Float32Array): void {
    const s = slot as NativeSlot;
    const d = s.data;
    if (s.q8) quantise(values, s.q8.nonNegative, d as Uint8Array);
    else if (d instanceof Uint16Array) narrowBf16(values, d);
    else (d as Float32Array).set(values);
  }

  /** A slot over memory the caller owns (an arena region): no copy, not counted as the engine's. */
  adopt(memory: Float32Array): Slot {
    return new NativeSlot(memory, true);
  }

  createArena(params: Array<{ id: string; size: number }>): Arena {
    return new Arena(this.addon, params);
  }

  createLane(arena: Arena): FastLane {
    const addon = this.addon;
    const handle = addon.laneCreate(arena.memory);
    const armed: { layout: Layout | null } = { layout: null }; // keeps the armed buffers alive
    return {
      arm: (opt, rule, jobs, lastStep, state = FLOAT32_STATE) => {
        const l = this.layout(opt, rule, jobs, state);
        if (l.created.length > 0) {
          this.drop(l); // a slot is still to be made: the first step of a parameter goes through the session
          return false;
        }
        addon.laneArm(handle, lastStep, l.opt, l.rule, l.buffers, l.hypers, l.fresh, l.dtype, l.streams);
        armed.layout = l;
        return true;
      },
      disarm: () => {
        const r = addon.laneDisarm(handle);
        armed.layout = null;
        return r;
      },
      staging: (on) => addon.laneStaging(handle, on),
      close: () => {
        addon.laneClose(handle);
        armed.layout = null;
      },
    };
  }

  dispose(slot: Slot): void {
    if ((slot as NativeSlot).borrowed) return;
    this.live.buffers -= 1;
    this.live.bytes -= dataOf(slot).byteLength;
  }

  memory(): EngineMemory {
    return { ...this.live };
  }

  /**
   * A new slot with its declared first value; bfloat16 bits or q8 bytes for a per-element slot of such state
   * (`dtype`: the session's for an optimizer slot, float32 for a rule's).
   */
  private initial(decl: SlotDecl, theta: Float32Array, shape: number[], h: Hypers, stateDtype: StateDtype): NativeSlot {
    const i = decl.init;
    const dtype = decl.float32 ? 'float32' : stateDtype; // Schedule-Free's z, Adafactor's statistics (SlotDecl.float32)
    const v = 'fill' in i ? i.fill : 'fillFrom' in i ? num(h, i.fillFrom) : 0;
    if (dtype === 'bfloat16' && !decl.scalar) {
      const b = this.allocBf16(slotSize(decl, shape));
      if ('copyOfTheta' in i) return new NativeSlot(narrowBf16(theta, b));
      if (v !== 0) b.fill(narrowBf16(Float32Array.of(v))[0]); // to nearest; copyOfGrad: the kernel copies (and rounds)
      return new NativeSlot(b);
    }
    if (dtype === 'q8' && !decl.scalar) {
      const n = slotSize(decl, shape);
      const nonNegative = decl.nonNegative === true;
      // v in every element: absmax |v| and the code of +-1 (0: zeros); copyOfGrad: the kernel copies (and quantises).
      const b = quantise('copyOfTheta' in i ? theta : new Float32Array(n).fill(v), nonNegative, this.allocQ8(n));
      return new NativeSlot(b, false, { n, nonNegative });
    }
    const a = this.alloc(slotSize(decl, shape));
    if ('fill' in i) a.fill(i.fill);
    else if ('fillFrom' in i) a.fill(num(h, i.fillFrom));
    else if ('copyOfTheta' in i) a.set(theta);
    else if ('rmsTimes' in i) a[0] = Math.sqrt(this.addon.sumSquares(theta) / Math.max(1, theta.length)) * num(h, i.rmsTimes);
    // copyOfGrad: the kernel copies the gradient in (its "fresh" bit).
    return new NativeSlot(a);
  }

  /** Every job's buffers and hyperparameters; slots needed for the first time are made off to the side. */
  private layout(opt: OptimizerDef, rule: RuleDef, jobs: StepJob[], state: StateFormat): Layout {
    const { stride, maxOptSlots, hyperBlock, optHyper, ruleHyper, rowsHyper } = this.layout_;
    const od = this.descs.get(`optimizer:${opt.name}`)!;
    const rd = this.descs.get(`rule:${rule.name}`)!;
    const out: Layout = {
      opt: this.ids.get(`optimizer:${opt.name}`)!,
      rule: this.ids.get(`rule:${rule.name}`)!,
      dtype: DTYPE_ID[state.dtype],
      buffers: new Array<SlotData | null>(jobs.length * stride).fill(null),
      hypers: new Float64Array(jobs.length * hyperBlock),
      fresh: new Uint32Array(jobs.length),
      streams: new Uint32Array(2 * jobs.length),
      created: [],
      rows: jobs.some((j) => j.rows) ? jobs.map((j) => j.rows ?? null) : undefined,
    };
    try {
      jobs.forEach((j, k) => {
        const base = k * stride;
        const theta = floatsOf(j.state.theta!);
        out.buffers[base] = theta;
        out.streams[2 * k] = state.seed;
        out.streams[2 * k + 1] = j.stream;
        out.buffers[base + 1] = j.grad;
        const place = (decls: SlotDecl[], into: Map<string, Slot>, at: number, freshBits: boolean) => {
          decls.forEach((d, i) => {
            if ((d.when && !d.when(j.h)) || slotShape(d, j.shape) === null) return;
            let s = into.get(d.name);
            if (!s) {
              const slot = this.initial(d, theta, j.shape, j.h, freshBits ? state.dtype : 'float32'); // rule slots: float32
              out.created.push({ into, name: d.name, slot });
              s = slot;
              if (freshBits && 'copyOfGrad' in d.init) out.fresh[k] |= 1 << i;
            }
            out.buffers[at + i] = dataOf(s);
          });
        };
        place(opt.slots, j.state.opt, base + 2, true);
        place(rule.slots, j.state.rule, base + 2 + maxOptSlots, false);
        const hb = k * hyperBlock;
        out.hypers[hb] = j.t;
        out.hypers[hb + 1] = flatValue(j.h, 'lr');
        od.hypers.forEach(
          (name, i) =>
            (out.hypers[hb + optHyper + i] = name.startsWith('#') ? shapeValue(j.shape, name) : flatValue(j.h, name, opt.hypers)),
        );
        rd.hypers.forEach((name, i) => (out.hypers[hb + ruleHyper + i] = flatValue(j.h, name, rule.hypers)));
        out.hypers[hb + rowsHyper] = j.shape.length > 0 ? j.shape[0] : 1;
      });
    } catch (e) {
      this.drop(out);
      throw e;
    }
    return out;
  }

  private drop(l: Layout): void {
    for (const c of l.created) this.dispose(c.slot);
  }

  private keep(l: Layout): void {
    for (const c of l.created) c.into.set(c.name, c.slot);
  }

  step(opt: OptimizerDef, rule: RuleDef, jobs: StepJob[], state: StateFormat = FLOAT32_STATE): void {
    const l = this.layout(opt, rule, jobs, state);
    try {
      this.addon.step(...stepArgs(l));
    } catch (e) {
      this.drop(l);
      throw e;
    }
    this.keep(l);
  }

  /**
   * Every batch laid out first (slots made, nothing written), then each
   * batch's kernel call. The addon refuses a call only for a layout this
   * file made wrongly (the session validated everything else), so a refusal
   * of a later batch after an earlier one ran would be a bug here: it is
   * reported as such, with every new slot dropped.
   */
  stepBatches(rule: RuleDef, batches: Array<{ opt: OptimizerDef; jobs: StepJob[] }>, state: StateFormat = FLOAT32_STATE): void {
    const layouts: Layout[] = [];
    try {
      for (const b of batches) layouts.push(this.layout(b.opt, rule, b.jobs, state));
      layouts.forEach((l, i) => {
        try {
          this.addon.step(...stepArgs(l));
        } catch (e) {
          if (i === 0) throw e;
          throw new Error(`native engine: batch ${i} (${batches[i].opt.name}) refused after batch 0 ran: ${(e as Error).message}`, {
            cause: e,
          });
        }
      });
    } catch (e) {
      layouts.forEach((l) => this.drop(l));
      throw e;
    }
    layouts.forEach((l) => this.keep(l));
  }

  /**
   * The step on a libuv thread, with the finiteness scan of every gradient
   * first: the event loop serves other sessions meanwhile. Resolves the first
   * non-finite gradient element (nothing applied), or null once applied.
   */
  async stepAsync(
    opt: OptimizerDef,
    rule: RuleDef,
    jobs: StepJob[],
    state: StateFormat = FLOAT32_STATE,
  ): Promise<{ nonFinite: NonFinite } | { digests: string[] }> {
    const l = this.layout(opt, rule, jobs, state);
    let r: Awaited<ReturnType<NativeAddon['stepAsync']>>;
    try {
      r = await this.addon.stepAsync(...stepArgs(l));
    } catch (e) {
      this.drop(l);
      throw e;
    }
    if ('nonFinite' in r) {
      this.drop(l);
      const [job, index] = r.nonFinite;
      return { nonFinite: { job, index, value: jobs[job].grad[index] } };
    }
    this.keep(l);
    return r;
  }
}
