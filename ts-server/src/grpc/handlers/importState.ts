// ImportState: frames as ExportState writes them (the header may name the
// session, or come first); applied all-or-nothing when the stream ends.
import type { sendUnaryData, ServerReadableStream } from '@grpc/grpc-js';
import type { ImportStateReply, StateFrame, StateHeader } from '../../../generated/mur/v1/optimizer';
import { FailedPrecondition, InvalidArgument } from '../../errors';
import { resolveSpec } from '../../registry';
import type { SessionHeader } from '../../session/session';
import { ChunkAssembler } from '../../wire/chunks';
import type { ServerContext } from '../context';
import { specFromWire } from '../spec';
import { tokenOf } from '../../session/credentials';
import { checkWellFormed } from '../malformed';
import { toServiceError } from '../status';

function headerFromWire(h: StateHeader): Partial<SessionHeader> {
  const out: Partial<SessionHeader> = {
    stepCounts: new Map(h.stepCounts.map((c) => [c.paramId, c.steps])),
  };
  // 0 means "not a checkpoint of steps" (e.g. only initial values): keep the session's.
  if (h.lastStep > 0) out.lastStep = h.lastStep;
  if (h.spec && (h.spec.optimizer || h.spec.rule)) out.spec = resolveSpec(specFromWire(h.spec), []);
  return out;
}

export function importState(
  ctx: ServerContext,
  call: ServerReadableStream<StateFrame, ImportStateReply>,
  done: sendUnaryData<ImportStateReply>,
): void {
  const token = tokenOf(call.metadata);
  let header: StateHeader | null = null;
  const chunks = new ChunkAssembler(ctx.maxStreamElements);
  let failed = false;
  const fail = (e: unknown) => {
    if (!failed) done(toServiceError(e, 'ImportState', ctx.metrics));
    failed = true;
  };
  call.on('data', (f: StateFrame) => {
    if (failed) return;
    try {
      checkWellFormed(f);
      if (!f.frame) throw new InvalidArgument('frame: empty StateFrame');
      if (f.frame.$case === 'header') {
        if (header) throw new InvalidArgument('header: sent twice');
        header = f.frame.value;
        ctx.store.get(header.sessionId, token);
      } else {
        if (!header) throw new FailedPrecondition('chunk: the StateHeader (naming the session) must come first');
        chunks.add(f.frame.value);
      }
    } catch (e) {
      fail(e);
    }
  });
  call.on('end', () => {
    if (failed) return;
    (async () => {
      if (!header) throw new InvalidArgument('header: the stream carried no StateHeader');
      const session = ctx.store.get(header.sessionId, token);
      const h = headerFromWire(header);
      const tensors = chunks.finish();
      const n = await session.exclusive(() => session.importState(h, tensors));
      done(null, { tensorsImported: n });
    })().catch(fail);
  });
  call.on('error', () => undefined);
}
