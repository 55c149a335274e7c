// Row-sparse steps from the TypeScript client (src/rows.ts) against an
// in-process server: SparseAdam's first step moves each touched element by
// lr against its gradient's sign, duplicate rows are summed before they
// leave, other rows never move, and the server's refusal of a dense
// gradient for SparseAdam reaches the caller as InvalidArgumentError.
import { strict as assert } from 'assert';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import { InvalidArgumentError, MurClient } from '../src';
import { coalesceRows } from '../src/rows';

describe('row-sparse steps (stepRows)', () => {
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

  it('coalesces: sorted rows, duplicates summed', () => {
    const c = coalesceRows({ rows: [4, 1, 4], values: Float32Array.from([1, 2, 10, 20, 100, 200]) }, 2, 'e');
    assert.deepEqual(c.rows, [1, 4]);
    assert.deepEqual(Array.from(c.values), [10, 20, 101, 202]);
  });

  it('steps the touched rows only and answers them; a dense gradient for sparseadam is refused', async () => {
    const start = Float32Array.from({ length: 12 }, (_, i) => i / 4);
    const s = await client.createSession({ optimizer: 'sparseadam', rule: 'additive', defaults: { lr: 0.1 } }, [
      { id: 'e', shape: [4, 3], values: start },
    ]);
    try {
      // Row 2 twice: its gradient is the sum (1 + 1, -2 + 3, 0.5 - 1).
      const out = await s.stepRows({ e: { rows: [2, 0, 2], values: Float32Array.from([1, -2, 0.5, 3, 3, -3, 1, 3, -1]) } });
      const r = out.get('e')!;
      assert.deepEqual(Array.from(r.rows), [0, 2]);
      const signs = [1, 1, -1, 1, 1, -1]; // rows 0 and 2 after coalescing: (3, 3, -3) and (2, 1, -0.5)
      const want = [0, 1, 2, 6, 7, 8].map((i, k) => start[i] - 0.1 * signs[k]);
      r.values.forEach((v, i) => assert.ok(Math.abs(v - want[i]) < 1e-6, `value ${i}: ${v} vs ${want[i]}`));
      await assert.rejects(
        s.step({ e: new Float32Array(12).fill(1) }),
        (e: unknown) => e instanceof InvalidArgumentError && e.message.includes('row-sparse gradients only'),
      );
      const ck = await s.checkpoint();
      const theta = ck.tensors.find((t) => t.paramId === 'e' && t.slot === '')!.values;
      for (const i of [3, 4, 5, 9, 10, 11]) assert.equal(theta[i], start[i], `untouched element ${i} moved`);
    } finally {
      await s.close();
    }
  });
});
