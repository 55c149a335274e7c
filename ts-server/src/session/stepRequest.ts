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
import type { Session, StepResult } from './session';

/** One gradient as a step takes it: its parameter and float32 values. */
export interface Grad {
  id: string;
  data: Float32Array;
}

/**
 * Checks the gradients a request declares (a tensor, each parameter once,
 * dtype, shape) against the session, before any of their bytes is used;
 * returns each one's element count, in order.
 */
export function checkGradients(session: Session, grads: Gradient[]): number[] {
  const seen = new Set<string>();
  return grads.map((g, i) => {
    const where = `grads[${i}] '${g.paramId}'`;
    if (!g.grad) throw new InvalidArgument(`${where}: missing tensor`);
    if (seen.has(g.paramId)) throw new InvalidArgument(`${where}: appears twice`);
    seen.add(g.paramId);
    checkDtype(g.grad.dtype, where, GRADIENT_DTYPES);
    const expected = session.shapeOf(g.paramId, `grads[${i}]`);
    if (g.grad.shape.length !== expected.length || g.grad.shape.some((n, k) => n !== expected[k])) {
      throw new InvalidArgument(
        `${where}: shape ${JSON.stringify(g.grad.shape)} does not match the parameter's ${JSON.stringify(expected)}`,
      );
    }
    return sizeOf(expected);
  });
}

/** The gradients inside the request's messages, checked, as float32 (2-byte ones widened). */
function inlineGradients(session: Session, grads: Gradient[]): Grad[] {
  checkGradients(session, grads);
  return grads.map((g, i) => ({ id: g.paramId, data: bytesToF32(g.grad!.data, `grads[${i}] '${g.paramId}'`, g.grad!.dtype) }));
}

/**
 * Applies the step `req` asks for, or with validate_only makes every check
 * of it and applies nothing. Its gradients: `payload` when the transport
 * carried them beside the request (checked with checkGradients already),
 * else the arena regions it names, else the request's own.
 */
export function applyStep(session: Session, req: StepRequest, payload?: Grad[]): Promise<StepResult> {
  const overrides = overridesFromWire(req.groupOverrides);
  if (req.arenaGrads.length > 0) {
    if (req.grads.length > 0) throw new InvalidArgument('grads: must be empty when arena_grads names the gradients');
    return session.stepArena(req.step, req.arenaGrads, overrides, req.validateOnly);
  }
  const grads = payload ?? inlineGradients(session, req.grads);
  return req.validateOnly ? session.validateStep(req.step, grads, overrides) : session.stepAsync(req.step, grads, overrides);
}
