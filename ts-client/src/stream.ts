// One open StepStream: a step's gradients out as ordered chunks, its new
// parameters back as chunks, then StepDone.
import type * as grpc from '@grpc/grpc-js';
import type { StepDone, StepStreamReply, StepStreamRequest } from '../generated/mur/v1/optimizer';
import { chunksOf, Reassembly } from './chunks';
import { fromServiceError } from './errors';
import type { Round } from './plane';
import type { Overrides, Values } from './types';

export class StepStream {
  private readonly replies: AsyncIterator<StepStreamReply>;

  constructor(
    private readonly call: grpc.ClientDuplexStream<StepStreamRequest, StepStreamReply>,
    private readonly sessionId: string,
    private readonly chunkBytes: number,
  ) {
    this.replies = (call as AsyncIterable<StepStreamReply>)[Symbol.asyncIterator]();
  }

  /** Sends one step's chunks and resolves with its reply. */
  async step(grads: Values, overrides: Overrides, step: number): Promise<Values> {
    return (await this.send(grads, overrides, step)).values;
  }

  /** One step, or an L-BFGS round (its round and loss in StepBegin): the parameters sent back and StepDone. */
  async send(grads: Values, overrides: Overrides, step: number, round?: Round): Promise<{ values: Values; reply: StepDone }> {
    this.call.write({ frame: { $case: 'begin', value: { sessionId: this.sessionId, step, groupOverrides: overrides, ...round } } });
    for (const [id, a] of grads)
      for (const c of chunksOf(id, '', a, this.chunkBytes)) this.call.write({ frame: { $case: 'grad', value: c } });
    this.call.write({ frame: { $case: 'end', value: {} } });
    const parts = new Reassembly();
    const out: Values = new Map();
    try {
      for (;;) {
        const r = await this.replies.next();
        if (r.done) throw new Error('the server closed the stream before StepDone');
        const f = r.value.frame;
        if (f?.$case === 'param') {
          const a = parts.add(f.value);
          if (a) out.set(f.value.paramId, a);
        } else if (f?.$case === 'done') return { values: out, reply: f.value };
      }
    } catch (e) {
      if ((e as grpc.ServiceError).code !== undefined) throw fromServiceError(e as grpc.ServiceError);
      throw e;
    }
  }

  close(): void {
    this.call.end();
  }
}
