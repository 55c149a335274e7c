// make bench-engine's SparseAdam rows: one [1M, 64] float32 table whose
// row-sparse gradient touches 1% of its rows (10,000 sorted unique rows a
// step, four fixed sets cycled), stepped through a Session on the native
// engine under each rule, beside torch.optim.SparseAdam on the same table
// (python-runner/scripts/bench_torch_sparse.py, torch 2.x), both after one
// step over every row (the state's pages exist). Reported: ms per step (median), touched Mparam/s, and the ratio torch ms / mur ms.
//   BENCH_SPARSE_ROWS=1000000  BENCH_SPARSE_DIM=64  BENCH_SPARSE_TOUCHED=10000
// (BENCH_RULES and BENCH_THREADS as the dense rows.)
import { spawnSync } from 'child_process';
import * as path from 'path';
import { resolveSpec } from '../src/registry';
import { Session } from '../src/session/session';
import { currentEngine } from '../src/engine/engine';
import type { StateDtype } from '../src/engine/stateDtype';

const env = (k: string, d: number) => Number(process.env[k] ?? d);

/** Sorted unique rows: `touched` of `rows`, from a small LCG (deterministic). */
function rowSet(rows: number, touched: number, seed: number): Uint32Array {
  const pick = new Set<number>();
  let x = seed >>> 0;
  while (pick.size < touched) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    pick.add(x % rows);
  }
  return Uint32Array.from([...pick].sort((a, b) => a - b));
}

const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

function torchMs(root: string, rows: number, dim: number, touched: number, threads: number): { ms: number; version: string } | null {
  const py = path.join(root, '.venv-torch2/bin/python');
  const r = spawnSync(
    py,
    [
      path.join(root, 'python-runner/scripts/bench_torch_sparse.py'),
      '--rows',
      `${rows}`,
      '--dim',
      `${dim}`,
      '--touched',
      `${touched}`,
      '--threads',
      `${threads}`,
    ],
    {
      encoding: 'utf8',
    },
  );
  if (r.status !== 0) {
    process.stderr.write(`torch SparseAdam: not measured (${(r.stderr || String(r.error)).split('\n')[0]})\n`);
    return null;
  }
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { ms_per_step: number; torch_version: string };
  return { ms: out.ms_per_step, version: out.torch_version };
}

/** The rows of the SparseAdam table (native engine; `setThreads` sets its pool). */
export function benchSparse(
  root: string,
  rules: string[],
  threads: number[],
  setThreads: (n: number) => void,
  dtypes: readonly StateDtype[] = ['float32'],
): Array<Record<string, unknown>> {
  const rows = env('BENCH_SPARSE_ROWS', 1_000_000);
  const dim = env('BENCH_SPARSE_DIM', 64);
  const touched = env('BENCH_SPARSE_TOUCHED', 10_000);
  const sets = [1, 2, 3, 4].map((s) => rowSet(rows, touched, s));
  const grad = Float32Array.from({ length: touched * dim }, (_, i) => 0.01 * Math.cos(i));
  const values = Float32Array.from({ length: rows * dim }, (_, i) => Math.sin(i));
  const out: Array<Record<string, unknown>> = [];
  for (const thr of threads) {
    setThreads(thr);
    const torch = torchMs(root, rows, dim, touched, thr);
    for (const rule of rules) {
      for (const dtype of dtypes) {
        process.stderr.write(`native x${thr} sparseadam ${rule} ${dtype} ${rows}x${dim}, ${touched} rows ...\n`);
        const spec = resolveSpec({ optimizer: 'sparseadam', rule, defaults: { lr: 1e-3 }, state_dtype: dtype });
        const before = currentEngine().memory().bytes;
        const s = new Session('bench-sparse', spec, [{ id: 'e', name: 'e', shape: [rows, dim], group: '', values }]);
        try {
          // Step 1 touches every row, so the state's pages exist before timing (torch's side does the same):
          // the steady state of a long training run, not first-touch page faults.
          s.step(1, [{ id: 'e', data: new Float32Array(rows * dim).fill(0.01), rows: Uint32Array.from({ length: rows }, (_, i) => i) }]);
          const stateBytes = currentEngine().memory().bytes - before - 4 * rows * dim; // exp_avg and exp_avg_sq as stored
          const times: number[] = [];
          for (let t = 2; t <= 24; t++) {
            const t0 = process.hrtime.bigint();
            s.step(t, [{ id: 'e', data: grad, rows: sets[t % sets.length] }]);
            if (t > 4) times.push(Number(process.hrtime.bigint() - t0) / 1e6);
          }
          const ms = median(times);
          out.push({
            optimizer: 'sparseadam',
            rule,
            state_dtype: dtype,
            state_bytes: stateBytes,
            threads: thr,
            table: `${rows}x${dim}`,
            touched_rows: touched,
            ms_per_step: +ms.toFixed(3),
            touched_mparams_per_s: +((touched * dim) / ms / 1e3).toFixed(1),
            torch_ms_per_step: torch?.ms ?? null,
            torch_version: torch?.version ?? null,
            ratio: torch ? +(torch.ms / ms).toFixed(2) : null,
          });
        } finally {
          s.dispose();
        }
      }
    }
  }
  return out;
}

/** The table of benchSparse's rows, as markdown. */
export function sparseTable(rows: Array<Record<string, unknown>>): string {
  const head = [
    'optimizer',
    'rule',
    'state',
    'state MB',
    'thr',
    'table',
    'touched rows',
    'mur ms/step',
    'touched Mp/s',
    'torch SparseAdam ms/step',
    'torch/mur',
  ];
  const lines = rows.map((r) =>
    [
      r.optimizer,
      r.rule,
      r.state_dtype,
      ((r.state_bytes as number) / 1e6).toFixed(1),
      r.threads,
      r.table,
      r.touched_rows,
      r.ms_per_step,
      r.touched_mparams_per_s,
      r.torch_ms_per_step,
      r.ratio,
    ].map(String),
  );
  return [`| ${head.join(' | ')} |`, `|${head.map(() => ' --- ').join('|')}|`, ...lines.map((l) => `| ${l.join(' | ')} |`)].join('\n');
}
