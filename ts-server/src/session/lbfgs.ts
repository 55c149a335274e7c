// The round trips of an L-BFGS step (optimizer "lbfgs"; StepRequest.round):
// the closure runs on the client, the algorithm and its history here. A step
// is a sequence of rounds: round 0 brings the loss and gradients at the
// session's parameters; the algorithm (optimizers/lbfgsStep.ts) runs until
// it needs another evaluation, the parameters are set to that point and the
// reply says `evaluate`; the client evaluates there and sends the next
// round; the last reply carries the step's result.
//
// A round is all or nothing: it is checked whole (its number, the loss, every
// gradient finite and of its parameter's size) before the algorithm sees it,
// and the algorithm cannot fail. The state before the step (a cheap copy:
// stored vectors are never changed in place) and the parameters are kept
// until the step ends, so an interrupted step rolls back exactly. With
// --state-dir a step is journaled when it ends, as the inputs of all its
// rounds (the algorithm is deterministic: replaying them rebuilds the
// step); a step cut by a restart is not in the journal, the session comes
// back as before it, and the client's next round gets a `restart` reply.
import { createHash } from 'crypto';
import type { Engine, ParamState } from '../engine/engine';
import { FailedPrecondition, InvalidArgument } from '../errors';
import { lbfgsHypers } from '../optimizers/lbfgs';
import { addMove, cloneState, lbfgsStep, newState, type Evaluation, type LbfgsState, type Mover } from '../optimizers/lbfgsStep';
import { firstBound, isPathRule, pathRates, pathTangent } from '../optimizers/lbfgsPath';
import { resolveGroup, resolveSpec, type ResolvedSpec } from '../registry';
import { sgd } from '../optimizers/sgd';
import type { Hypers } from '../engine/types';

/** One parameter as L-BFGS sees it: a slice of the flat vector. */
export interface FlatParam {
  id: string;
  group: string;
  size: number;
  shape: number[];
  state: ParamState;
}

/** The inputs of one round (kept for the journal). */
export interface RoundInput {
  loss: number;
  grads: Array<{ id: string; data: Float32Array }>;
}

interface InStep {
  step: number;
  round: number;
  digest: string;
  before: LbfgsState;
  x0: Float32Array;
  gen: Generator<Float32Array, Float32Array, Evaluation>;
  overrides: Record<string, Record<string, unknown>>;
  spec: ResolvedSpec;
  rounds: RoundInput[];
}

/** What a round did. */
export type RoundOutcome =
  | { kind: 'evaluate'; round: number }
  | { kind: 'done'; round: number; spec: ResolvedSpec; rounds: RoundInput[]; x: Float32Array }
  | { kind: 'replay'; round: number; evaluate: boolean };

/** The digest of a round's request: its number, loss, gradients and overrides. */
export function roundDigest(round: number, loss: number, digests: string[], ids: string[], overrides: string): string {
  const h = createHash('sha256').update(`lbfgs round ${round} loss ${loss}\0`);
  ids.forEach((id, i) => h.update(`${id}\0${digests[i]}\0`));
  return h.update(overrides).digest('hex');
}

export class LbfgsRun {
  state: LbfgsState = newState();
  private inStep: InStep | null = null;

  constructor(
    private readonly engine: Engine,
    private readonly params: () => FlatParam[],
  ) {}

  /** The session's one group. */
  get group(): string {
    return this.params()[0]?.group ?? '';
  }

  get size(): number {
    return this.params().reduce((a, p) => a + p.size, 0);
  }

  /** The step in progress and its last round, if any. */
  get current(): { step: number; round: number; digest: string } | null {
    return this.inStep && { step: this.inStep.step, round: this.inStep.round, digest: this.inStep.digest };
  }

  /** The parameters and state as they were before the step in progress (or now, between steps). */
  committed(): { x: Float32Array; state: LbfgsState } {
    return this.inStep ? { x: this.inStep.x0, state: this.inStep.before } : { x: this.flatParams(), state: this.state };
  }

  flatParams(): Float32Array {
    const x = new Float32Array(this.size);
    let off = 0;
    for (const p of this.params()) {
      x.set(p.state.theta!.view(), off);
      off += p.size;
    }
    return x;
  }

  writeParams(x: Float32Array): void {
    let off = 0;
    for (const p of this.params()) {
      this.engine.write(p.state.theta!, x.subarray(off, off + p.size));
      off += p.size;
    }
  }

  /** The round's gradients as one flat vector (zeros where a parameter has none, as torch's _gather_flat_grad). */
  private flatGrad(grads: RoundInput['grads']): Float32Array {
    const at = new Map<string, number>();
    let off = 0;
    for (const p of this.params()) {
      at.set(p.id, off);
      off += p.size;
    }
    const g = new Float32Array(off);
    for (const x of grads) g.set(x.data, at.get(x.id) ?? 0); // ids checked by check()
    return g;
  }

