// The session's side of the shm fast lane: steps rung through the arena with
// no RPC, applied by the engine's lane (engine.createLane; the native one is
// native/src/lane.cc behind engine/native.ts). The session arms it whenever
// it is idle and disarms it before any other operation, taking in what it
// applied; it never runs beside another operation on the session.
import type { Engine, FastLane, ParamState, StepJob } from '../engine/engine';
import { isMixed, resolveGroup, type ResolvedSpec } from '../registry';
import type { Arena } from '../transport/arena';

/** What the lane applied while armed: steps per parameter, and its last step. */
export interface LaneSteps {
  applied: Array<{ id: string; steps: number }>;
  /** The last step number it applied (the one it was armed with if none). */
  lastStep: number;
  /** That step's parameter ids. */
  lastIds: string[];
}

/** A parameter as the lane steps it. */
export interface LaneParam {
  state: ParamState;
  shape: number[];
  group: string;
  index: number;
}

export class SessionLane {
  private armed = false;

  private constructor(
    private readonly lane: FastLane,
    private readonly arena: Arena,
  ) {}

  /** The lane of a new arena, when the engine has one (a journaled session has none: every step is recorded by RPC). */
  static open(engine: Engine, arena: Arena, journaled: boolean): SessionLane | null {
    return engine.createLane && !journaled ? new SessionLane(engine.createLane(arena), arena) : null;
  }

  /**
   * Arms the lane with every arena tensor, when it can take steps on its own:
   * a parameter's first step creates its slots, so until each has stepped
   * once, steps go through the session.
   */
  arm(spec: ResolvedSpec, param: (id: string) => LaneParam, lastStep: number): void {
    if (this.armed) return;
    if (isMixed(spec)) return; // one optimizer per lane: a mixed session steps by RPC (docs/data-path.md)
    const params = this.arena.tensors.map((t) => param(t.paramId));
    if (params.some((p) => p.state.steps === 0)) return;
    const jobs: StepJob[] = params.map((p, i) => ({
      state: p.state,
      shape: p.shape,
      grad: this.arena.grad(i),
      h: resolveGroup(spec, p.group),
      t: p.state.steps + 1,
      stream: p.index,
    }));
    this.armed = this.lane.arm(spec.optimizer, spec.rule, jobs, lastStep, spec.state);
  }

  /** Stops the lane; what it applied since armed (null when it was not armed). */
  disarm(): LaneSteps | null {
    if (!this.armed) return null;
    this.armed = false;
    const r = this.lane.disarm();
    const ids = this.arena.tensors.map((t) => t.paramId);
    return {
      applied: r.applied.map((steps, i) => ({ id: ids[i], steps })),
      lastStep: r.lastStep,
      lastIds: r.lastIndices.map((i) => ids[i]),
    };
  }

  /** Whether the lane stages updates while backward runs (the session reserved their memory). */
  staging(on: boolean): void {
    this.lane.staging(on);
  }

  close(): void {
    this.lane.close();
  }
}
