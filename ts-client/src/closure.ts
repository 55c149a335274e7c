// L-BFGS steps (optimizer "lbfgs"; the server's docs/update-rules.md,
// "lbfgs"): one step is a sequence of rounds, one per evaluation of the
// caller's closure. Round 0 brings the loss and gradients at the session's
// current parameters; while the reply says `evaluate`, the closure is called
// again at the parameters the reply carries and the next round is sent; the
// last reply carries the step's result. Each round travels on the session's
// plane as any step would (plane.ts, Plane.round: the arena on shm, the data
// port on tcp, a Step message on gRPC or StepStream above the message
// limit) and is retried under its number (a retry of a round whose reply
// was lost replays it). A reply with `restart` (the server restarted on its
// --state-dir in the middle of the step) carries the parameters before the
// step: the closure is called there and the step starts again from round 0.
import type { Round, RoundReply } from './plane';
import type { Values } from './types';

/**
 * Evaluates the objective: at `params` (every parameter, the point the
 * server asks about), or at the caller's current parameters when `params` is
 * null (round 0). Returns the loss and the gradient of each parameter (one
 * left out counts as zeros).
 */
export type Closure = (params: Values | null) => Promise<{ loss: number; grads: Values }> | { loss: number; grads: Values };

/** One L-BFGS step: the first loss (as torch's LBFGS.step returns) and the parameters after it. */
export async function stepClosure(
  closure: Closure,
  send: (grads: Values, round: Round) => Promise<RoundReply>,
): Promise<{ loss: number; values: Values; evaluations: number }> {
  let at: Values | null = null;
  let first: number | null = null;
  let round = 0;
  for (let evaluations = 1; ; evaluations++) {
    const { loss, grads } = await closure(at);
    first ??= loss;
    const reply = await send(grads instanceof Map ? grads : new Map(Object.entries(grads)), { round, loss });
    at = reply.values;
    if (reply.restart) {
      round = 0;
      continue;
    }
    if (!reply.evaluate) return { loss: first, values: at, evaluations };
    round = reply.round + 1;
  }
}
