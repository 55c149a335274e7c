// Per-group optimizers in one session (Spec.groupOptimizers): each group steps
// exactly as a session of its own optimizer would, the spec survives a
// checkpoint, and an unknown optimizer is refused by name.
import { strict as assert } from 'assert';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import { InvalidArgumentError, MurClient, type MurSession, type Spec } from '../src';

const mixed: Spec = {
  optimizer: 'sgd',
  rule: 'hybrid',
  defaults: { lr: 0.1, momentum: 0.9, gamma: 0.5 }, // gamma: the rule's, so every group's
  groups: { b: { lr: 0.01, betas: [0.8, 0.99] } },
  groupOptimizers: { b: 'adam' },
};
const w = () => ({ id: 'w', shape: [4], values: Float32Array.from([1, -2, 3, 0.5]) });
const u = () => ({ id: 'u', shape: [2, 2], values: Float32Array.from([0.3, -0.1, 2, -4]), group: 'b' });
const grad = (k: number) => Float32Array.from([0.1 * k, -1, 0.5, 2 - k]);

describe('MurSession with per-group optimizers', () => {
  let server: RunningServer;
  let client: MurClient;
  before(async () => {
    await initBackend(process.env.MUR_BACKEND === 'native' ? 'native' : 'wasm');
    server = await startServer({ port: 0 });
    client = new MurClient(`127.0.0.1:${server.port}`);
  });
  after(async () => {
    client.close();
    await server.close();
  });

  async function run(s: MurSession, ids: string[], from: number, to: number): Promise<Map<string, number[]>> {
    const out = new Map<string, number[]>();
    for (let k = from; k <= to; k++) {
      const got = await s.step(Object.fromEntries(ids.map((id) => [id, grad(k)])));
      for (const id of ids) out.set(id, Array.from(got.get(id)!));
    }
    return out;
  }

  it('each group steps as a session of its own optimizer (bit for bit), and a checkpoint keeps the mapping', async () => {
    const both = await client.createSession(mixed, [w(), u()], { transport: 'grpc' });
    const sgd = await client.createSession({ optimizer: 'sgd', rule: 'hybrid', defaults: { lr: 0.1, momentum: 0.9, gamma: 0.5 } }, [w()]);
    const adam = await client.createSession({ optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, betas: [0.8, 0.99], gamma: 0.5 } }, [
      { ...u(), group: '' },
    ]);
    try {
      const got = await run(both, ['w', 'u'], 1, 3);
      assert.deepEqual(got.get('w'), (await run(sgd, ['w'], 1, 3)).get('w'), 'the default group is SGD');
      assert.deepEqual(got.get('u'), (await run(adam, ['u'], 1, 3)).get('u'), 'group b is Adam');

      const cp = await both.checkpoint();
      assert.deepEqual(cp.spec?.groupOptimizers, { b: 'adam' });
      assert.ok(cp.tensors.some((t) => t.paramId === 'u' && t.slot === 'exp_avg_sq'));
      assert.ok(cp.tensors.some((t) => t.paramId === 'w' && t.slot === 'momentum_buffer'));
      const resumed = await client.createSession(mixed, [w(), u()]);
      try {
        await resumed.restore(cp);
        assert.deepEqual(await run(resumed, ['w', 'u'], 4, 5), await run(both, ['w', 'u'], 4, 5), 'restored = uninterrupted');
      } finally {
        await resumed.close();
      }
    } finally {
      await Promise.all([both.close(), sgd.close(), adam.close()]);
    }
  });

  it('an unknown optimizer for a group is refused as INVALID_ARGUMENT naming it', async () => {
    await assert.rejects(
      client.createSession({ ...mixed, groupOptimizers: { b: 'adamm' } }, [w(), u()]),
      (e: Error) => e instanceof InvalidArgumentError && /adamm/.test(e.message),
    );
  });
});
