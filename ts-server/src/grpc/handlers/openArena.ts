// OpenArena: the same-host data plane (transport/arena.ts). Thin: the
// session moves its parameters into the arena; this says how to map it.
import type { ArenaInfo, OpenArenaRequest } from '../../../generated/mur/v1/optimizer';
import type { ServerContext } from '../context';

export async function openArena(ctx: ServerContext, req: OpenArenaRequest, token: string | undefined): Promise<ArenaInfo> {
  const session = ctx.store.get(req.sessionId, token);
  const a = await session.exclusive(() =>
    // The gradient regions are new memory: within --max-bytes, or refused before the arena exists.
    session.openArena((gradBytes) => ctx.store.reserve(req.sessionId, gradBytes, 'the shared-memory arena')),
  );
  return { path: a.path, bytes: a.bytes, token: a.token, tensors: a.tensors };
}
