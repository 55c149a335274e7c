// The one place where errors become gRPC statuses. Typed errors keep their
// message; anything else is INTERNAL with a generic message (the stack trace
// goes to the server log, never to the client). A typed error's `reason`
// travels as `mur-reason` trailing metadata.
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import * as E from '../errors';
import { log } from '../log';
import type { Metrics } from '../metrics';

const CODES: Array<[new (...a: never[]) => E.MurError, status]> = [
  [E.InvalidArgument, status.INVALID_ARGUMENT],
  [E.NotFound, status.NOT_FOUND],
  [E.FailedPrecondition, status.FAILED_PRECONDITION],
  [E.ResourceExhausted, status.RESOURCE_EXHAUSTED],
  [E.OutOfRange, status.OUT_OF_RANGE],
  [E.Aborted, status.ABORTED],
  [E.Unauthenticated, status.UNAUTHENTICATED],
  [E.PermissionDenied, status.PERMISSION_DENIED],
  [E.DataLoss, status.DATA_LOSS],
  [E.Unavailable, status.UNAVAILABLE],
];

/** The status a client gets for `e`; counted in `metrics` (mur_errors_total) when given. */
export function toServiceError(e: unknown, rpc: string, metrics?: Metrics): Partial<ServiceError> {
  const hit = CODES.find(([cls]) => e instanceof cls);
  metrics?.error(rpc, hit ? hit[1] : status.INTERNAL);
  if (hit) {
    const err = e as E.MurError;
    log('warn', 'rpc_error', { rpc, code: status[hit[1]], message: err.message, reason: err.reason });
    const metadata = new Metadata();
    if (err.reason) metadata.set(E.REASON_KEY, err.reason);
    return { code: hit[1], details: err.message, metadata };
  }
  log('error', 'internal_error', { rpc, message: String((e as Error)?.message ?? e), stack: (e as Error)?.stack });
  return { code: status.INTERNAL, details: `internal error in ${rpc}`, metadata: new Metadata() };
}
