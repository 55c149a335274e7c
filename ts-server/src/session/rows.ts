// Row-sparse gradients (docs/data-path.md, "Row-sparse gradients"): a
// parameter of shape [n, *row_shape] gets the rows `rows` (strictly
// increasing, each < n) of its gradient, packed; the step reads and writes
// those rows of the parameter and of its state, nothing else. What every
// transport shares: the checks (one message each, naming the bad value),
// which optimizers take rows (as torch.optim), and the rows of a reply.
import type { OptimizerDef, Hypers } from '../engine/types';
import { InvalidArgument } from '../errors';

/** Row indices from the wire (uint64 numbers) as a Uint32Array; their order and range are the session's check. */
export function rowsFromWire(indices: number[], where: string): Uint32Array {
  const out = new Uint32Array(indices.length);
  indices.forEach((r, k) => {
    if (!Number.isSafeInteger(r) || r < 0 || r > 0xffffffff) throw new InvalidArgument(`${where}.indices[${k}]: ${r} is not a row index`);
    out[k] = r;
  });
  return out;
}

/** Elements per row of a parameter of this shape (a scalar has no rows). */
export function rowLength(shape: number[], where: string): number {
  if (shape.length === 0) throw new InvalidArgument(`${where}: a 0-d parameter has no rows; send a dense gradient`);
  return shape.slice(1).reduce((a, n) => a * n, 1);
}

/**
 * Checks rows against the parameter: strictly increasing (torch coalesces a
 * sparse gradient, summing duplicates; the client sends it coalesced, and a
 * duplicate here is refused rather than summed or applied twice), each
 * below shape[0], and `values` elements of whole rows.
 */
export function checkRows(rows: Uint32Array, values: number, shape: number[], where: string): void {
  const len = rowLength(shape, where);
  for (let k = 0; k < rows.length; k++) {
    if (rows[k] >= shape[0]) {
      throw new InvalidArgument(`${where}: row index ${rows[k]} (indices[${k}]) is out of range for ${shape[0]} rows`);
    }
    if (k > 0 && rows[k] <= rows[k - 1]) {
      throw new InvalidArgument(
        `${where}: indices[${k}] = ${rows[k]} after ${rows[k - 1]}: ` +
          `${rows[k] === rows[k - 1] ? 'duplicate row index' : 'unsorted row indices'} (send the sparse gradient coalesced: sorted, duplicates summed)`,
      );
    }
  }
  if (values !== rows.length * len) {
    throw new InvalidArgument(
      `${where}: ${values} values for ${rows.length} rows of ${len} elements (parameter shape ${JSON.stringify(shape)}) need ${rows.length * len}`,
    );
  }
}

/** Names a gradient element in messages: its index, and for packed rows the row it is in. */
export function elementName(index: number, rows: Uint32Array | undefined, rowLen: number): string {
  return rows && rowLen > 0 ? `element ${index} (row ${rows[Math.floor(index / rowLen)]})` : `element ${index}`;
}

/** Why this optimizer, with these hyperparameters, refuses this kind of gradient ('' when it takes it). */
export function gradientKindRefusal(opt: OptimizerDef, h: Hypers, sparse: boolean): string {
  if (!sparse) {
    return opt.sparse === 'only' ? `${opt.name} takes row-sparse gradients only (as torch.optim.SparseAdam); use adam for dense ones` : '';
  }
  if (opt.sparse === undefined) return `${opt.name} does not take row-sparse gradients (sparseadam, sgd and adagrad do, as in torch)`;
  if (opt.sparse === 'only') return '';
  const why = opt.sparse(h);
  return why ? `${opt.name} takes row-sparse gradients only with ${why}` : '';
}

/** The rows of a [n, rowLen] tensor, packed (a copy). */
export function gatherRows(src: Float32Array, rows: Uint32Array, rowLen: number): Float32Array {
  const out = new Float32Array(rows.length * rowLen);
  for (let k = 0; k < rows.length; k++) out.set(src.subarray(rows[k] * rowLen, (rows[k] + 1) * rowLen), k * rowLen);
  return out;
}
