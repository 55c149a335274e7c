// The L-BFGS fields of a StepReply (evaluate, round, restart), from a step's result: every transport's reply carries them.
import type { StepReply } from '../../generated/mur/v1/optimizer';
import type { StepResult } from '../session/session';

export function closureFields(r: StepResult): Pick<StepReply, 'evaluate' | 'round' | 'restart'> {
  return { evaluate: r.evaluate ?? false, round: r.round ?? 0, restart: r.restart ?? '' };
}
