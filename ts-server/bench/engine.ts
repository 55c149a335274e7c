// make bench-engine: server-side step throughput (a Session step: finite
// check, gradient upload, optimizer + rule, commit, reading the new values
// back) per optimizer x rule x backend, beside torch.optim measured in the
// same run. Prints a table, then one JSON line per row.
import { execFileSync } from 'child_process';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { availableBackends, initBackend, type BackendName } from '../src/engine/backend';
import { resolveSpec } from '../src/registry';
import { Session } from '../src/session/session';

const SIZES = (process.env.BENCH_SIZES ?? '1000000,4000000').split(',').map(Number);
const OPTIMIZERS: Array<[string, Record<string, unknown>]> = [
  ['sgd', { lr: 0.01, momentum: 0.9 }],
  ['adam', {}],
  ['adagrad', {}],
  ['rmsprop', {}],
];
const RULES = ['additive', 'multiplicative', 'hybrid'];
const MIN_SECONDS = Number(process.env.BENCH_SECONDS ?? 1);

function measure(optimizer: string, hypers: Record<string, unknown>, rule: string, n: number): number {
  const values = new Float32Array(n).map((_, i) => Math.sin(i));
  const grad = new Float32Array(n).map((_, i) => 0.01 * Math.cos(i));
  const s = new Session('bench', resolveSpec({ optimizer, rule, defaults: hypers }), [{ id: 'w', name: 'w', shape: [n], group: '', values }]);
  try {
    let t = 0;
    for (; t < 2; ) s.step(++t, [{ id: 'w', data: grad }]);
    const start = process.hrtime.bigint();
    let steps = 0;
    for (;;) {
      s.step(++t, [{ id: 'w', data: grad }]);
      steps++;
      const sec = Number(process.hrtime.bigint() - start) / 1e9;
      if (steps >= 3 && sec >= MIN_SECONDS) return (n * steps) / sec / 1e6;
    }
  } finally {
    s.dispose();
  }
}

async function main() {
  const py = process.env.PYTHON ?? '/usr/bin/python3';
  const script = path.join(__dirname, '../../../python-runner/scripts/bench_torch_optim.py');
  process.stderr.write('torch.optim ...\n');
  const torch = JSON.parse(execFileSync(py, [script, SIZES.join(','), OPTIMIZERS.map((o) => o[0]).join(',')], { encoding: 'utf8' }));
  const backends = availableBackends().filter((b): b is BackendName => b === 'tensorflow' || b === 'wasm');
  const rows: Array<Record<string, unknown>> = [];
  for (const backend of backends) {
    await initBackend(backend);
    for (const [optimizer, hypers] of OPTIMIZERS) {
      for (const rule of RULES) {
        for (const n of SIZES) {
          process.stderr.write(`${backend} ${optimizer} ${rule} ${n} ...\n`);
          const mps = measure(optimizer, hypers, rule, n);
          const tm = torch[optimizer][String(n)];
          rows.push({ optimizer, rule, backend, params: n, mparams_per_s: +mps.toFixed(1), torch_mparams_per_s: +tm.toFixed(1), ratio: +(mps / tm).toFixed(3) });
        }
      }
    }
  }
  console.log(`torch ${torch.torch_version} (${torch.threads} threads), tfjs ${tf.version_core}; Mparam/s of one step on one float32 tensor`);
  console.log('optimizer  rule            backend     params    mur Mp/s  torch Mp/s  ratio');
  for (const r of rows) {
    console.log(
      `${String(r.optimizer).padEnd(10)} ${String(r.rule).padEnd(15)} ${String(r.backend).padEnd(11)} ${String(r.params).padStart(7)} ${String(r.mparams_per_s).padStart(10)} ${String(r.torch_mparams_per_s).padStart(11)} ${String(r.ratio).padStart(6)}`,
    );
  }
  for (const r of rows) console.log(JSON.stringify(r));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
