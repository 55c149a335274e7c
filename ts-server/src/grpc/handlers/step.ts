// Step (unary): every gradient inline and the updated parameters inline, or
// (same-host transport) the gradients and parameters in the session's arena.
// The request is read by session/stepRequest.ts; each step is metered
// (metrics.ts): its result, latency and tensor bytes.
import type { StepReply, StepRequest } from '../../../generated/mur/v1/optimizer';
import type { Metered } from '../../metrics';
import { applyStep } from '../../session/stepRequest';
import { paramValue } from '../../wire/paramValue';
import { valuesOf } from '../../session/stepRequest';
import type { ServerContext } from '../context';
import { closureFields } from '../../wire/closure';

export async function step(ctx: ServerContext, req: StepRequest, token: string | undefined): Promise<StepReply> {
  // validate_only (phase 1 of a step across servers) steps nothing: not metered as a step.
  if (req.validateOnly) {
    const r = await applyStep(ctx.store.get(req.sessionId, token), req);
    return { step: r.step, replayed: r.replayed, params: [], ...closureFields(r) };
  }
  const arena = req.arenaGrads.length > 0 || (req.arenaSparse?.rows.length ?? 0) > 0;
  return ctx.metrics.step(arena ? 'shm' : 'grpc', async (): Promise<Metered<StepReply>> => {
    const session = ctx.store.get(req.sessionId, token);
    const r = await applyStep(session, req);
    if (arena) {
      // Each gradient region read and parameter region written, once; a replay touches none.
      const bytes = r.replayed ? 0 : r.values.reduce((n, v) => n + v.data.byteLength, 0);
      return {
        reply: { step: r.step, replayed: r.replayed, params: [], ...closureFields(r) },
        replayed: r.replayed,
        gradientBytes: bytes,
        parameterBytes: bytes,
      };
    }
    const params = r.values.map((v) => paramValue(v, session.shapeOf(v.id, 'reply')));
    return {
      reply: { step: r.step, replayed: r.replayed, params, ...closureFields(r) },
      replayed: r.replayed,
      gradientBytes: req.grads.reduce((n, g) => n + (valuesOf(g)?.data.byteLength ?? 0), 0),
      parameterBytes: r.values.reduce((n, v) => n + v.data.byteLength, 0),
    };
  });
}
