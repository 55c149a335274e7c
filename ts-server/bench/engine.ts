// make bench-engine: server-side step throughput (a Session step: the
// finiteness scan, the optimizer + rule, the commit; on native in place) per
// optimizer x rule x engine x threads, beside torch.optim measured in the
// same run, row by row (torch right before mur, on the same machine state),
// in its strongest CPU form: torch 2.x from the cached venv with
// fused=True where it has a fused kernel, else the faster of foreach and the
// default, plus Debian's torch 1.13 default. Prints a table, then one JSON
// line per row. Times are medians of per-step times.
//
//   BENCH_SIZES=1000000,4000000 BENCH_SECONDS=1 BENCH_BACKENDS=native,tensorflow,wasm
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { availableBackends, initBackend, type BackendName } from '../src/engine/backend';
import { currentEngine } from '../src/engine/engine';
import { NativeEngine } from '../src/engine/native';
import { resolveSpec } from '../src/registry';
import { Session } from '../src/session/session';

const SIZES = (process.env.BENCH_SIZES ?? '1000000,4000000').split(',').map(Number);
const MIN_SECONDS = Number(process.env.BENCH_SECONDS ?? 1);
const OPTIMIZERS: Array<[string, Record<string, unknown>]> = [
  ['sgd', { lr: 0.01, momentum: 0.9 }],
  ['adam', {}],
  ['adamw', {}],
  ['adagrad', {}],
  ['rmsprop', {}],
];
const RULES = ['additive', 'multiplicative', 'hybrid'];
const ROOT = path.join(__dirname, '../../..');

interface TorchRow {
  optimizer: string;
  params: number;
  threads: number;
  mode: string;
  mparams_per_s: number;
}
interface TorchRun {
  torch_version: string;
  max_threads: number;
  rows: TorchRow[];
}

function runTorch(python: string, threads: number[], sizes: number[], optimizers: string[]): TorchRun | null {
  if (!fs.existsSync(python)) return null;
  process.stderr.write(`torch.optim with ${python} ...\n`);
  const script = path.join(ROOT, 'python-runner/scripts/bench_torch_optim.py');
  const out = execFileSync(
    python,
    [script, '--sizes', sizes.join(','), '--optimizers', optimizers.join(','), '--threads', threads.join(','), '--seconds', String(MIN_SECONDS)],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] },
  );
  return JSON.parse(out) as TorchRun;
}

/** Median per-step seconds of a Session step on one tensor of n elements. */
function measure(optimizer: string, hypers: Record<string, unknown>, rule: string, n: number): number {
  const values = new Float32Array(n).map((_, i) => Math.sin(i));
  const grad = new Float32Array(n).map((_, i) => 0.01 * Math.cos(i));
  const ruleHypers: Record<string, Record<string, unknown>> = { additive: {}, multiplicative: { lr_out: 1e-3 }, hybrid: { lr_out: 1e-3, gamma: 0.9 } };
  const defaults = { ...hypers, ...ruleHypers[rule] };
  const s = new Session('bench', resolveSpec({ optimizer, rule, defaults }), [{ id: 'w', name: 'w', shape: [n], group: '', values }]);
  try {
    let t = 0;
    for (; t < 3; ) s.step(++t, [{ id: 'w', data: grad }]);
    const times: number[] = [];
    const start = process.hrtime.bigint();
    for (;;) {
      const t0 = process.hrtime.bigint();
      s.step(++t, [{ id: 'w', data: grad }]);
      times.push(Number(process.hrtime.bigint() - t0) / 1e9);
      if (times.length >= 5 && Number(process.hrtime.bigint() - start) / 1e9 >= MIN_SECONDS) break;
    }
    times.sort((a, b) => a - b);
    return times[times.length >> 1];
  } finally {
    s.dispose();
  }
}

