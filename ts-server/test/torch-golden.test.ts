// The additive rule against torch.optim: golden float64 trajectories written
// by python-runner/scripts/make_golden.py (MUR_GOLDEN names a freshly
// regenerated file; `make test` does that where torch is installed).
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { resolveGroup, resolveSpec } from '../src/registry';
import { Session } from '../src/session/session';
import { refStep, type H, type RefState } from './reference/reference';

interface Case {
  optimizer: string;
  hypers: Record<string, unknown>;
  theta0: number[];
  grads: number[][];
  trajectory: number[][];
  /** Set by make_golden.py where this torch version is known to differ. */
  torch_quirk?: string;
  /** Set by make_golden.py where this torch lacks an argument of the case (no trajectory then). */
  torch_missing?: string;
}

const file = process.env.MUR_GOLDEN || path.join(__dirname, '../../test/golden/torch_additive.json');
const golden = JSON.parse(fs.readFileSync(file, 'utf8')) as { torch_version: string; cases: Case[] };

describe(`additive rule vs torch.optim ${golden.torch_version} (${path.basename(file)})`, () => {
  for (const c of golden.cases) {
    const title = `${c.optimizer} ${JSON.stringify(c.hypers)}`;
    if (c.torch_missing) {
      it(`not in this torch: ${title}`, function () {
        console.log(`      ${c.torch_missing}`);
        this.skip();
      });
      continue;
    }
    const spec = resolveSpec({ optimizer: c.optimizer, rule: 'additive', defaults: c.hypers });

    // Both float64: only the order of floating-point operations differs, so
    // 30 steps agree to ~1e-13; 1e-10 leaves room and still catches any
    // formula difference (those are >= 1e-6 after one step).
    it(`reference == torch (float64, 1e-10): ${title}`, function () {
      if (c.torch_quirk) this.skip(); // reason printed by the test below
      const h = resolveGroup(spec, '') as H;
      let th = c.theta0.slice();
      const s: RefState = {};
      c.grads.forEach((g, k) => {
        th = refStep(c.optimizer, 'additive', th, g, s, {}, h, k + 1);
        th.forEach((v, i) =>
          assert.ok(Math.abs(v - c.trajectory[k][i]) <= 1e-10, `step ${k + 1} element ${i}: ${v} vs torch ${c.trajectory[k][i]}`),
        );
      });
    });

    if (c.torch_quirk) {
      it(`known torch difference: ${title}`, () => console.log(`      torch ${golden.torch_version}: ${c.torch_quirk}`));
    }

    // float32 engine vs float64 torch: the inputs' rounding (u = 6e-8) and ~10
    // ops a step over 30 steps. Observed worst: 3e-7 relative (wasm, torch
    // 1.13); 2e-6 leaves a 7x margin and still catches NAdam's 3e-5 quirk.
    it(`engine == torch (float32, 2e-6): ${title}`, function () {
      if (c.torch_quirk) this.skip();
      const n = c.theta0.length;
      const session = new Session('golden', spec, [{ id: 'p', name: 'p', shape: [n], group: '', values: Float32Array.from(c.theta0) }]);
      try {
        c.grads.forEach((g, k) => {
          const out = session.step(k + 1, [{ id: 'p', data: Float32Array.from(g) }]).values[0].data;
          out.forEach((v, i) => {
            const want = c.trajectory[k][i];
            assert.ok(Math.abs(v - want) <= 2e-6 * (1 + Math.abs(want)), `step ${k + 1} element ${i}: ${v} vs torch ${want}`);
          });
        });
      } finally {
        session.dispose();
      }
    });
  }
});
