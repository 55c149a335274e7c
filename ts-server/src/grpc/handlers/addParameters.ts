// AddParameters: parameters (and their groups) joining a live session, as
// torch's add_param_group. Thin: the declarations are read as CreateSession
// reads them; the store checks the byte budget, the session the rest.
import type { AddParametersReply, AddParametersRequest, ParamDecl } from '../../../generated/mur/v1/optimizer';
import type { ParamDeclaration } from '../../session/session';
import { bytesToF32, checkDtype } from '../../wire/tensors';
import type { ServerContext } from '../context';
import { overridesFromWire, specToWire } from '../spec';

/** Wire declarations as a session takes them (values null: they come through ImportState). */
export function declarationsFromWire(params: ParamDecl[]): ParamDeclaration[] {
  return params.map((p, i) => {
    checkDtype(p.dtype, `params[${i}] '${p.id}'`);
    return {
      id: p.id,
      name: p.name || p.id,
      shape: p.shape,
      group: p.group,
      // Empty data means "values come through ImportState", except for a tensor with no elements.
      values: p.data.length || p.shape.some((n) => n === 0) ? bytesToF32(p.data, `params[${i}] '${p.id}'`) : null,
    };
  });
}

export async function addParameters(ctx: ServerContext, req: AddParametersRequest, token: string | undefined): Promise<AddParametersReply> {
  const session = ctx.store.get(req.sessionId, token);
  const decls = declarationsFromWire(req.params);
  const groups = overridesFromWire(req.groups);
  // After any step or checkpoint queued on the session: never beside one.
  const spec = await session.exclusive(() => ctx.store.addParameters(req.sessionId, groups, decls));
  return { resolvedSpec: specToWire(spec) };
}
