// OpenArena: the same-host data plane (transport/arena.ts). Thin: the
// session moves its parameters into the arena; this says how to map it.
import type { ArenaInfo, OpenArenaRequest } from '../../../generated/mur/v1/optimizer';
import { ResourceExhausted } from '../../errors';
import { projectedBytes } from '../../session/store';
import type { ServerContext } from '../context';

export async function openArena(ctx: ServerContext, req: OpenArenaRequest, token: string | undefined): Promise<ArenaInfo> {
  const session = ctx.store.get(req.sessionId, token);
  const a = await session.exclusive(() =>
    // The gradient regions are new memory: within --max-bytes, or refused before the arena exists.
    // An overlapping client's staging (the parameters and their state once more) too, or none.
    session.openArena(
      (gradBytes) => ctx.store.reserve(req.sessionId, gradBytes, 'the shared-memory arena'),
      req.overlap
        ? {
            bytes: projectedBytes(session.resolvedSpec, session.declarations()),
            reserve: (bytes) => {
              try {
                ctx.store.reserve(req.sessionId, bytes, "the fast lane's staging (overlap)");
                return true;
              } catch (e) {
                if (e instanceof ResourceExhausted) return false;
                throw e;
              }
            },
          }
        : undefined,
    ),
  );
  return { path: a.path, bytes: a.bytes, token: a.token, tensors: a.tensors, staging: session.staging };
}
