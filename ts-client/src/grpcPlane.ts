// The "grpc" plane: tensors inside messages. A step (an L-BFGS round too)
// goes unary while it fits in one message, else as chunks through one
// StepStream.
import type { StepReply, StepRequest } from '../generated/mur/v1/optimizer';
import { bytes, F32, floats } from './chunks';
import type { Plane, Round, RoundReply, SessionLink } from './plane';
import { StepStream } from './stream';
import type { Overrides, Values } from './types';

/** The share of the server's message limit a unary request may fill (the rest: ids, shapes, framing). */
export const INLINE_SHARE = 0.9;

export class GrpcPlane implements Plane {
  readonly name = 'grpc';

  constructor(private readonly s: SessionLink) {}

  async step(g: Values, overrides: Overrides, step: number): Promise<Values> {
    return (await this.send(g, overrides, step)).values;
  }

  async round(g: Values, overrides: Overrides, step: number, round: Round): Promise<RoundReply> {
    const { values, reply } = await this.send(g, overrides, step, round);
    return { evaluate: reply.evaluate, round: reply.round, restart: reply.restart, values };
  }

  private async send(g: Values, overrides: Overrides, step: number, round?: Round) {
    const size = [...g.values()].reduce((n, a) => n + a.byteLength, 0);
    if (size >= this.s.caps.maxMessageBytes * INLINE_SHARE) {
      const stream = new StepStream(
        this.s.conn.raw.stepStream(this.s.auth(), this.s.conn.callOptions()),
        this.s.id,
        this.s.caps.chunkBytes,
      );
      try {
        return await stream.send(g, overrides, step, round);
      } finally {
        stream.close();
      }
    }
    const reply = await this.s.conn.call<StepRequest, StepReply>(
      this.s.conn.raw.step.bind(this.s.conn.raw),
      {
        sessionId: this.s.id,
        step,
        ...round,
        groupOverrides: overrides,
        arenaGrads: [],
        grads: [...g].map(([paramId, a]) => ({
          paramId,
          grad: { shape: this.s.shapes.get(paramId) ?? [a.length], dtype: F32, data: bytes(a) },
        })),
      },
      this.s.auth(),
    );
    return { reply, values: new Map(reply.params.map((p) => [p.paramId, floats(p.value!.data)])) };
  }

  recover(): Promise<Plane> {
    return Promise.resolve(this);
  }

  async close(): Promise<void> {}
}
