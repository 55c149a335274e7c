// AddParameters: parameters (and their groups) joining a live session, as
// torch's add_param_group. Thin: the declarations are read as CreateSession
// reads them; the store checks the byte budget, the session the rest.
import type { AddParametersReply, AddParametersRequest } from '../../../generated/mur/v1/optimizer';
import type { ServerContext } from '../context';
import { declarationsFromWire } from './createSession';
import { overridesFromWire, specToWire } from '../spec';

export async function addParameters(ctx: ServerContext, req: AddParametersRequest, token: string | undefined): Promise<AddParametersReply> {
  const session = ctx.store.get(req.sessionId, token);
  const decls = declarationsFromWire(req.params);
  const groups = overridesFromWire(req.groups);
  // After any step or checkpoint queued on the session: never beside one.
  const spec = await session.exclusive(() => ctx.store.addParameters(req.sessionId, groups, decls));
  return { resolvedSpec: specToWire(spec) };
}
