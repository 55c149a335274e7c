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
import type { HyperValue, Hypers, OptimizerDef, RuleDef, SlotDecl } from './types';

interface Descriptor {
  name: string;
  hypers: string[];
  slots: Array<{ name: string; scalar: boolean }>;
}

export interface NativeAddon {
  describe(): {
    optimizers: Descriptor[];
    rules: Descriptor[];
    target: string;
    threads: number;
    layout: { stride: number; maxOptSlots: number; maxRuleSlots: number; hyperBlock: number; optHyper: number; ruleHyper: number };
  };
  step(opt: number, rule: number, buffers: Array<Float32Array | null>, hypers: Float64Array, fresh: Uint32Array): void;
  /** Off the main thread: scans every gradient first; resolves the first non-finite one (nothing written) or their digests. */
  stepAsync(
    opt: number,
    rule: number,
    buffers: Array<Float32Array | null>,
    hypers: Float64Array,
    fresh: Uint32Array,
  ): Promise<{ nonFinite: [number, number] } | { digests: string[] }>;
  scan(a: Float32Array): [number, string];
  firstNonFinite(a: Float32Array): number;
  sumSquares(a: Float32Array): number;
  widenBf16(src: Uint8Array, dst: Float32Array): void;
  widenF16(src: Uint8Array, dst: Float32Array): void;
  /** The limit kernel of make bench-engine (native/src/limit.cc): m += g, v += g, p -= g. */
  limit(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array): void;
  /** The rule kernels' exp or tanh over an array (native/src/transcendental.cc), for tests. */
  math(fn: 'exp' | 'tanh', x: Float32Array, out: Float32Array): void;
  setThreads(n: number): number;
  threads(): number;
  arenaCreate(bytes: number): { buffer: ArrayBuffer; fd: number };
  /** n zeros, in a 2 MiB-aligned mapping with MADV_HUGEPAGE from 2 MiB (native/src/state.cc). */
  allocFloats(n: number): Float32Array;
  arenaCloseFd(fd: number): void;
  laneCreate(arena: ArrayBuffer): LaneHandle;
  laneArm(
    lane: LaneHandle,
    lastStep: number,
    opt: number,
    rule: number,
    buffers: Array<Float32Array | null>,
    hypers: Float64Array,
    fresh: Uint32Array,
  ): void;
  laneDisarm(lane: LaneHandle): LaneReport;
  laneClose(lane: LaneHandle): void;
}

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

class NativeSlot implements Slot {
  /** @param borrowed memory the engine does not own (an arena region) */
  constructor(
    readonly data: Float32Array,
    readonly borrowed = false,
  ) {}
  get size(): number {
    return this.data.length;
  }
  view(): Float32Array {
    return this.data;
  }
  read(): Float32Array {
    return this.data.slice();
  }
}

const dataOf = (s: Slot) => (s as NativeSlot).data;

interface Layout {
  opt: number;
  rule: number;
  buffers: Array<Float32Array | null>;
  hypers: Float64Array;
  fresh: Uint32Array;
  created: Array<{ into: Map<string, Slot>; name: string; data: Float32Array }>;
}

/** A hyperparameter by its flattened name: "lr", "betas.1"; booleans as 0/1. */
function flatValue(h: Hypers, name: string): number {
  const dot = name.indexOf('.');
  const v: HyperValue | undefined =
    dot < 0 ? h[name] : (h[name.slice(0, dot)] as [number, number] | undefined)?.[Number(name.slice(dot + 1))];
  if (typeof v === 'boolean') return v ? 1 : 0;
  if (typeof v !== 'number') throw new Error(`native engine: hyperparameter '${name}' is ${JSON.stringify(v)}`);
  return v;
}

/** Checks that the addon's slot list is the TypeScript definition's, in order. */
function sameSlots(what: string, ts: SlotDecl[], native: Descriptor['slots']): void {
  const a = ts.map((s) => `${s.name}${s.scalar ? '[1]' : ''}`).join(',');
  const b = native.map((s) => `${s.name}${s.scalar ? '[1]' : ''}`).join(',');
  if (a !== b) throw new Error(`native engine: ${what} slots differ: TypeScript [${a}], addon [${b}]`);
}

export class NativeEngine implements Engine {
  readonly name = 'native';
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

  create(values: Float32Array): Slot {
    const a = this.alloc(values.length);
    a.set(values);
    return new NativeSlot(a);
  }

