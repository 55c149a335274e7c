// OpenArena: the same-host data plane (transport/arena.ts). Thin: the
// session moves its parameters into the arena; this says how to map it.
import type { ArenaInfo, OpenArenaRequest } from '../../../generated/mur/v1/optimizer';
import type { ServerContext } from '../context';

export function openArena(ctx: ServerContext, req: OpenArenaRequest): ArenaInfo {
  const a = ctx.store.get(req.sessionId).openArena();
  return { path: a.path, bytes: a.bytes, token: a.token, tensors: a.tensors };
}
