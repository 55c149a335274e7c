// Steps run off the event loop on the native engine: a large step does not
// stall other sessions, and steps on one session never interleave.
import { strict as assert } from 'assert';
import { currentEngine } from '../src/engine/engine';
import { resolveSpec } from '../src/registry';
import { Session } from '../src/session/session';

const adam = () => resolveSpec({ optimizer: 'adam', rule: 'hybrid', defaults: { lr_out: 1e-3, gamma: 0.5 } });
const session = (n: number, seed: number) =>
  new Session(`s${seed}`, adam(), [{ id: 'w', name: 'w', shape: [n], group: '', values: new Float32Array(n).fill(0.5 + seed / 10) }]);

describe('steps off the event loop (native engine)', () => {
  before(function () {
    if (!currentEngine().stepAsync) this.skip(); // the tfjs engines compute on the event loop
  });

  it('a small session keeps stepping while a large step runs', async () => {
    const big = session(24_000_000, 1);
    const small = session(1000, 2);
    const gBig = new Float32Array(24_000_000).fill(0.01);
    const gSmall = new Float32Array(1000).fill(0.01);
    try {
      let done = false;
      const started = process.hrtime.bigint();
      const large = big.stepAsync(1, [{ id: 'w', data: gBig }]).then((r) => {
        done = true;
        return r;
      });
      let smallSteps = 0;
      for (let t = 1; !done && t < 100_000; t++) {
        await small.stepAsync(t, [{ id: 'w', data: gSmall }]);
        if (!done) smallSteps++;
      }
      await large;
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      console.log(`      ${smallSteps} small steps completed during one ${ms.toFixed(0)} ms step of 24M parameters`);
      // Were steps run on the event loop, the large one would finish before the first
      // small one could: none would complete while it ran. How many do is the
      // machine's scheduling (2 here once on a loaded host), so one is the test.
      assert.ok(smallSteps >= 1, `no small step completed while the large one ran`);
    } finally {
      big.dispose();
      small.dispose();
    }
  });

  it('steps on one session queue in order and equal the same steps run one by one', async () => {
    const a = session(5000, 3);
    const b = session(5000, 3);
    const g = (k: number) => new Float32Array(5000).map((_, i) => Math.cos(i * k) * 0.1);
    try {
      // Issued together, without waiting: the session runs them in order.
      const all = await Promise.all(
        [1, 2, 3, 4].map((k) => a.stepAsync(k, [{ id: 'w', data: g(k) }]).then((r) => r.values[0].data.slice())),
      );
      let last = new Float32Array(0);
      for (let k = 1; k <= 4; k++) last = b.step(k, [{ id: 'w', data: g(k) }]).values[0].data.slice();
      assert.deepEqual(Buffer.from(all[3].buffer), Buffer.from(last.buffer));
      // A refused step in the queue does not stop the ones after it.
      const bad = g(5);
      bad[7] = NaN;
      const results = await Promise.allSettled([a.stepAsync(5, [{ id: 'w', data: bad }]), a.stepAsync(5, [{ id: 'w', data: g(5) }])]);
      assert.equal(results[0].status, 'rejected');
      assert.match(String(results[0].reason), /element 7 is NaN/);
      assert.equal(results[1].status, 'fulfilled');
      assert.equal((results[1] as PromiseFulfilledResult<{ replayed: boolean }>).value.replayed, false);
    } finally {
      a.dispose();
      b.dispose();
    }
  });
});
