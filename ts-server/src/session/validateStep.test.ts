// StepRequest.validate_only (phase 1 of a step across servers, docs/scale-out.md):
// the step's every check with the step's status, and nothing applied: the
// checkpoint is unchanged whole, the number is not used up, and the real step
// afterwards equals one in a session that never saw a validation. (The arena
// path is exercised by python-runner/tests/test_sharding.py on shm.)
import { strict as assert } from 'assert';
import { status } from '@grpc/grpc-js';
import { DType, type StepRequest } from '../../generated/mur/v1/optimizer';
import { bytes, create, exportAll, expectStatus, floats, startHarness, step, type Harness } from '../../test/harness';

const F32 = DType.DTYPE_FLOAT32;
const spec = { optimizer: 'adam', rule: 'additive', defaults: { lr: 0.01 }, groups: {} };
const W0 = [0.5, -1, 2, 0.25];
const g = (k: number) => [0.1 * k, -0.2, 0.3, -0.05 * k];
const req = (sessionId: string, n: number, data: number[], extra: Partial<StepRequest> = {}): StepRequest => ({
  sessionId,
  step: n,
  groupOverrides: {},
  arenaGrads: [],
  grads: [{ paramId: 'w', grad: { shape: [data.length], dtype: F32, data: bytes(data) } }],
  ...extra,
});

describe('Step with validate_only', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness();
  });
  after(async () => h.close());

  const session = async () =>
    (await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [4], dtype: F32, group: '', data: bytes(W0) }] })).sessionId;

  it('checks like the step, applies nothing, and leaves the number to the real step', async () => {
    const [a, b] = [await session(), await session()];
    await step(h, req(a, 1, g(1)));
    await step(h, req(b, 1, g(1)));
    const before = await exportAll(h, a);

    const ok = await step(h, req(a, 2, g(2), { validateOnly: true }));
    assert.equal(ok.replayed, false);
    assert.equal(ok.params.length, 0);
    const nan = g(2);
    nan[2] = NaN;
    await expectStatus(step(h, req(a, 2, nan, { validateOnly: true })), status.INVALID_ARGUMENT, "'w'", 'element 2', 'NaN');
    await expectStatus(step(h, req(a, 2, [1, 2], { validateOnly: true })), status.INVALID_ARGUMENT, 'shape [2]');
    await expectStatus(
      step(h, req(a, 2, g(2), { validateOnly: true, groupOverrides: { '': { betas: [0.9, 1.5] } } })),
      status.INVALID_ARGUMENT,
      '1.5',
    );
    await expectStatus(step(h, req(a, 1, g(5), { validateOnly: true })), status.FAILED_PRECONDITION, 'already applied');
    await expectStatus(step(h, req(a, 0, g(2), { validateOnly: true })), status.INVALID_ARGUMENT, 'step');
    // The last step's own request: the real step would replay it.
    assert.equal((await step(h, req(a, 1, g(1), { validateOnly: true }))).replayed, true);
    assert.deepEqual(await exportAll(h, a), before);

    const ra = await step(h, req(a, 2, g(2)));
    const rb = await step(h, req(b, 2, g(2)));
    assert.equal(ra.replayed, false);
    assert.deepEqual(Array.from(floats(ra.params[0].value!.data)), Array.from(floats(rb.params[0].value!.data)));
    assert.notDeepEqual(await exportAll(h, a), before);
  });
});
