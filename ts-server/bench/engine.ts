// make bench-engine: server-side step throughput (a Session step: the
// finiteness scan, the optimizer + rule, the commit; on native in place) per
// optimizer x rule x engine x threads, beside torch.optim and the limit
// kernel measured in the same rounds. torch runs in its strongest CPU form:
// torch 2.x from the cached venv with fused=True where it has a fused kernel,
// else the faster of foreach and the default, plus Debian's torch 1.13
// default (up to 4M parameters). The limit kernel (native/src/limit.cc) moves
// Adam's 28 bytes per parameter with no maths: the most any float32 step can
// move here. Every row reports GB/s (the bytes its optimizer must move) and
// the fraction of the limit, for mur and for torch. On native the step's
// check (the finiteness scan and replay digest alone, on the same gradient)
// runs in the same rounds too: `check ms`, and `ratio w/o check`, torch's
// time over the step minus its check (derived: the cost of a step whose
// gradients were checked before, as overlap's lane checks them on shm).
//
// Sides are measured in rounds (torch, the limit, every rule's session, in
// an order reversed every other round), so all see the same machine state
// (it is shared and noisy); times are medians of per-step times over all
// rounds. Prints a table, then one JSON line per row.
//
//   BENCH_SIZES=1000000,4000000,64000000,256000000  parameters per tensor
//   BENCH_OPTIMIZERS=sgd,adam,adamw,adagrad,rmsprop,adafactor,sparseadam  (adafactor: an R x C matrix, shapeOf;
//     sparseadam: its own rows, bench/sparse.ts)
//   BENCH_RULES=additive,multiplicative,hybrid,exp_sign  (above 4M: additive unless set)
//   BENCH_BACKENDS=native,tensorflow,wasm  (tfjs engines up to 4M parameters)
//   BENCH_ROUNDS=7  (above 4M: 3)
//   BENCH_THREADS=1,2
//   BENCH_STATE_DTYPES=float32  (and/or bfloat16, q8: the state_dtype of mur's sessions; one row each)
import { benchSparse, sparseTable } from './sparse';
import { spawn, type ChildProcessByStdio } from 'child_process';
import type { Readable, Writable } from 'stream';
import * as fs from 'fs';
import * as path from 'path';
import * as readline from 'readline';
import { availableBackends, initBackend, type BackendName } from '../src/engine/backend';
import { currentEngine } from '../src/engine/engine';
import { slotBytes, type StateDtype } from '../src/engine/stateDtype';
import { loadNative, NativeEngine } from '../src/engine/native';
import { slotSize } from '../src/engine/slots';
import type { SlotDecl } from '../src/engine/types';
import { resolveGroup, resolveSpec, type ResolvedSpec } from '../src/registry';
import { Session } from '../src/session/session';

const SMALL = 4_000_000; // the largest size every side runs at with every rule and mode
const list = (v: string | undefined, d: string) => (v ?? d).split(',').filter(Boolean);
const SIZES = list(process.env.BENCH_SIZES, '1000000,4000000,64000000,256000000').map(Number);
const THREADS = list(process.env.BENCH_THREADS, '1,2').map(Number);
const STATE_DTYPES = list(process.env.BENCH_STATE_DTYPES, 'float32') as StateDtype[];
const HYPERS: Record<string, Record<string, unknown>> = {
  sgd: { lr: 0.01, momentum: 0.9 },
  adam: {},
  adamw: {},
  adagrad: {},
  rmsprop: {},
  adafactor: {},
  muon: { lr: 0.02 },
  lamb: { lr: 1e-3 }, // optax's lamb has no default lr: required
  lars: { lr: 0.1 },
};
/*
 * Muon works on matrices: a 2048-row matrix of about n elements (4M: 2048 x
 * 1953; 4194304: 2048 x 2048), up to 2048 x 2048, with the additive rule
 * unless BENCH_RULES says (its step is Newton-Schulz's matrix products, not
 * memory traffic: the other rules add one element pass).
 */
