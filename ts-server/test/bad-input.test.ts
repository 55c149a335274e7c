// Every bad input gets the right status and a message naming what is wrong,
// and leaves the session exactly as it was (compared bit for bit through
// ExportState before and after).
import { strict as assert } from 'assert';
import { status, type ServiceError } from '@grpc/grpc-js';
import { DType, type StateFrame, type StepStreamRequest } from '../generated/mur/v1/optimizer';
import { bytes, closeSession, create, exportAll, grads, importFrames, startHarness, step, stream, type Harness } from './harness';

const F32 = DType.DTYPE_FLOAT32;

describe('bad input: precise status, session unchanged', () => {
  let h: Harness;
  let sid: string;
  let snapshot: Awaited<ReturnType<typeof exportAll>>;

  before(async () => {
    // A small message limit so "oversized" is cheap to provoke.
    h = await startHarness({ maxMessageBytes: 1024 * 1024, chunkBytes: 1024, maxStreamElements: 1_000_000 });
    sid = (
      await create(h, {
        spec: { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01 }, groups: {} },
        params: [
          { id: 'w', name: 'fc.weight', shape: [2, 3], dtype: F32, group: '', data: bytes([1, 2, 3, 4, 5, 6]) },
          { id: 'b', name: 'fc.bias', shape: [3], dtype: F32, group: '', data: bytes([0, 0, 0]) },
        ],
      })
    ).sessionId;
    await step(h, {
      sessionId: sid,
      step: 1,
      grads: grads({ w: { shape: [2, 3], data: [1, 1, 1, 1, 1, 1] }, b: { shape: [3], data: [1, 2, 3] } }),
      groupOverrides: {},
    });
    snapshot = await exportAll(h, sid);
  });
  after(async () => {
    await closeSession(h, sid);
    await h.close();
  });

  async function expectRefused(p: Promise<unknown>, code: status, ...words: string[]) {
    const e = await p.then(
      () => assert.fail('the call succeeded'),
      (x: ServiceError) => x,
    );
    assert.equal(e.code, code, `status ${status[e.code]} (${e.details}), expected ${status[code]}`);
    for (const w of words) assert.ok(e.details.includes(w), `"${e.details}" does not name ${w}`);
    assert.ok(!e.details.includes('    at '), 'no stack trace reaches the client');
    assert.deepEqual(await exportAll(h, sid), snapshot, 'the session changed');
  }
  const good = () => grads({ w: { shape: [2, 3], data: [1, 1, 1, 1, 1, 1] } });

  it('unknown session: no token -> UNAUTHENTICATED; a closed session with its own token -> NOT_FOUND saying how to resume', async () => {
    await expectRefused(step(h, { sessionId: 'nope', step: 2, grads: good(), groupOverrides: {} }), status.UNAUTHENTICATED, 'token');
    const gone = await create(h, {
      spec: { optimizer: 'sgd', rule: 'additive', defaults: { lr: 1 }, groups: {} },
      params: [{ id: 'x', name: 'x', shape: [1], dtype: F32, group: '', data: bytes([1]) }],
    });
    await closeSession(h, gone.sessionId);
    await expectRefused(
      step(h, { sessionId: gone.sessionId, step: 1, grads: [], groupOverrides: {} }),
      status.NOT_FOUND,
      gone.sessionId,
      'restore a checkpoint',
    );
  });

  it('unknown optimizer, unknown rule, bad hyperparameter -> INVALID_ARGUMENT naming field and value', async () => {
    const p = [{ id: 'x', name: 'x', shape: [1], dtype: F32, group: '', data: bytes([1]) }];
    await expectRefused(
      create(h, { spec: { optimizer: 'adamm', rule: 'hybrid', groups: {} }, params: p }),
      status.INVALID_ARGUMENT,
      'optimizer',
      '"adamm"',
    );
    await expectRefused(
      create(h, { spec: { optimizer: 'adam', rule: 'multiplicativ', groups: {} }, params: p }),
      status.INVALID_ARGUMENT,
      'rule',
      '"multiplicativ"',
    );
    await expectRefused(
      create(h, { spec: { optimizer: 'adam', rule: 'hybrid', defaults: { betas: [0.9, 1.5] }, groups: {} }, params: p }),
      status.INVALID_ARGUMENT,
      'defaults.betas[1]',
      '1.5',
    );
    await expectRefused(
      create(h, { spec: { optimizer: 'adam', rule: 'hybrid', defaults: { momentum: 0.9 }, groups: {} }, params: p }),
      status.INVALID_ARGUMENT,
      'momentum',
    );
    await expectRefused(
      create(h, { spec: { optimizer: 'sgd', rule: 'additive', groups: {} }, params: p }),
      status.INVALID_ARGUMENT,
      'lr',
      'required',
    );
  });

  it('bad step overrides -> INVALID_ARGUMENT, nothing applied', async () => {
    await expectRefused(
      step(h, { sessionId: sid, step: 2, grads: good(), groupOverrides: { '': { gamma: 2 } } }),
      status.INVALID_ARGUMENT,
      'gamma',
      '2',
    );
    await expectRefused(
      step(h, { sessionId: sid, step: 2, grads: good(), groupOverrides: { '': { amsgrad: true } } }),
      status.INVALID_ARGUMENT,
      'amsgrad',
      'cannot change',
    );
    await expectRefused(
      step(h, { sessionId: sid, step: 2, grads: good(), groupOverrides: { decoder: { lr: 0.1 } } }),
      status.INVALID_ARGUMENT,
      'decoder',
    );
  });

  it('wrong parameter id, shape, dtype, byte length -> INVALID_ARGUMENT naming it', async () => {
    const s = (g: ReturnType<typeof grads>) => step(h, { sessionId: sid, step: 2, grads: g, groupOverrides: {} });
    await expectRefused(s(grads({ ww: { shape: [2, 3], data: [1, 1, 1, 1, 1, 1] } })), status.INVALID_ARGUMENT, "'ww'");
    await expectRefused(s(grads({ w: { shape: [3, 2], data: [1, 1, 1, 1, 1, 1] } })), status.INVALID_ARGUMENT, "'w'", '[3,2]');
    const f64 = good();
    f64[0].grad.dtype = DType.DTYPE_FLOAT64;
    await expectRefused(s(f64), status.INVALID_ARGUMENT, 'DTYPE_FLOAT64');
    const short = good();
    short[0].grad.data = short[0].grad.data.subarray(0, 20);
    await expectRefused(s(short), status.INVALID_ARGUMENT, "'w'", '5');
    // A valid gradient for w next to a bad one for b: neither is applied.
    await expectRefused(s([...good(), ...grads({ b: { shape: [2], data: [1, 1] } })]), status.INVALID_ARGUMENT, "'b'");
  });

  it('NaN or Inf in a gradient -> INVALID_ARGUMENT naming the parameter and element', async () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const g = grads({ w: { shape: [2, 3], data: [1, 1, 1, 1, bad, 1] } });
      await expectRefused(step(h, { sessionId: sid, step: 2, grads: g, groupOverrides: {} }), status.INVALID_ARGUMENT, "'w'", 'element 4');
    }
  });

  it('a step number below the last applied one -> FAILED_PRECONDITION', async () => {
    await step(h, { sessionId: sid, step: 5, grads: good(), groupOverrides: {} });
    snapshot = await exportAll(h, sid);
    await expectRefused(step(h, { sessionId: sid, step: 3, grads: good(), groupOverrides: {} }), status.FAILED_PRECONDITION, '3', '5');
  });

  it('oversized unary message -> RESOURCE_EXHAUSTED', async () => {
    const big = grads({ w: { shape: [2, 3], data: new Float32Array(400_000) } });
    await expectRefused(step(h, { sessionId: sid, step: 9, grads: big, groupOverrides: {} }), status.RESOURCE_EXHAUSTED);
  });

  const begin = (n: number): StepStreamRequest => ({ frame: { $case: 'begin', value: { sessionId: sid, step: n, groupOverrides: {} } } });
  const chunk = (offset: number, data: number[], total = 6, paramId = 'w'): StepStreamRequest => ({
    frame: { $case: 'grad', value: { paramId, slot: '', offset, totalElements: total, dtype: F32, data: bytes(data) } },
  });
  const end: StepStreamRequest = { frame: { $case: 'end', value: {} } };
  async function streamRefused(frames: StepStreamRequest[], code: status, ...words: string[]) {
    const r = await stream(h, frames);
    assert.ok(r.error, 'the stream ended without an error');
    await expectRefused(Promise.reject(r.error), code, ...words);
    assert.equal(r.replies.filter((x) => x.frame?.$case === 'done').length, 0);
  }

  it('chunk streams: out of order, truncated, inconsistent, oversized, unframed -> precise statuses', async () => {
    await streamRefused([begin(10), chunk(0, [1, 1]), chunk(4, [1, 1]), end], status.OUT_OF_RANGE, 'expected offset 2');
    await streamRefused([begin(10), chunk(2, [1, 1]), end], status.OUT_OF_RANGE, 'offset 0');
    await streamRefused([begin(10), chunk(0, [1, 1]), end], status.ABORTED, 'truncated', '2 of 6');
    await streamRefused([begin(10), chunk(0, [1, 1]), chunk(2, [1, 1], 8), end], status.INVALID_ARGUMENT, 'total_elements 8');
    await streamRefused([begin(10), chunk(0, [1, 1, 1, 1, 1, 1, 1], 7)], status.INVALID_ARGUMENT, 'total_elements 7', 'has 6');
    await streamRefused([begin(10), chunk(0, [1, 1, 1, 1, 1, 1]), chunk(6, [1])], status.OUT_OF_RANGE, 'already complete');
    await streamRefused([chunk(0, [1, 1, 1, 1, 1, 1]), end], status.OUT_OF_RANGE, 'StepBegin');
    await streamRefused([begin(10), begin(11)], status.OUT_OF_RANGE, 'still open');
    await streamRefused([begin(10), chunk(0, [1, 1, 1, 1, 1, NaN]), end], status.INVALID_ARGUMENT, 'element 5');
    // Client half-closes inside a step: nothing is applied.
    await streamRefused([begin(10), chunk(0, [1, 1, 1, 1, 1, 1])], status.ABORTED, 'no StepEnd');
    // Client cancels inside a step: nothing is applied either.
    await stream(h, [begin(10), chunk(0, [1, 1, 1, 1, 1, 1])], false);
    assert.deepEqual(await exportAll(h, sid), snapshot);
  });

  it('oversized stream -> RESOURCE_EXHAUSTED', async () => {
    const h2 = await startHarness({ maxStreamElements: 4 });
    const s = await create(h2, {
      spec: { optimizer: 'sgd', rule: 'additive', defaults: { lr: 1 }, groups: {} },
      params: [{ id: 'w', name: 'w', shape: [6], dtype: F32, group: '', data: bytes([1, 2, 3, 4, 5, 6]) }],
    });
    const r = await stream(h2, [
      { frame: { $case: 'begin', value: { sessionId: s.sessionId, step: 1, groupOverrides: {} } } },
      {
        frame: {
          $case: 'grad',
          value: { paramId: 'w', slot: '', offset: 0, totalElements: 6, dtype: F32, data: bytes([1, 1, 1, 1, 1, 1]) },
        },
      },
      end,
    ]);
    assert.equal(r.error?.code, status.RESOURCE_EXHAUSTED, r.error?.details);
    await h2.close();
  });

  it('bad ImportState streams -> precise statuses, all or nothing', async () => {
    const header: StateFrame = { frame: { $case: 'header', value: { sessionId: sid, stepCounts: [], lastStep: 0 } } };
    const c = (paramId: string, slot: string, data: number[], offset = 0, total = data.length): StateFrame => ({
      frame: { $case: 'chunk', value: { paramId, slot, offset, totalElements: total, dtype: F32, data: bytes(data) } },
    });
    // A good tensor followed by a bad one: the good one is not applied either.
    await expectRefused(
      importFrames(h, [header, c('w', '', [9, 9, 9, 9, 9, 9]), c('b', 'exp_avg', [1, 1])]),
      status.INVALID_ARGUMENT,
      "'b'",
      'exp_avg',
    );
    await expectRefused(importFrames(h, [header, c('zz', '', [1])]), status.INVALID_ARGUMENT, "'zz'");
    await expectRefused(importFrames(h, [header, c('w', '', [1, 1, 1], 0, 6)]), status.ABORTED, 'truncated');
    await expectRefused(importFrames(h, [c('w', '', [1, 1, 1, 1, 1, 1])]), status.FAILED_PRECONDITION, 'StateHeader');
    await expectRefused(importFrames(h, [header, c('w', '', [1, 1, 1, 1, 1, Infinity])]), status.INVALID_ARGUMENT, 'element 5');
    // Another algorithm's state: refused at import, naming the slot and the ones this session has.
    await expectRefused(
      importFrames(h, [header, c('w', 'momentum_buffer', [1, 1, 1, 1, 1, 1])]),
      status.INVALID_ARGUMENT,
      "'w' slot 'momentum_buffer'",
      'exp_avg',
    );
    await expectRefused(importFrames(h, [header, c('w', 'rule.max', [1])]), status.INVALID_ARGUMENT, "'rule.max'");
    await expectRefused(importFrames(h, [header, c('w', 'exp_avg', [1, 1])]), status.INVALID_ARGUMENT, "'w' slot 'exp_avg'", 'expected 6');
  });
});
