// ExportState: a StateHeader, then every tensor of the session as chunks.
import type { ServerWritableStream } from '@grpc/grpc-js';
import type { ExportStateRequest, StateFrame, StateHeader } from '../../../generated/mur/v1/optimizer';
import type { Session } from '../../session/session';
import { split } from '../../wire/chunks';
import type { ServerContext } from '../context';
import { specToWire } from '../spec';
import { tokenOf } from '../../session/credentials';
import { checkWellFormed } from '../malformed';
import { toServiceError } from '../status';

export function* exportFrames(session: Session, chunkBytes: number): Generator<StateFrame> {
  const h = session.header();
  const header: StateHeader = {
    sessionId: session.id,
    spec: specToWire(h.spec),
    stepCounts: [...h.stepCounts].map(([paramId, steps]) => ({ paramId, steps })),
    lastStep: h.lastStep,
  };
  yield { frame: { $case: 'header', value: header } };
  for (const t of session.exportTensors()) {
    for (const chunk of split(t.paramId, t.slot, t.data, chunkBytes)) yield { frame: { $case: 'chunk', value: chunk } };
  }
}

export async function exportState(ctx: ServerContext, call: ServerWritableStream<ExportStateRequest, StateFrame>): Promise<void> {
  try {
    const session = ctx.store.get(checkWellFormed(call.request).sessionId, tokenOf(call.metadata));
    // A consistent snapshot: taken between steps, never during one.
    const frames = await session.exclusive(() => [...exportFrames(session, ctx.chunkBytes)]);
    for (const f of frames) call.write(f);
    call.end();
  } catch (e) {
    call.emit('error', toServiceError(e, 'ExportState', ctx.metrics));
  }
}
