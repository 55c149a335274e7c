// A step request read once, whatever carried it: gRPC Step
// (grpc/handlers/step.ts), the tcp data port (transport/dataPlane.ts) and
// StepStream (its chunks reassembled by wire/chunks.ts). The transport finds
// the gradients' bytes (in the messages, after a tcp header, in chunks, in
// the arena); this checks what the request declares against its session,
// once, and runs the step, or its validation, on the session's queue. Each
// transport builds its reply from the StepResult, once.
import type { Gradient, StepRequest } from '../../generated/mur/v1/optimizer';
import { InvalidArgument } from '../errors';
import { overridesFromWire } from '../grpc/spec';
import { bytesToF32, checkDtype, GRADIENT_DTYPES } from '../wire/tensors';
import { sizeOf } from './declarations';
import { rowsFromWire } from './rows';
import type { Session, StepGrad, StepResult } from './session';

/** One gradient as a step takes it: its parameter and float32 values (and a row-sparse one's rows). */
export type Grad = StepGrad;

/** The tensor that carries a gradient's values: the dense one, or a row-sparse one's values. */
export const valuesOf = (g: Gradient) => (g.rows ? g.rows.values : g.grad);

/**
 * Checks the gradients a request declares (a tensor, each parameter once,
 * dtype, shape) against the session, before any of their bytes is used;
 * returns each one's element count, in order. A row-sparse gradient
 * (Gradient.rows) declares values of shape [len(indices), *row_shape]; its
 * indices are checked with the step (session/rows.ts).
 */
export function checkGradients(session: Session, grads: Gradient[]): number[] {
  const seen = new Set<string>();
  return grads.map((g, i) => {
    const where = `grads[${i}] '${g.paramId}'`;
    if (g.grad && g.rows) throw new InvalidArgument(`${where}: has both grad and rows (one gradient each)`);
    const t = valuesOf(g);
    if (!t) throw new InvalidArgument(`${where}: missing tensor${g.rows ? ' (rows.values)' : ''}`);
    if (seen.has(g.paramId)) throw new InvalidArgument(`${where}: appears twice`);
    seen.add(g.paramId);
    checkDtype(t.dtype, where, GRADIENT_DTYPES);
    const param = session.shapeOf(g.paramId, `grads[${i}]`);
    const expected = g.rows ? [g.rows.indices.length, ...param.slice(1)] : param;
    if (g.rows && param.length === 0) throw new InvalidArgument(`${where}: a 0-d parameter has no rows; send a dense gradient`);
    if (t.shape.length !== expected.length || t.shape.some((n, k) => n !== expected[k])) {
      throw new InvalidArgument(
        g.rows
          ? `${where}: rows.values shape ${JSON.stringify(t.shape)} must be ${JSON.stringify(expected)} ` +
              `(${g.rows.indices.length} indices, rows of the parameter's ${JSON.stringify(param)})`
          : `${where}: shape ${JSON.stringify(t.shape)} does not match the parameter's ${JSON.stringify(expected)}`,
      );
    }
    return sizeOf(expected);
  });
}

/** A gradient's rows (row-sparse ones), from the wire. */
export const rowsOf = (g: Gradient, i: number) => (g.rows ? rowsFromWire(g.rows.indices, `grads[${i}] '${g.paramId}' rows`) : undefined);

/** The gradients inside the request's messages, checked, as float32 (2-byte ones widened). */
function inlineGradients(session: Session, grads: Gradient[]): Grad[] {
  checkGradients(session, grads);
  return grads.map((g, i) => {
    const t = valuesOf(g)!;
    return { id: g.paramId, data: bytesToF32(t.data, `grads[${i}] '${g.paramId}'`, t.dtype), rows: rowsOf(g, i) };
  });
}

/**
 * Applies the step `req` asks for, or with validate_only makes every check
 * of it and applies nothing. Its gradients: `payload` when the transport
 * carried them beside the request (checked with checkGradients already),
 * else the arena regions it names, else the request's own.
 */
export function applyStep(session: Session, req: StepRequest, payload?: Grad[]): Promise<StepResult> {
  const overrides = overridesFromWire(req.groupOverrides);
  const closure = { round: req.round ?? 0, loss: req.loss };
  if (!session.closure && closure.round !== 0) {
    throw new InvalidArgument(`round: ${closure.round}: only lbfgs steps have rounds (this session's optimizer evaluates once per step)`);
  }
  const arenaRows = req.arenaSparse?.rows ?? [];
  if (req.arenaGrads.length > 0 || arenaRows.length > 0) {
    if (req.grads.length > 0) throw new InvalidArgument('grads: must be empty when arena_grads or arena_sparse names the gradients');
    const sparse = arenaRows.map((r, k) => ({ tensor: r.tensor, rows: rowsFromWire(r.indices, `arena_sparse.rows[${k}]`) }));
    return session.stepArena(req.step, req.arenaGrads, overrides, req.validateOnly, sparse, closure);
  }
  const grads = payload ?? inlineGradients(session, req.grads);
  if (session.closure) return session.stepClosure(req.step, closure, grads, overrides, req.validateOnly);
  return req.validateOnly ? session.validateStep(req.step, grads, overrides) : session.stepAsync(req.step, grads, overrides);
}