const MATRIX = new Set(['muon']);
const MATRIX_MAX = 2048 * 2048;
/** Adafactor factors a matrix: n as R x C with R the largest divisor <= sqrt(n) (4M: 2000 x 2000); the rest a vector. */
function shapeOf(optimizer: string, n: number): number[] {
  if (MATRIX.has(optimizer)) return [2048, Math.max(1, Math.floor(n / 2048))];
  if (optimizer !== 'adafactor') return [n];
  let r = Math.floor(Math.sqrt(n));
  while (n % r !== 0) r--;
  return [r, n / r];
}
const OPTIMIZERS = list(process.env.BENCH_OPTIMIZERS, [...Object.keys(HYPERS), 'sparseadam'].join(','));
const RULE_HYPERS: Record<string, Record<string, unknown>> = {
  additive: {},
  multiplicative: { lr_out: 1e-3 },
  hybrid: { lr_out: 1e-3, gamma: 0.9 },
  exp_sign: {},
};
const rulesAt = (n: number, optimizer = '') =>
  list(process.env.BENCH_RULES, n > SMALL || MATRIX.has(optimizer) ? 'additive' : Object.keys(RULE_HYPERS).join(','));
const roundsAt = (n: number) => Number(process.env.BENCH_ROUNDS ?? (n > SMALL ? 3 : 7));
/** Steps per side per round: about 20M elements, at least one. */
const stepsAt = (n: number) => Math.max(1, Math.min(50, Math.floor(2e7 / n)));
const ROOT = path.join(__dirname, '../../..');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** Per-element slots of a spec's default group for a parameter of this shape. */
function fullSlots(spec: ResolvedSpec, shape: number[]): SlotDecl[] {
  const h = resolveGroup(spec, '');
  const n = shape.reduce((a, b) => a * b, 1);
  return [...spec.optimizer.slots, ...spec.rule.slots].filter((s) => slotSize(s, shape) === n && !s.scalar && (!s.when || s.when(h)));
}

/** State bytes per parameter: `per` for each full-size slot, 4 for one kept float32 (SlotDecl.float32: Schedule-Free's z). */
function stateBytesPerParam(spec: ResolvedSpec, shape: number[], per: number): number {
  return fullSlots(spec, shape).reduce((a, s) => a + (s.float32 ? 4 : per), 0);
}

/**
 * Bytes a step must move per parameter: read theta and g, write theta (4 each), read and write every
 * per-element slot (4 each in float32, 2 in bfloat16, 1 + 4/256 in q8, where the engine stores it: 28, 20 or
 * ~16.1 for Adam).
 */
function bytesPerParam(spec: ResolvedSpec, shape: number[], per = 4): number {
  return 12 + 2 * stateBytesPerParam(spec, shape, per);
}

