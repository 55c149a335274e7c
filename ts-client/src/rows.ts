// Row-sparse steps (the server's docs/data-path.md, "Row-sparse gradients"):
// for an embedding table [n, ...], the gradient of some rows only. The rows
// are coalesced here (sorted, duplicate rows summed), as torch coalesces a
// sparse gradient, and go in one Step message whatever the session's
// transport (they are a small part of the table); the reply carries the new
// values of those rows only.
import type { Gradient, StepReply, StepRequest } from '../generated/mur/v1/optimizer';
import { bytes, F32, floats } from './chunks';
import type { SessionLink } from './plane';
import type { Overrides } from './types';

/** A row-sparse gradient: row indices and their rows' values, packed (rows.length x row length). */
export interface RowGrad {
  rows: ArrayLike<number>;
  values: Float32Array;
}

/** Sorted rows with duplicates summed; `values` of whole rows of `rowLen`. */
export function coalesceRows(g: RowGrad, rowLen: number, what: string): { rows: number[]; values: Float32Array } {
  if (g.values.length !== g.rows.length * rowLen) {
    throw new TypeError(`${what}: ${g.values.length} values for ${g.rows.length} rows of ${rowLen}`);
  }
  const order = Array.from({ length: g.rows.length }, (_, k) => k).sort((a, b) => g.rows[a] - g.rows[b]);
  const rows: number[] = [];
  const out: number[][] = [];
  for (const k of order) {
    const row = g.values.subarray(k * rowLen, (k + 1) * rowLen);
    if (rows.length > 0 && rows[rows.length - 1] === g.rows[k]) {
      const acc = out[out.length - 1];
      row.forEach((v, e) => (acc[e] += v));
    } else {
      rows.push(g.rows[k]);
      out.push(Array.from(row));
    }
  }
  return { rows, values: Float32Array.from(out.flat()) };
}

/** One attempt of a row-sparse step: the new values of each parameter's touched rows. */
export async function stepRows(
  s: SessionLink,
  grads: Map<string, RowGrad>,
  overrides: Overrides,
  step: number,
): Promise<Map<string, RowGrad>> {
  const wire: Gradient[] = [...grads].map(([paramId, g]) => {
    const shape = s.shapes.get(paramId);
    if (!shape || shape.length === 0) throw new TypeError(`'${paramId}': row-sparse gradients need a parameter of at least one dimension`);
    const rowShape = shape.slice(1);
    const c = coalesceRows(
      g,
      rowShape.reduce((a, n) => a * n, 1),
      `'${paramId}'`,
    );
    return { paramId, rows: { indices: c.rows, values: { shape: [c.rows.length, ...rowShape], dtype: F32, data: bytes(c.values) } } };
  });
  const reply = await s.conn.call<StepRequest, StepReply>(
    s.conn.raw.step.bind(s.conn.raw),
    { sessionId: s.id, step, groupOverrides: overrides, arenaGrads: [], grads: wire },
    s.auth(),
  );
  return new Map(
    reply.params.map((p) => [p.paramId, { rows: p.rows?.indices ?? [], values: floats(p.rows?.values?.data ?? Buffer.alloc(0)) }]),
  );
}
