// The limit kernel (native/src/limit.cc) as a side for the Python benches
// (mur_lab.bench_train): Adam's memory traffic (read p, g, m, v; write p, m,
// v: 28 bytes per parameter) with no maths, on the engine's pool, task size
// and kind of memory (huge pages from 2 MiB), so that a Python process can
// alternate it with torch and mur steps in one run.
// Usage: node dist/bench/limit.js PARAMS THREADS; prints one JSON line
// {"params", "threads"} when its arrays are ready, then for every line on stdin
// runs the kernel once and prints its seconds; exits when stdin closes.
import * as readline from 'readline';
import { loadNative } from '../src/engine/native';

const [n, threads] = [Number(process.argv[2]), Number(process.argv[3] ?? 0)];
const addon = loadNative();
if (!addon || !(n > 0)) {
  console.error(addon ? 'usage: node dist/bench/limit.js PARAMS THREADS' : 'the native engine did not load');
  process.exit(2);
}
const used = addon.setThreads(threads);
const own = (value: number) => addon.allocFloats(n).fill(value); // every page touched before the first run
const [p, g, m, v] = [own(1), own(1e-3), own(1e-3), own(1e-4)];
console.log(JSON.stringify({ params: n, threads: used }));
const lines = readline.createInterface({ input: process.stdin });
lines.on('line', () => {
  const t0 = process.hrtime.bigint();
  addon.limit(p, g, m, v);
  console.log(Number(process.hrtime.bigint() - t0) / 1e9);
});
lines.on('close', () => process.exit(0));
