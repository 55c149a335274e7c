// StepStream: any number of steps over one bidirectional stream. Per step the
// client sends StepBegin, the gradient chunks, StepEnd; the server answers the
// updated parameters as chunks, then StepDone. A stream that breaks its
// framing ends with a status; a step not closed by StepEnd is never applied.
// An L-BFGS round (its gradients above one message) is a step here too:
// StepBegin carries its round and loss, the parameter chunks are the point to
// evaluate (or the step's result) and StepDone says which (evaluate, round,
// restart), as Step's reply.
import type { ServerDuplexStream } from '@grpc/grpc-js';
import type { StepBegin, StepStreamReply, StepStreamRequest } from '../../../generated/mur/v1/optimizer';
import { Aborted, InvalidArgument, OutOfRange } from '../../errors';
import type { Session, StepResult } from '../../session/session';
import { applyStep } from '../../session/stepRequest';
import { ChunkAssembler, split } from '../../wire/chunks';
import { GRADIENT_DTYPES } from '../../wire/tensors';
import type { ServerContext } from '../context';
import { tokenOf } from '../../session/credentials';
import { checkWellFormed } from '../malformed';
import { toServiceError } from '../status';
import { closureFields } from '../../wire/closure';

interface OpenStep {
  begin: StepBegin;
  session: Session;
  chunks: ChunkAssembler;
}

/** The framing state machine, separate from the transport so it is testable. */
export class StepStreamProtocol {
  private open: OpenStep | null = null;
  /** Gradient bytes received for the open step (metrics). */
  private gradientBytes = 0;
  /** True from a StepBegin frame until its step is answered or refused: a failure now refuses a step. */
  inStep = false;

  constructor(
    private readonly ctx: ServerContext,
    private readonly send: (r: StepStreamReply) => void,
    private readonly token: string | undefined,
  ) {}

  /** Handles one frame; StepEnd applies the step (asynchronously) and answers it. */
  frame(req: StepStreamRequest): void | Promise<void> {
    const f = req.frame;
    if (!f) throw new InvalidArgument('frame: empty StepStreamRequest');
    if (f.$case === 'begin') {
      this.inStep = true;
      if (this.open) throw new OutOfRange(`begin: step ${this.open.begin.step} is still open (send StepEnd first)`);
      const session = this.ctx.store.get(f.value.sessionId, this.token);
      this.open = { begin: f.value, session, chunks: new ChunkAssembler(this.ctx.maxStreamElements, GRADIENT_DTYPES) };
      this.gradientBytes = 0;
      return;
    }
    const open = this.open;
    if (!open) throw new OutOfRange(`${f.$case}: no step is open (send StepBegin first)`);
    if (f.$case === 'grad') {
      const c = f.value;
      if (c.slot !== '') throw new InvalidArgument(`grad '${c.paramId}': slot must be empty, got '${c.slot}'`);
      if (c.offset === 0) {
        const shape = open.session.shapeOf(c.paramId, 'grad');
        const size = shape.reduce((a, b) => a * b, 1);
        if (c.totalElements !== size) {
          throw new InvalidArgument(
            `grad '${c.paramId}': total_elements ${c.totalElements}, parameter has ${size} (shape ${JSON.stringify(shape)})`,
          );
        }
      }
      open.chunks.add(c);
      this.gradientBytes += c.data.byteLength;
      return;
    }
    // StepEnd: apply, then answer (metered from here: the step's whole request has arrived).
    this.open = null;
    this.inStep = false;
    const gradientBytes = this.gradientBytes;
    return this.ctx.metrics.step('grpc', async () => {
      const grads = open.chunks.finish().map((t) => ({ id: t.paramId, data: t.data }));
      // An L-BFGS round (StepBegin.round, .loss) is read as its Step request would be.
      const { sessionId, step, groupOverrides, round, loss } = open.begin;
      const req = { sessionId, step, groupOverrides, grads: [], arenaGrads: [], validateOnly: false, round, loss };
      const r = await applyStep(open.session, req, grads);
      return { reply: undefined, replayed: r.replayed, gradientBytes, parameterBytes: this.answer(r) };
    });
  }

  /** Sends the step's parameters and StepDone; returns the parameter bytes sent. */
  private answer(r: StepResult): number {
    let bytes = 0;
    for (const v of r.values) {
      for (const chunk of split(v.id, '', v.data, this.ctx.chunkBytes)) {
        this.send({ frame: { $case: 'param', value: chunk } });
        bytes += chunk.data.byteLength;
      }
    }
    this.send({ frame: { $case: 'done', value: { step: r.step, replayed: r.replayed, ...closureFields(r) } } });
    return bytes;
  }

  /** The client closed its side: a step still open was truncated. */
  end(): void {
    if (this.open) throw new Aborted(`stream ended inside step ${this.open.begin.step} (no StepEnd); nothing was applied`);
  }
}

export function stepStream(ctx: ServerContext, call: ServerDuplexStream<StepStreamRequest, StepStreamReply>): void {
  let failed = false;
  const fail = (e: unknown) => {
    if (failed) return;
    failed = true;
    if (protocol.inStep) ctx.metrics.refused('grpc'); // a step's frames were cut short or refused
    call.emit('error', toServiceError(e, 'StepStream', ctx.metrics));
  };
  const protocol = new StepStreamProtocol(ctx, (r) => call.write(r), tokenOf(call.metadata));
  // Frames are handled strictly in order: a step's reply is sent before the
  // next frame is looked at.
  let chain: Promise<void> = Promise.resolve();
  const then = (fn: () => void | Promise<void>) => {
    chain = chain.then(() => (failed ? undefined : fn())).catch(fail);
  };
  call.on('data', (req: StepStreamRequest) => then(() => protocol.frame(checkWellFormed(req))));
  call.on('end', () =>
    then(() => {
      protocol.end();
      call.end();
    }),
  );
  call.on('error', () => undefined); // cancelled by the client: nothing to apply
}
