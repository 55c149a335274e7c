// CloseSession: dispose every tensor of the session.
import type { CloseSessionReply, CloseSessionRequest } from '../../../generated/mur/v1/optimizer';
import type { ServerContext } from '../context';

export function closeSession(ctx: ServerContext, req: CloseSessionRequest): CloseSessionReply {
  ctx.store.close(req.sessionId);
  return {};
}
