// L-BFGS steps (optimizer "lbfgs"; the server's docs/update-rules.md,
// "lbfgs"): one step is a sequence of rounds, one per evaluation of the
// caller's closure. Round 0 brings the loss and gradients at the session's
// current parameters; while the reply says `evaluate`, the closure is called
// again at the parameters the reply carries and the next round is sent; the
// last reply carries the step's result. Each round goes in a Step message
// (StepStream has no rounds) and is retried under its number (a retry of a
// round whose reply was lost replays it). A reply with `restart` (the server
// restarted on its --state-dir in the middle of the step) carries the
// parameters before the step: the closure is called there and the step
// starts again from round 0.
import type { StepReply, StepRequest } from '../generated/mur/v1/optimizer';
import { bytes, F32, floats } from './chunks';
import type { SessionLink } from './plane';
import type { Overrides, Values } from './types';

/**
 * Evaluates the objective: at `params` (every parameter, the point the
 * server asks about), or at the caller's current parameters when `params` is
 * null (round 0). Returns the loss and the gradient of each parameter (one
 * left out counts as zeros).
 */
export type Closure = (params: Values | null) => Promise<{ loss: number; grads: Values }> | { loss: number; grads: Values };

/** One L-BFGS step: the first loss (as torch's LBFGS.step returns) and the parameters after it. */
export async function stepClosure(
  s: SessionLink,
  closure: Closure,
  overrides: Overrides,
  step: number,
): Promise<{ loss: number; values: Values; evaluations: number }> {
  let at: Values | null = null;
  let first: number | null = null;
  let round = 0;
  for (let evaluations = 1; ; evaluations++) {
    const { loss, grads } = await closure(at);
    first ??= loss;
    const request: StepRequest = {
      sessionId: s.id,
      step,
      round,
      loss,
      groupOverrides: overrides,
      arenaGrads: [],
      grads: [...grads].map(([paramId, g]) => ({
        paramId,
        grad: { shape: s.shapes.get(paramId) ?? [g.length], dtype: F32, data: bytes(g) },
      })),
    };
    const reply = await s.conn.retrying(() => s.conn.call<StepRequest, StepReply>(s.conn.raw.step.bind(s.conn.raw), request, s.auth()));
    at = new Map(reply.params.map((p) => [p.paramId, floats(p.value?.data ?? Buffer.alloc(0))]));
    if (reply.restart) {
      round = 0;
      continue;
    }
    if (!reply.evaluate) return { loss: first, values: at, evaluations };
    round = reply.round + 1;
  }
}