  write(slot: Slot, values: Float32Array): void {
    dataOf(slot).set(values);
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
      arm: (opt, rule, jobs, lastStep) => {
        const l = this.layout(opt, rule, jobs);
        if (l.created.length > 0) {
          this.drop(l); // a slot is still to be made: the first step of a parameter goes through the session
          return false;
        }
        addon.laneArm(handle, lastStep, l.opt, l.rule, l.buffers, l.hypers, l.fresh);
        armed.layout = l;
        return true;
      },
      disarm: () => {
        const r = addon.laneDisarm(handle);
        armed.layout = null;
        return r;
      },
      close: () => {
        addon.laneClose(handle);
        armed.layout = null;
      },
    };
  }

  dispose(slot: Slot): void {
    if ((slot as NativeSlot).borrowed) return;
    this.live.buffers -= 1;
    this.live.bytes -= 4 * slot.size;
  }

  memory(): EngineMemory {
    return { ...this.live };
  }

  /** A new slot's buffer with its declared first value. */
  private initial(decl: SlotDecl, theta: Float32Array, h: Hypers): Float32Array {
    const a = this.alloc(decl.scalar ? 1 : theta.length);
    const i = decl.init;
    if ('fill' in i) a.fill(i.fill);
    else if ('fillFrom' in i) a.fill(num(h, i.fillFrom));
    else if ('rmsTimes' in i) a[0] = Math.sqrt(this.addon.sumSquares(theta) / Math.max(1, theta.length)) * num(h, i.rmsTimes);
    // copyOfGrad: the kernel copies the gradient in (its "fresh" bit).
    return a;
  }

  /** Every job's buffers and hyperparameters; slots needed for the first time are made off to the side. */
  private layout(opt: OptimizerDef, rule: RuleDef, jobs: StepJob[]): Layout {
    const { stride, maxOptSlots, hyperBlock, optHyper, ruleHyper } = this.layout_;
    const od = this.descs.get(`optimizer:${opt.name}`)!;
    const rd = this.descs.get(`rule:${rule.name}`)!;
    const out: Layout = {
      opt: this.ids.get(`optimizer:${opt.name}`)!,
      rule: this.ids.get(`rule:${rule.name}`)!,
      buffers: new Array<Float32Array | null>(jobs.length * stride).fill(null),
      hypers: new Float64Array(jobs.length * hyperBlock),
      fresh: new Uint32Array(jobs.length),
      created: [],
    };
    try {
      jobs.forEach((j, k) => {
        const base = k * stride;
        const theta = dataOf(j.state.theta!);
        out.buffers[base] = theta;
        out.buffers[base + 1] = j.grad;
        const place = (decls: SlotDecl[], into: Map<string, Slot>, at: number, freshBits: boolean) => {
          decls.forEach((d, i) => {
            if (d.when && !d.when(j.h)) return;
            let s = into.get(d.name);
            if (!s) {
              const data = this.initial(d, theta, j.h);
              out.created.push({ into, name: d.name, data });
              s = new NativeSlot(data);
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
        od.hypers.forEach((name, i) => (out.hypers[hb + optHyper + i] = flatValue(j.h, name)));
        rd.hypers.forEach((name, i) => (out.hypers[hb + ruleHyper + i] = flatValue(j.h, name)));
      });
    } catch (e) {
      this.drop(out);
      throw e;
    }
    return out;
  }

  private drop(l: Layout): void {
    for (const c of l.created) this.dispose(new NativeSlot(c.data));
  }

  private keep(l: Layout): void {
    for (const c of l.created) c.into.set(c.name, new NativeSlot(c.data));
  }

  step(opt: OptimizerDef, rule: RuleDef, jobs: StepJob[]): void {
    const l = this.layout(opt, rule, jobs);
    try {
      this.addon.step(l.opt, l.rule, l.buffers, l.hypers, l.fresh);
    } catch (e) {
      this.drop(l);
      throw e;
    }
    this.keep(l);
  }

  /**
   * The step on a libuv thread, with the finiteness scan of every gradient
   * first: the event loop serves other sessions meanwhile. Resolves the first
   * non-finite gradient element (nothing applied), or null once applied.
   */
  async stepAsync(opt: OptimizerDef, rule: RuleDef, jobs: StepJob[]): Promise<{ nonFinite: NonFinite } | { digests: string[] }> {
    const l = this.layout(opt, rule, jobs);
    let r: Awaited<ReturnType<NativeAddon['stepAsync']>>;
    try {
      r = await this.addon.stepAsync(l.opt, l.rule, l.buffers, l.hypers, l.fresh);
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
