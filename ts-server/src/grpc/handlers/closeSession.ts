// CloseSession: dispose every tensor of the session, after whatever is
// already queued on it (a step in flight finishes first).
import type { CloseSessionReply, CloseSessionRequest } from '../../../generated/mur/v1/optimizer';
import type { ServerContext } from '../context';

export async function closeSession(ctx: ServerContext, req: CloseSessionRequest, token: string | undefined): Promise<CloseSessionReply> {
  await ctx.store.get(req.sessionId, token).exclusive(() => ctx.store.close(req.sessionId));
  return {};
}
