// Step (unary): every gradient inline and the updated parameters inline, or
// (same-host transport) the gradients and parameters in the session's arena.
// Each step is metered (metrics.ts): its result, latency and tensor bytes.
import type { StepReply, StepRequest } from '../../../generated/mur/v1/optimizer';
import { DType } from '../../../generated/mur/v1/optimizer';
import { InvalidArgument } from '../../errors';
import type { Metered } from '../../metrics';
import { f32ToBytes } from '../../wire/tensors';
import { bytesToF32, checkDtype, GRADIENT_DTYPES } from '../../wire/tensors';
import type { Session } from '../../session/session';
import type { ServerContext } from '../context';
import { overridesFromWire } from '../spec';

export function step(ctx: ServerContext, req: StepRequest, token: string | undefined): Promise<StepReply> {
  if (req.validateOnly) return validate(ctx, req, token);
  return req.arenaGrads.length > 0 ? ctx.metrics.step('shm', () => arenaStep(ctx, req, token)) : ctx.metrics.step('grpc', () => inlineStep(ctx, req, token));
}

async function arenaStep(ctx: ServerContext, req: StepRequest, token: string | undefined): Promise<Metered<StepReply>> {
  const session = ctx.store.get(req.sessionId, token);
  if (req.grads.length > 0) throw new InvalidArgument('grads: must be empty when arena_grads names the gradients');
  const r = await session.stepArena(req.step, req.arenaGrads, overridesFromWire(req.groupOverrides));
  // Each gradient region read and parameter region written, once; a replay touches none.
  const bytes = r.replayed ? 0 : r.values.reduce((n, v) => n + v.data.byteLength, 0);
  return { reply: { step: r.step, replayed: r.replayed, params: [] }, replayed: r.replayed, gradientBytes: bytes, parameterBytes: bytes };
}

/**
 * StepRequest.validate_only: the step's checks, nothing applied (phase 1 of a
 * step across servers). Not metered as a step: it steps nothing.
 */
async function validate(ctx: ServerContext, req: StepRequest, token: string | undefined): Promise<StepReply> {
  const session = ctx.store.get(req.sessionId, token);
  const overrides = overridesFromWire(req.groupOverrides);
  let r;
  if (req.arenaGrads.length > 0) {
    if (req.grads.length > 0) throw new InvalidArgument('grads: must be empty when arena_grads names the gradients');
    r = await session.stepArena(req.step, req.arenaGrads, overrides, true);
  } else {
    r = await session.validateStep(req.step, inlineGrads(session, req).grads, overrides);
  }
  return { step: r.step, replayed: r.replayed, params: [] };
}

/** The request's inline gradients, their dtypes and shapes checked. */
function inlineGrads(session: Session, req: StepRequest): { grads: Array<{ id: string; data: Float32Array }>; gradientBytes: number } {
  let gradientBytes = 0;
  const grads = req.grads.map((g, i) => {
    const where = `grads[${i}] '${g.paramId}'`;
    if (!g.grad) throw new InvalidArgument(`${where}: missing tensor`);
    checkDtype(g.grad.dtype, where, GRADIENT_DTYPES);
    const expected = session.shapeOf(g.paramId, `grads[${i}]`);
    if (g.grad.shape.length !== expected.length || g.grad.shape.some((n, k) => n !== expected[k])) {
      throw new InvalidArgument(`${where}: shape ${JSON.stringify(g.grad.shape)} does not match the parameter's ${JSON.stringify(expected)}`);
    }
    gradientBytes += g.grad.data.byteLength;
    return { id: g.paramId, data: bytesToF32(g.grad.data, where, g.grad.dtype) };
  });
  return { grads, gradientBytes };
}

/** A step whose gradients are in the request (gRPC Step, and the tcp data plane: transport/dataPlane.ts). */
export async function inlineStep(ctx: ServerContext, req: StepRequest, token: string | undefined): Promise<Metered<StepReply>> {
  // A caller other than step() (the tcp data plane) must never apply a validation.
  if (req.validateOnly) return { reply: await validate(ctx, req, token), replayed: false, gradientBytes: 0, parameterBytes: 0 };
  const session = ctx.store.get(req.sessionId, token);
  const { grads, gradientBytes } = inlineGrads(session, req);
  const r = await session.stepAsync(req.step, grads, overridesFromWire(req.groupOverrides));
  const params = r.values.map((v) => ({
    paramId: v.id,
    value: { shape: session.shapeOf(v.id, 'reply'), dtype: DType.DTYPE_FLOAT32, data: f32ToBytes(v.data) },
  }));
  return {
    reply: { step: r.step, replayed: r.replayed, params },
    replayed: r.replayed,
    gradientBytes,
    parameterBytes: params.reduce((n, p) => n + p.value.data.byteLength, 0),
  };
}
