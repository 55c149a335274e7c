// Where two threads start to beat one: the native engine's Adam step (additive
// and hybrid) on one tensor of n elements, 1 thread vs every core, median of
// per-step times. kParallelMin in native/src/kernels.cc comes from this.
//   node dist/bench/threshold.js
import { initBackend } from '../src/engine/backend';
import { currentEngine } from '../src/engine/engine';
import { NativeEngine } from '../src/engine/native';
import { resolveSpec } from '../src/registry';
import { Session } from '../src/session/session';

function median(rule: string, n: number, steps = 400): number {
  const values = new Float32Array(n).map((_, i) => Math.sin(i));
  const grad = new Float32Array(n).map((_, i) => 0.01 * Math.cos(i));
  const defaults = rule === 'hybrid' ? { lr_out: 1e-3, gamma: 0.9 } : {};
  const s = new Session('t', resolveSpec({ optimizer: 'adam', rule, defaults }), [{ id: 'w', name: 'w', shape: [n], group: '', values }]);
  const times: number[] = [];
  for (let t = 1; t <= steps; t++) {
    const t0 = process.hrtime.bigint();
    s.step(t, [{ id: 'w', data: grad }]);
    if (t > 20) times.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  s.dispose();
  times.sort((a, b) => a - b);
  return times[times.length >> 1];
}

async function main() {
  await initBackend('native');
  const engine = currentEngine() as NativeEngine;
  console.log('rule      elements   1 thread us   all threads us   speed-up');
  for (const rule of ['additive', 'hybrid']) {
    for (const n of [8192, 16384, 32768, 65536, 131072, 262144, 524288]) {
      engine.setThreads(1);
      const one = median(rule, n);
      engine.setThreads(0);
      const all = median(rule, n);
      console.log(
        `${rule.padEnd(9)} ${String(n).padStart(8)} ${one.toFixed(1).padStart(13)} ${all.toFixed(1).padStart(16)} ${(one / all).toFixed(2).padStart(10)}`,
      );
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
