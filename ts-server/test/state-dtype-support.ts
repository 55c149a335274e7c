// What the state-dtype tests (bf16-state, q8-state) share: sessions of sine
// values, their tensors by "param/slot", a session's checkpoint frames
// addressed to another.
import { strict as assert } from 'assert';
import type { StateFrame } from '../generated/mur/v1/optimizer';
import { resolveSpec, type SpecJson } from '../src/registry';
import { Session, type SlotTensor } from '../src/session/session';
import { auth, type Harness } from './harness';

/** A session of `spec` with one 1-D parameter per size, p{k}[i] = sin(seed (i + 1) + k). */
export function session(spec: SpecJson, sizes: number[], seed = 1): Session {
  return new Session(
    `${spec.state_dtype ?? 'float32'}-state`,
    resolveSpec(spec),
    sizes.map((n, k) => ({
      id: `p${k}`,
      name: `p${k}`,
      shape: [n],
      group: '',
      values: Float32Array.from({ length: n }, (_, i) => Math.sin(seed * (i + 1) + k)),
    })),
  );
}

/** Every tensor of a session, by "param/slot". */
export const tensors = (s: Session) => new Map([...s.exportTensors()].map((t: SlotTensor) => [`${t.paramId}/${t.slot}`, t.data]));

/** The float32 bytes of a tensor, for bit-for-bit comparisons. */
export const bitsOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** ExportState's frames of session `from`, addressed to session `to` (a checkpoint restored elsewhere). */
export function framesOf(h: Harness, from: string, to: string): Promise<StateFrame[]> {
  return new Promise((resolve, reject) => {
    const out: StateFrame[] = [];
    const s = h.client.exportState({ sessionId: from }, auth(from));
    s.on('data', (f: StateFrame) => {
      if (f.frame?.$case === 'header') f.frame.value.sessionId = to;
      out.push(f);
    });
    s.on('error', reject);
    s.on('end', () => resolve(out));
  });
}

/** Asserts that a session of `spec` steps bit for bit as the same spec with float32 state (a tfjs engine keeps float32). */
export function assertSameTrajectoryAsFloat32(spec: SpecJson): void {
  const a = session({ ...spec }, [64]);
  const b = session({ ...spec, state_dtype: 'float32' }, [64]);
  try {
    for (let t = 1; t <= 5; t++) {
      const g = Float32Array.from({ length: 64 }, (_, i) => Math.cos(i + t));
      assert.ok(
        bitsOf(a.step(t, [{ id: 'p0', data: g }]).values[0].data).equals(bitsOf(b.step(t, [{ id: 'p0', data: g }]).values[0].data)),
      );
    }
  } finally {
    a.dispose();
    b.dispose();
  }
}

/**
 * The optimizers compact state reached in issue 23, each as a spec and a parameter: Muon (a matrix),
 * Schedule-Free (z float32), Adafactor (a matrix: every slot float32) and SparseAdam (row steps).
 */
export const COMPACT_CASES: Array<{ spec: SpecJson; shape: number[]; rows?: (t: number) => number[] }> = [
  { spec: { optimizer: 'muon', rule: 'additive', defaults: { lr: 0.02 } }, shape: [8, 5] },
  { spec: { optimizer: 'schedule_free_adamw', rule: 'additive', defaults: { lr: 0.01 } }, shape: [300] },
  { spec: { optimizer: 'adafactor', rule: 'additive', defaults: {} }, shape: [6, 7] },
  {
    spec: { optimizer: 'sparseadam', rule: 'additive', defaults: { lr: 0.01 } },
    shape: [100, 6],
    rows: (t) => Array.from({ length: 100 }, (_, r) => r).filter((r) => r < 90 && (r + t) % 3 !== 0),
  },
];

/**
 * A checkpoint of a session of `spec` on `dtype` state, taken after 3 steps (exportTensors: float32) and imported
 * into a new session (narrowed: bfloat16 to nearest, q8 quantised): the copy holds the same values and its next
 * 2 steps give the same bits as the original's.
 */
export function assertCheckpointRoundTrip(c: (typeof COMPACT_CASES)[number], dtype: 'bfloat16' | 'q8'): void {
  const spec = resolveSpec({ ...c.spec, state_dtype: dtype, state_seed: 9 });
  const n = c.shape.reduce((a, b) => a * b, 1);
  const make = (values: Float32Array | null) => new Session('rt', spec, [{ id: 'p0', name: 'p0', shape: c.shape, group: '', values }]);
  const grad = (t: number) => {
    const rows = c.rows?.(t);
    const len = rows ? rows.length * c.shape[1] : n;
    return { id: 'p0', data: Float32Array.from({ length: len }, (_, i) => Math.cos(0.37 * i + t)), rows: rows && Uint32Array.from(rows) };
  };
  const a = make(Float32Array.from({ length: n }, (_, i) => Math.sin(i + 1)));
  const b = make(null);
  try {
    for (let t = 1; t <= 3; t++) a.step(t, [grad(t)]);
    const saved = [...a.exportTensors()];
    b.importState(a.header(), saved);
    const same = () => {
      const ta = tensors(a),
        tb = tensors(b);
      assert.deepEqual([...tb.keys()].sort(), [...ta.keys()].sort());
      for (const [k, v] of ta) assert.ok(bitsOf(tb.get(k)!).equals(bitsOf(v)), `${c.spec.optimizer} ${dtype}: ${k} differs`);
    };
    same();
    for (let t = 4; t <= 5; t++) {
      a.step(t, [grad(t)]);
      b.step(t, [grad(t)]);
      same();
    }
  } finally {
    a.dispose();
    b.dispose();
  }
}