/** A torch.optim process in --serve mode (python-runner/scripts/bench_torch_optim.py). */
class Torch {
  private readonly lines: AsyncIterableIterator<string>;
  private constructor(
    private readonly proc: ChildProcessByStdio<Writable, Readable, null>,
    readonly version: string,
    lines: AsyncIterableIterator<string>,
  ) {
    this.lines = lines;
  }
  static async start(python: string): Promise<Torch | null> {
    if (!fs.existsSync(python)) return null;
    const proc = spawn(python, [path.join(ROOT, 'python-runner/scripts/bench_torch_optim.py'), '--serve'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const lines = readline.createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
    const first = await lines.next();
    if (first.done) return null;
    return new Torch(proc, (JSON.parse(first.value) as { torch_version: string }).torch_version, lines);
  }
  async ask<T>(req: Record<string, unknown>): Promise<T> {
    this.proc.stdin.write(`${JSON.stringify(req)}\n`);
    const r = await this.lines.next();
    if (r.done) throw new Error(`torch ${this.version} exited`);
    const out = JSON.parse(r.value) as T & { error?: string };
    if (out.error) throw new Error(out.error);
    return out;
  }
  close(): void {
    this.proc.stdin.end();
  }
}

/** One thing measured in rounds: `run(steps)` returns per-step seconds. */
interface Side {
  name: string;
  run(steps: number): Promise<number[]>;
  times: number[];
}

function fill(n: number, scale: number, f: (i: number) => number): Float32Array {
  // A 1M-element block of f, tiled: large tensors fill in a moment, values stay varied.
  const block = new Float32Array(Math.min(n, 1 << 20)).map((_, i) => scale * f(i));
  const a = new Float32Array(n);
  for (let i = 0; i < n; i += block.length) a.set(i + block.length <= n ? block : block.subarray(0, n - i), i);
  return a;
}

function murSide(
  optimizer: string,
  rule: string,
  n: number,
  grad: Float32Array,
  values: Float32Array,
  dtype: StateDtype,
): { side: Side; session: Session; bytes: number; stateBytes: number; slots: number; dtype: StateDtype } {
  const spec = resolveSpec({
    optimizer,
    rule,
    defaults: { ...HYPERS[optimizer], ...RULE_HYPERS[rule] },
    ...(dtype === 'float32' ? {} : { state_dtype: dtype }),
  });
  // Bytes an element of a full-size slot takes (q8: 1 + 4/256).
  const per = slotBytes(currentEngine().storedStateDtypes.includes(dtype) ? dtype : 'float32', 256) / 256;
  const s = new Session('bench', spec, [{ id: 'w', name: 'w', shape: shapeOf(optimizer, n), group: '', values }]);
  let t = 0;
  for (; t < 3;) s.step(++t, [{ id: 'w', data: grad }]);
  const side: Side = {
    name: rule,
    times: [],
    run: (steps) => {
      const out: number[] = [];
      for (let k = 0; k < steps; k++) {
        const t0 = process.hrtime.bigint();
        s.step(++t, [{ id: 'w', data: grad }]);
        out.push(Number(process.hrtime.bigint() - t0) / 1e9);
      }
      return Promise.resolve(out);
    },
  };
  const shape = shapeOf(optimizer, n);
  return {
    side,
    session: s,
    bytes: bytesPerParam(spec, shape, per),
    stateBytes: stateBytesPerParam(spec, shape, per),
    slots: fullSlots(spec, shape).length,
    dtype,
  };
}

function torchSide(torch: Torch, name: string): Side {
  return { name, times: [], run: async (steps) => (await torch.ask<{ seconds: number[] }>({ cmd: 'time', steps })).seconds };
}

async function rounds(sides: Side[], n: number): Promise<void> {
  const steps = stepsAt(n);
  for (let r = 0; r < roundsAt(n); r++) {
    for (const s of r % 2 ? [...sides].reverse() : sides) s.times.push(...(await s.run(steps)));
  }
}

async function main() {
  const torch2 = await Torch.start(path.join(ROOT, '.venv-torch2/bin/python'));
  const torch1 = await Torch.start('/usr/bin/python3');
  const modes = new Map<string, string[]>();
  const modesOf = async (t: Torch, opt: string) => {
    const key = `${t.version} ${opt}`;
    if (!modes.has(key)) modes.set(key, (await t.ask<{ modes: string[] }>({ cmd: 'modes', optimizer: opt })).modes);
    return modes.get(key)!;
  };
  const addon = loadNative();
  const wanted = list(process.env.BENCH_BACKENDS, 'native,tensorflow,wasm') as BackendName[];
  const backends = availableBackends().filter((b) => wanted.includes(b));
  const rows: Array<Record<string, unknown>> = [];
  let target: string | undefined;
  for (const backend of backends) {
    await initBackend(backend);
    const engine = currentEngine();
    const native = engine instanceof NativeEngine ? engine : null;
    if (native) target = native.target;
    // native: each of THREADS; tensorflow: its own pool (every core); wasm: one thread.
    const threadSet = native ? THREADS : backend === 'wasm' ? [1] : [Math.max(...THREADS)];
    for (const n of SIZES) {
      if (!native && n > SMALL) continue;
      const gradAll = fill(n, 0.01, Math.cos);
      const valuesAll = fill(n, 1, Math.sin);
      for (const threads of threadSet) {
        native?.setThreads(threads);
        for (const optimizer of OPTIMIZERS.filter((o) => o !== 'sparseadam')) {
          if (optimizer === 'adafactor' && n > SMALL) continue; // torch's materializes R x C temporaries: up to 4M
          if (MATRIX.has(optimizer) && n > MATRIX_MAX) continue;
          const elems = shapeOf(optimizer, n).reduce((a, b) => a * b, 1); // the elements this optimizer's tensor has
          const [grad, values] = elems === n ? [gradAll, valuesAll] : [gradAll.subarray(0, elems), valuesAll.subarray(0, elems)];
          process.stderr.write(`${backend} x${threads} ${optimizer} ${elems} ...\n`);
          const sides: Side[] = [];
          // torch 2.x: fused where it has it, else foreach and (up to 4M) the default, the faster reported.
          const torchSides: Side[] = [];
          const t2modes = torch2 ? await modesOf(torch2, optimizer) : [];
          const t2mode = t2modes.includes('fused') ? 'fused' : t2modes.includes('foreach') && n > SMALL ? 'foreach' : null;
          const t2tried = t2mode ? [t2mode] : t2modes.filter((m) => m !== 'fused');
          // One torch optimizer per process at a time: the 2.x candidates beyond the first are measured in turn.
          const torchBest: Array<{ mode: string; sec: number }> = [];
          let t1: Side | null = null;
          if (torch1 && n <= SMALL && (await modesOf(torch1, optimizer)).includes('default')) {
            await torch1.ask({ cmd: 'setup', optimizer, mode: 'default', params: n, threads });
            await torch1.ask({ cmd: 'setup', optimizer, mode: 'default', params: elems, threads });
            t1 = torchSide(torch1, 'torch1');
            torchSides.push(t1);
          }
          // The limit kernel on its own four arrays (native only): Adam's traffic, threaded like the engine.
          let limit: Side | null = null;
          if (native && addon) {
            // On the engine's own kind of memory (huge pages from 2 MiB), beside the same gradient.
            const own = (f: (a: Float32Array) => void) => {
              const a = addon.allocFloats(elems);
              f(a);
              return a;
            };
            const [p, g, m, v] = [own((a) => a.set(values)), grad, own((a) => a.fill(1e-3)), own((a) => a.fill(1e-4))];
            limit = {
              name: 'limit',
              times: [],
              run: (steps) => {
                const out: number[] = [];
                for (let k = 0; k < steps; k++) {
                  const t0 = process.hrtime.bigint();
                  addon.limit(p, g, m, v);
                  out.push(Number(process.hrtime.bigint() - t0) / 1e9);
                }
                return Promise.resolve(out);
              },
            };
          }
          // The step's check alone (native only): the finiteness scan and replay digest of the same gradient, which a
          // session step runs before its kernel; what the step would cost with its gradient checked before
          // (overlap's lane on shm) is the step minus this.
          let check: Side | null = null;
          if (native) {
            check = {
              name: 'check',
              times: [],
              run: (steps) => {
                const out: number[] = [];
                for (let k = 0; k < steps; k++) {
                  const t0 = process.hrtime.bigint();
                  native.scan(grad);
                  out.push(Number(process.hrtime.bigint() - t0) / 1e9);
                }
                return Promise.resolve(out);
              },
            };
          }
          // Only the state dtypes this optimizer's kernel takes (Adafactor, Muon: float32 alone).
          const dtypes = STATE_DTYPES.filter((dtype) => engine.takesStateDtype?.(optimizer, dtype) ?? true);
          const mur = rulesAt(n, optimizer).flatMap((rule) => dtypes.map((dtype) => murSide(optimizer, rule, elems, grad, values, dtype)));
          for (const [i, mode] of t2tried.entries()) {
            if (!torch2) break;
            await torch2.ask({ cmd: 'setup', optimizer, mode, params: elems, threads });
            const t2 = torchSide(torch2, `torch2 ${mode}`);
            // The first candidate runs in every round with mur; further ones only beside the limit and torch 1.13.
            sides.length = 0;
            sides.push(
              t2,
              ...(t1 && i === 0 ? [t1] : []),
              ...(limit && i === 0 ? [limit] : []),
              ...(check && i === 0 ? [check] : []),
              ...(i === 0 ? mur.map((m) => m.side) : []),
            );
            await rounds(sides, n);
            torchBest.push({ mode, sec: median(t2.times) });
          }
          await torch2?.ask({ cmd: 'free' });
          // No torch 2.x candidate ran (none installed, or it has no such optimizer: schedule_free_adamw): mur's rounds here.
          if (torchBest.length === 0)
            await rounds([...torchSides, ...(limit ? [limit] : []), ...(check ? [check] : []), ...mur.map((m) => m.side)], n);
          await torch1?.ask({ cmd: 'free' });
          for (const m of mur) m.session.dispose();
          const best = torchBest.reduce<{ mode: string; sec: number } | null>((a, r) => (!a || r.sec < a.sec ? r : a), null);
          const limitSec = limit ? median(limit.times) : null;
          const limitGbs = limitSec ? (28 * elems) / limitSec / 1e9 : null;
          const checkSec = check ? median(check.times) : null;
          for (const m of mur) {
            const sec = median(m.side.times);
            const gbs = (m.bytes * elems) / sec / 1e9;
            const torchBytes = 12 + 8 * m.slots; // torch keeps float32 state
            const torchGbs = best ? (torchBytes * elems) / best.sec / 1e9 : null;
            rows.push({
              optimizer,
              rule: m.side.name,
              state_dtype: m.dtype,
              state_bytes_per_param: m.stateBytes,
              backend,
              params: elems,
              threads,
              ms_per_step: +(sec * 1e3).toFixed(3),
              mparams_per_s: +(elems / sec / 1e6).toFixed(1),
              bytes_per_param: m.bytes,
              gb_per_s: +gbs.toFixed(1),
              limit_gb_per_s: limitGbs ? +limitGbs.toFixed(1) : null,
              limit_fraction: limitGbs ? +(gbs / limitGbs).toFixed(3) : null,
              torch_best_mparams_per_s: best ? +(elems / best.sec / 1e6).toFixed(1) : null,
              torch_best_mode: best ? `${torch2!.version} ${best.mode}` : null,
              torch_gb_per_s: torchGbs ? +torchGbs.toFixed(1) : null,
              torch_limit_fraction: torchGbs && limitGbs ? +(torchGbs / limitGbs).toFixed(3) : null,
              torch_default_mparams_per_s: t1 ? +(elems / median(t1.times) / 1e6).toFixed(1) : null,
              ratio: best ? +(best.sec / sec).toFixed(3) : null,
              check_ms: checkSec !== null ? +(checkSec * 1e3).toFixed(3) : null,
              // Derived, not a path timed here: torch's time over (the step minus its check).
              ratio_checked_before: best && checkSec !== null && sec > checkSec ? +(best.sec / (sec - checkSec)).toFixed(3) : null,
            });
          }
        }
      }
    }
  }
  torch2?.close();
  torch1?.close();
  // SparseAdam: a [1M, 64] table, 1% of its rows touched a step (bench/sparse.ts), native engine only.
  let sparse: Array<Record<string, unknown>> = [];
  if (OPTIMIZERS.includes('sparseadam') && availableBackends().includes('native')) {
    await initBackend('native');
    const native = currentEngine() as NativeEngine;
    sparse = benchSparse(
      ROOT,
      list(process.env.BENCH_RULES, Object.keys(RULE_HYPERS).join(',')),
      THREADS,
      (k) => native.setThreads(k),
      STATE_DTYPES,
    );
  }
  const versions = [torch2?.version, torch1?.version].filter(Boolean).join(' and ');
  console.log(
    `torch ${versions}; native SIMD target ${target ?? 'n/a'}; one step on one float32 tensor (median); limit = the limit kernel's GB/s at 28 B/param`,
  );
  const head = [
    'optimizer',
    'rule',
    'state',
    'state B/p',
    'backend',
    'thr',
    'params',
    'mur Mp/s',
    'ms/step',
    'GB/s',
    'limit GB/s',
    'of limit',
    'torch Mp/s (mode)',
    'torch GB/s',
    'of limit',
    '1.13 dflt',
    'ratio',
    'check ms',
    'ratio w/o check',
  ];
  const cell = (r: Record<string, unknown>) => [
    r.optimizer,
    r.rule,
    r.state_dtype,
    r.state_bytes_per_param,
    r.backend,
    r.threads,
    r.params,
    r.mparams_per_s,
    r.ms_per_step,
    r.gb_per_s,
    r.limit_gb_per_s,
    r.limit_fraction,
    `${String(r.torch_best_mparams_per_s)} (${String(r.torch_best_mode)})`,
    r.torch_gb_per_s,
    r.torch_limit_fraction,
    r.torch_default_mparams_per_s,
    r.ratio,
    r.check_ms,
    r.ratio_checked_before,
  ];
  console.log(`| ${head.join(' | ')} |\n|${head.map(() => ' --- ').join('|')}|`);
  for (const r of rows) console.log(`| ${cell(r).map(String).join(' | ')} |`);
  for (const r of rows) console.log(JSON.stringify(r));
  if (sparse.length > 0) {
    console.log(`\n${sparseTable(sparse)}`);
    for (const r of sparse) console.log(JSON.stringify(r));
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
