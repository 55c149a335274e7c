// L-BFGS steps from the TypeScript client (src/closure.ts) against an
// in-process server: a least-squares problem whose minimum is known, the
// closure called at the server's points, and the first loss returned.
import { strict as assert } from 'assert';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import { MurClient, type Values } from '../src';

describe('L-BFGS steps (stepClosure)', () => {
  let server: RunningServer;
  let client: MurClient;
  before(async () => {
    await initBackend('wasm');
    server = await startServer({ port: 0 });
    client = new MurClient(`127.0.0.1:${server.port}`);
  });
  after(async () => {
    client.close();
    await server.close();
  });

  it('minimises sum_i (i + 1) (w_i - i)^2 + (b - 3)^2 in one step; the first loss and the evaluations come back', async () => {
    const w0 = new Float32Array(5);
    const s = await client.createSession({ optimizer: 'lbfgs', rule: 'additive', defaults: { line_search_fn: 'strong_wolfe' } }, [
      { id: 'w', shape: [5], values: w0 },
      { id: 'b', shape: [], values: Float32Array.of(0) },
    ]);
    try {
      let calls = 0;
      let here: Values = new Map([
        ['w', w0],
        ['b', Float32Array.of(0)],
      ]);
      const closure = (params: Values | null) => {
        calls++;
        if (params) here = params;
        const w = here.get('w')!;
        const b = here.get('b')![0];
        let loss = (b - 3) ** 2;
        const g = new Float32Array(5);
        w.forEach((v, i) => {
          loss += (i + 1) * (v - i) ** 2;
          g[i] = 2 * (i + 1) * (v - i);
        });
        return {
          loss,
          grads: new Map([
            ['w', g],
            ['b', Float32Array.of(2 * (b - 3))],
          ]),
        };
      };
      const r = await s.stepClosure(closure);
      assert.equal(r.loss, 9 + [0, 1, 2, 3, 4].reduce((a, i) => a + (i + 1) * i * i, 0), 'the loss at the start');
      assert.equal(r.evaluations, calls);
      assert.ok(calls > 1);
      Array.from(r.values.get('w')!).forEach((v, i) => assert.ok(Math.abs(v - i) < 1e-4, `w[${i}] = ${v}`));
      assert.ok(Math.abs(r.values.get('b')![0] - 3) < 1e-4);
    } finally {
      await s.close();
    }
  });
});