async function main() {
  const maxThreads = 2;
  const threadCounts = [1, maxThreads];
  // torch is measured row by row right before mur's rows of the same optimizer,
  // size and threads, so both see the same machine (it is shared and noisy).
  const torchRows: Array<TorchRow & { v: string }> = [];
  const versions = new Set<string>();
  const measureTorch = (opt: string, n: number, threads: number) => {
    for (const python of [path.join(ROOT, '.venv-torch2/bin/python'), '/usr/bin/python3']) {
      const run = runTorch(python, [threads], [n], [opt]);
      if (!run) continue;
      versions.add(run.torch_version);
      torchRows.push(...run.rows.map((r) => ({ ...r, v: run.torch_version })));
    }
  };
  const best = (opt: string, n: number, threads: number) => {
    const rows = torchRows.filter((r) => r.optimizer === opt && r.params === n && r.threads === threads);
    // torch's strongest form: fused where a torch has it, else the faster of foreach and default.
    const fused = rows.filter((r) => r.mode === 'fused');
    const pool = fused.length ? fused : rows;
    return pool.reduce<(typeof rows)[number] | null>((a, r) => (!a || r.mparams_per_s > a.mparams_per_s ? r : a), null);
  };
  const torchDefault = (opt: string, n: number, threads: number) =>
    torchRows.find((r) => r.v.startsWith('1.') && r.optimizer === opt && r.params === n && r.threads === threads && r.mode === 'default')?.mparams_per_s ??
    null;

  const wanted = (process.env.BENCH_BACKENDS ?? 'native,tensorflow,wasm').split(',') as BackendName[];
  const backends = availableBackends().filter((b) => wanted.includes(b));
  const rows: Array<Record<string, unknown>> = [];
  let target: string | undefined;
  for (const backend of backends) {
    await initBackend(backend);
    const engine = currentEngine();
    if (engine instanceof NativeEngine) target = engine.target;
    // native: 1 thread and every core; tensorflow: its own pool (every core); wasm: one thread.
    const threadSet = engine instanceof NativeEngine ? threadCounts : backend === 'wasm' ? [1] : [maxThreads];
    for (const threads of threadSet) {
      if (engine instanceof NativeEngine) engine.setThreads(threads);
      for (const [optimizer, hypers] of OPTIMIZERS) {
        for (const n of SIZES) {
          if (engine instanceof NativeEngine) measureTorch(optimizer, n, threads);
          for (const rule of RULES) {
            process.stderr.write(`${backend} x${threads} ${optimizer} ${rule} ${n} ...\n`);
            const sec = measure(optimizer, hypers, rule, n);
            const mps = n / sec / 1e6;
            const b = best(optimizer, n, threads);
            rows.push({
              optimizer, rule, backend, params: n, threads,
              ms_per_step: +(sec * 1e3).toFixed(3),
              mparams_per_s: +mps.toFixed(1),
              torch_best_mparams_per_s: b ? +b.mparams_per_s.toFixed(1) : null,
              torch_best_mode: b ? `${b.v} ${b.mode}` : null,
              torch_default_mparams_per_s: torchDefault(optimizer, n, threads),
              ratio: b ? +(mps / b.mparams_per_s).toFixed(3) : null,
            });
          }
        }
      }
    }
  }
  console.log(`torch ${[...versions].join(' and ')}; native SIMD target ${target ?? 'n/a'}; Mparam/s of one step on one float32 tensor (median)`);
  console.log('optimizer  rule            backend     thr   params  mur Mp/s   ms/step  torch best Mp/s (mode)        1.13 default  ratio');
  for (const r of rows) {
    console.log(
      `${String(r.optimizer).padEnd(10)} ${String(r.rule).padEnd(15)} ${String(r.backend).padEnd(11)} ${String(r.threads).padStart(3)} ${String(r.params).padStart(8)} ${String(r.mparams_per_s).padStart(9)} ${String(r.ms_per_step).padStart(9)}  ${`${r.torch_best_mparams_per_s} (${r.torch_best_mode})`.padEnd(29)} ${String(r.torch_default_mparams_per_s).padStart(12)} ${String(r.ratio).padStart(6)}`,
    );
  }
  for (const r of rows) console.log(JSON.stringify(r));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