  /**
   * The move of an iteration: x + t d under the additive rule; otherwise the
   * session's rule, applied by the engine as one SGD step (no momentum, no
   * decay) whose gradient is -d and learning rate t, with lr_out scaled by
   * t / lr (the way an optimizer's scale reaches eta_out); its tangent in t
   * (optimizers/lbfgsPath.ts) per parameter, with exp_sign's bound as the
   * engine keeps it (or will store it on the parameter's first move).
   */
  mover(spec: ResolvedSpec, h: Hypers): Mover {
    if (spec.rule.name === 'additive') return { exact: true, move: addMove };
    const lr = h.lr as number;
    const ruleHypers = Object.fromEntries(spec.rule.hypers.map((r) => [r.name, h[r.name]]));
    const rule = spec.rule.name;
    const rates = pathRates(h);
    const tangent = isPathRule(rule)
      ? (x: Float32Array, t: number, d: Float32Array) => {
          const out = new Float32Array(x.length);
          let off = 0;
          for (const p of this.params()) {
            const x0 = x.subarray(off, off + p.size);
            const bound = rule === 'exp_sign' ? (p.state.rule.get('max')?.view()[0] ?? firstBound(h.p_scale as number, x0)) : 0;
            pathTangent(rule, rates, x0, t, d.subarray(off, off + p.size), bound, out.subarray(off, off + p.size));
            off += p.size;
          }
          return out;
        }
      : undefined;
    return {
      exact: false,
      tangent,
      move: (x, t, d) => {
        const scale = lr > 0 ? t / lr : 0;
        const defaults: Record<string, unknown> = { ...ruleHypers, lr: t };
        if (typeof ruleHypers.lr_out === 'number') defaults.lr_out = ruleHypers.lr_out * scale;
        const sh = resolveGroup(resolveSpec({ optimizer: 'sgd', rule: spec.rule.name, defaults }), '');
        this.writeParams(x);
        let off = 0;
        const jobs = this.params().map((p, i) => {
          const grad = new Float32Array(p.size);
          for (let k = 0; k < p.size; k++) grad[k] = -d[off + k];
          off += p.size;
          return { state: p.state, shape: p.shape, grad, h: sh, t: p.state.steps + 1, stream: i };
        });
        this.engine.step(sgd, spec.rule, jobs, spec.state);
        return this.flatParams();
      },
    };
  }

  /** Round 0: starts the step at the current parameters. */
  start(step: number, spec: ResolvedSpec, overrides: InStep['overrides'], input: RoundInput, digest: string, keep: boolean): RoundOutcome {
    const h = resolveGroup(spec, this.group);
    const lh = lbfgsHypers(h);
    const x0 = this.flatParams();
    const before = cloneState(this.state);
    const first = { loss: input.loss, grad: this.flatGrad(input.grads) };
    const gen = lbfgsStep(this.state, lh, x0, this.mover(spec, h), first);
    this.inStep = { step, round: 0, digest, before, x0, gen, overrides, spec, rounds: keep ? [input] : [] };
    return this.advance(gen.next());
  }

  /** The next round of the step in progress. */
  feed(input: RoundInput, digest: string, keep: boolean): RoundOutcome {
    const s = this.inStep!;
    s.round += 1;
    s.digest = digest;
    if (keep) s.rounds.push(input);
    return this.advance(s.gen.next({ loss: input.loss, grad: this.flatGrad(input.grads) }));
  }

  private advance(r: IteratorResult<Float32Array, Float32Array>): RoundOutcome {
    const s = this.inStep!;
    this.writeParams(r.value);
    if (!r.done) return { kind: 'evaluate', round: s.round };
    return { kind: 'done', round: s.round, spec: s.spec, rounds: s.rounds, x: r.value };
  }

  /** The step ended and was recorded: its state is the session's. */
  finish(): void {
    this.inStep = null;
  }

  /** Undoes the step in progress: the state and parameters before it. */
  rollback(): void {
    const s = this.inStep;
    if (!s) return;
    this.inStep = null;
    this.state = s.before;
    this.writeParams(s.x0);
  }

  /** Checks a round's inputs against the parameters: known ids, once each, sizes. */
  check(grads: RoundInput['grads'], loss: number | undefined, where: (i: number) => string): number {
    if (loss === undefined) throw new InvalidArgument("loss: an lbfgs round needs the closure's loss (StepRequest.loss)");
    if (!Number.isFinite(loss)) throw new InvalidArgument(`loss: ${loss} (must be finite)`);
    const sizes = new Map(this.params().map((p) => [p.id, p.size]));
    const seen = new Set<string>();
    grads.forEach((g, i) => {
      const n = sizes.get(g.id);
      if (n === undefined) throw new InvalidArgument(`${where(i)}: unknown parameter id '${g.id}'`);
      if (seen.has(g.id)) throw new InvalidArgument(`${where(i)}: parameter '${g.id}' appears twice`);
      seen.add(g.id);
      if (g.data.length !== n) throw new InvalidArgument(`${where(i)} '${g.id}': ${g.data.length} elements, parameter has ${n}`);
    });
    return loss;
  }

  /** A round that does not follow the step in progress. */
  outOfOrder(step: number, round: number): FailedPrecondition {
    const s = this.inStep!;
    return new FailedPrecondition(
      `round: ${round} of step ${step} does not follow round ${s.round}, the last one taken (send round ${s.round + 1}, or round ${s.round} again as it was)`,
    );
  }
}
