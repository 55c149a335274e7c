// OpenArena: the same-host data plane (transport/arena.ts). Thin: the
// session moves its parameters into the arena; this says how to map it.
import type { ArenaInfo, OpenArenaRequest } from '../../../generated/mur/v1/optimizer';
import type { ServerContext } from '../context';

export async function openArena(ctx: ServerContext, req: OpenArenaRequest): Promise<ArenaInfo> {
  const session = ctx.store.get(req.sessionId);
  const a = await session.exclusive(() => session.openArena());
  return { path: a.path, bytes: a.bytes, token: a.token, tensors: a.tensors };
}
