// CreateSession: validate the spec and the declarations, then allocate.
import type { CreateSessionReply, CreateSessionRequest, ParamDecl } from '../../../generated/mur/v1/optimizer';
import { InvalidArgument, Reason } from '../../errors';
import { resolveSpec } from '../../registry';
import type { ParamDeclaration } from '../../session/session';
import { bytesToF32, checkDtype } from '../../wire/tensors';
import type { ServerContext } from '../context';
import { specFromWire, specToWire } from '../spec';

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

export function createSession(ctx: ServerContext, req: CreateSessionRequest): CreateSessionReply {
  const json = req.spec && (req.spec.optimizer || req.spec.rule) ? specFromWire(req.spec) : ctx.defaultSpec;
  if (!json) {
    throw new InvalidArgument('spec: missing (and the server has no --config default)', { reason: Reason.NoDefaultSpec });
  }
  if (req.params.length === 0) throw new InvalidArgument('params: a session needs at least one parameter');
  const decls = declarationsFromWire(req.params);
  const spec = resolveSpec(json, new Set(decls.map((d) => d.group)));
  const { session, token } = ctx.store.create(spec, decls);
  return { sessionId: session.id, resolvedSpec: specToWire(spec), sessionToken: token };
}
