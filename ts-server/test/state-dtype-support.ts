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
