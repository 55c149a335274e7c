// Groups with optimizers of their own in one session (the Muon recipe: Muon
// for the matrices, AdamW for the rest): one step runs each group's kernel,
// each parameter held to the float64 reference of its own optimizer; a
// group's hyperparameters are checked against its own optimizer's table; the
// spec round-trips through the wire with each group's optimizer.
import { strict as assert } from 'assert';
import { currentEngine } from '../src/engine/engine';
import { InvalidArgument } from '../src/errors';
import { specFromWire, specToWire } from '../src/grpc/spec';
import { isMixed, optimizerOf, resolveGroup, resolveSpec } from '../src/registry';
import { Session } from '../src/session/session';
import { refStep, type H, type RefState } from './reference/reference';

const SPEC = {
  optimizer: 'muon',
  rule: 'additive',
  group_optimizers: { rest: 'adamw' },
  groups: { mats: { lr: 0.02 }, rest: { lr: 3e-3, weight_decay: 0.01 } },
};
const PARAMS = [
  { id: 'w1', name: 'fc1.weight', shape: [6, 3], group: 'mats' },
  { id: 'b1', name: 'fc1.bias', shape: [6], group: 'rest' },
  { id: 'w2', name: 'fc2.weight', shape: [2, 6], group: 'mats' },
];
const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
const start = (k: number, n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(1.3 * i + k) * 0.5);

describe('mixed session: each group its own optimizer, one step', () => {
  it("muon + adamw: every parameter follows its optimizer's float64 reference (30 steps)", () => {
    const spec = resolveSpec(SPEC, ['mats', 'rest']);
    assert.ok(isMixed(spec));
    const session = new Session(
      'mixed',
      spec,
      PARAMS.map((p, k) => ({ ...p, values: start(k, size(p.shape)) })),
    );
    const ref = PARAMS.map((p, k) => Array.from(start(k, size(p.shape))));
    const states = PARAMS.map((): { s: RefState; rs: RefState } => ({ s: {}, rs: {} }));
    try {
      for (let t = 1; t <= 30; t++) {
        const grads = PARAMS.map((p, k) => ({
          id: p.id,
          data: Float32Array.from(ref[k], (v, i) => 0.6 * Math.cos(0.7 * i + 0.3 * t) + 0.4 * v),
        }));
        const out = session.step(t, grads).values;
        PARAMS.forEach((p, k) => {
          const h = resolveGroup(spec, p.group) as H;
          ref[k] = refStep(
            optimizerOf(spec, p.group).name,
            'additive',
            ref[k],
            Array.from(grads[k].data),
            states[k].s,
            states[k].rs,
            h,
            t,
            p.shape,
          );
          // Muon's tolerance (test/muon.test.ts): Newton-Schulz amplifies float32 rounding; AdamW's is far smaller.
          ref[k].forEach((v, i) => assert.ok(Math.abs(out[k].data[i] - v) <= 1e-4, `step ${t} ${p.name}[${i}]: ${out[k].data[i]} vs ${v}`));
        });
      }
      // Each parameter kept its own optimizer's slots.
      const slots = new Set([...session.exportTensors()].map((x) => `${x.paramId}:${x.slot}`));
      assert.ok(
        slots.has('w1:momentum_buffer') && slots.has('b1:exp_avg') && slots.has('b1:exp_avg_sq') && !slots.has('b1:momentum_buffer'),
      );
    } finally {
      session.dispose();
    }
  });

  it("the spec keeps each group's optimizer through the wire", () => {
    const spec = resolveSpec(specFromWire(specToWire(resolveSpec(SPEC, ['mats', 'rest']))), ['mats', 'rest']);
    assert.equal(optimizerOf(spec, 'rest').name, 'adamw');
    assert.equal(optimizerOf(spec, 'mats').name, 'muon');
    assert.equal(resolveGroup(spec, 'rest').weight_decay, 0.01);
    assert.equal(resolveGroup(spec, 'mats').ns_steps, 5);
  });

  for (const [change, words] of [
    [{ groups: { ...SPEC.groups, rest: { lr: 3e-3, ns_steps: 3 } } }, ['groups.rest', "'ns_steps'"]],
    [{ groups: { ...SPEC.groups, rest: { lr: 3e-3, momentum: 0.9 } } }, ['groups.rest', "'momentum'"]],
    [{ groups: { ...SPEC.groups, mats: { lr: 0.02, betas: [0.9, 0.99] } } }, ['groups.mats', "'betas'"]],
    [{ groups: { ...SPEC.groups, rest: { lr: -1 } } }, ['groups.rest.lr', '-1']],
    [{ group_optimizers: { rest: 'adamx' } }, ['group_optimizers.rest', '"adamx"']],
  ] as const) {
    it(`refuses ${JSON.stringify(change)} naming ${words.join(' ')}`, () => {
      assert.throws(
        () => resolveSpec({ ...SPEC, ...change }, ['mats', 'rest']),
        (e: Error) => e instanceof InvalidArgument && words.every((w) => e.message.includes(w)),
      );
    });
  }

  it("refuses a parameter its group's optimizer cannot take, naming it (a bias in the muon group)", () => {
    assert.throws(
      () =>
        new Session('mixed', resolveSpec(SPEC, ['mats', 'rest']), [
          { id: 'w1', name: 'fc1.weight', shape: [6, 3], group: 'mats', values: new Float32Array(18) },
          { id: 'b1', name: 'fc1.bias', shape: [6], group: 'mats', values: new Float32Array(6) },
        ]),
      (e: Error) => e instanceof InvalidArgument && e.message.includes("'fc1.bias'") && e.message.includes('muon'),
    );
  });

  // A group's parameters step as they would in a session of that optimizer alone (same index, same state format).
  const alone = (spec: object, mixedSpec: object, grads: (t: number) => Array<{ id: string; data: Float32Array; rows?: Uint32Array }>) => {
    const decls = [
      { id: 'e', name: 'emb.weight', shape: [5, 2], group: 'rest', values: start(0, 10) },
      { id: 'w', name: 'fc.weight', shape: [3, 2], group: 'mats', values: start(1, 6) },
    ];
    const mixed = new Session('mixed', resolveSpec(mixedSpec, ['mats', 'rest']), decls);
    const single = new Session('single', resolveSpec(spec, ['rest']), [{ ...decls[0], values: start(0, 10) }]);
    try {
      for (let t = 1; t <= 5; t++) {
        const g = grads(t);
        const a = mixed.step(t, g).values[0];
        const b = single.step(t, [g[0]]).values[0];
        assert.deepEqual(Array.from(a.data), Array.from(b.data), `step ${t}`);
      }
    } finally {
      mixed.dispose();
      single.dispose();
    }
  };

  it('state_dtype bfloat16: every group keeps its state as the session says (sgd + adamw, as adamw alone)', () => {
    const state = { state_dtype: 'bfloat16', state_seed: 7 };
    alone(
      { optimizer: 'adamw', rule: 'additive', groups: { rest: { lr: 0.01 } }, ...state },
      {
        optimizer: 'sgd',
        rule: 'additive',
        group_optimizers: { rest: 'adamw' },
        groups: { mats: { lr: 0.1, momentum: 0.9 }, rest: { lr: 0.01 } },
        ...state,
      },
      (t) => [
        { id: 'e', data: Float32Array.from({ length: 10 }, (_, i) => Math.cos(0.7 * i + t)) },
        { id: 'w', data: Float32Array.from({ length: 6 }, (_, i) => Math.sin(0.3 * i + t)) },
      ],
    );
  });

  it('state_dtype bfloat16 with a muon group (issue 23): taken, its momentum stored as bfloat16 on an engine that stores it', function () {
    if (!currentEngine().storedStateDtypes.includes('bfloat16')) this.skip();
    const session = new Session(
      'mixed',
      resolveSpec({ ...SPEC, optimizer: 'sgd', group_optimizers: { mats: 'muon' }, state_dtype: 'bfloat16' }, ['mats', 'rest']),
      [{ id: 'w1', name: 'fc1.weight', shape: [6, 3], group: 'mats', values: Float32Array.from({ length: 18 }, (_, i) => Math.sin(i)) }],
    );
    try {
      session.step(1, [{ id: 'w1', data: Float32Array.from({ length: 18 }, (_, i) => Math.cos(0.3 * i)) }]);
      const buf = [...session.exportTensors()].find((x) => x.slot === 'momentum_buffer')!.data;
      assert.ok(buf.some((v) => v !== 0));
      const bits = new Uint32Array(buf.buffer, buf.byteOffset, buf.length);
      bits.forEach((b, i) => assert.equal(b & 0xffff, 0, `momentum_buffer[${i}] is not a bfloat16`));
    } finally {
      session.dispose();
    }
  });

  it('row-sparse gradients reach a group whose optimizer takes them (sparseadam beside muon, as sparseadam alone)', () => {
    alone(
      { optimizer: 'sparseadam', rule: 'additive', groups: { rest: { lr: 0.01 } } },
      { optimizer: 'muon', rule: 'additive', group_optimizers: { rest: 'sparseadam' }, groups: { mats: { lr: 0.02 }, rest: { lr: 0.01 } } },
      (t) => [
        {
          id: 'e',
          data: Float32Array.from({ length: 4 }, (_, i) => Math.cos(0.7 * i + t)),
          rows: Uint32Array.from(t % 2 ? [0, 3] : [1, 4]),
        },
        { id: 'w', data: Float32Array.from({ length: 6 }, (_, i) => Math.sin(0.3 * i + t)) },
      ],
    );
  });

  it('refuses a row-sparse gradient for a group whose optimizer does not take it (muon), naming it', () => {
    const session = new Session('mixed', resolveSpec(SPEC, ['mats', 'rest']), [
      { id: 'w1', name: 'fc1.weight', shape: [6, 3], group: 'mats', values: start(0, 18) },
      { id: 'b1', name: 'fc1.bias', shape: [6], group: 'rest', values: start(1, 6) },
    ]);
    try {
      assert.throws(
        () => session.step(1, [{ id: 'w1', data: new Float32Array(3), rows: Uint32Array.from([2]) }]),
        (e: Error) => e instanceof InvalidArgument && e.message.includes('muon') && e.message.includes('row-sparse'),
      );
    } finally {
      session.dispose();
    }
  });
});
