// Server errors as typed exceptions carrying the server's message.
import { status, type ServiceError } from '@grpc/grpc-js';

/** The trailing metadata key by which the server says why, in a word a client can act on. */
export const REASON_KEY = 'mur-reason';

export class MurError extends Error {
  constructor(
    message: string,
    readonly code: status,
    /** The server's `mur-reason` (e.g. "arena-gone"); "" when it gave none. */
    readonly reason = '',
  ) {
    super(message);
    this.name = new.target.name;
  }
}
export class InvalidArgumentError extends MurError {}
export class NotFoundError extends MurError {}
export class FailedPreconditionError extends MurError {}
export class ResourceExhaustedError extends MurError {}
export class UnavailableError extends MurError {}
/**
 * The server's kept state of this session (--state-dir) failed its checks;
 * the message names the file and what failed. Never retried: resume from a
 * checkpoint in a new session (RESUME says how).
 */
export class DataLossError extends MurError {}
/** The server's --state-dir is full: nothing was applied; not retried (the same step succeeds once there is room). */
export class StorageFullError extends ResourceExhaustedError {}
/** An I/O error of the server's --state-dir: nothing was applied; retried like UNAVAILABLE, then thrown. */
export class StorageIOError extends UnavailableError {}

export const RESUME =
  'To resume: create a new session (MurClient.createSession) and restore(<your last checkpoint>) (a MurSession.checkpoint() you saved).';

type ErrorClass = new (m: string, c: status, r?: string) => MurError;

const BY_CODE: Partial<Record<status, ErrorClass>> = {
  [status.INVALID_ARGUMENT]: InvalidArgumentError,
  [status.NOT_FOUND]: NotFoundError,
  [status.FAILED_PRECONDITION]: FailedPreconditionError,
  [status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [status.UNAVAILABLE]: UnavailableError,
  [status.DATA_LOSS]: DataLossError,
};

/**
 * A full or failing --state-dir: the server's mur-reason (gRPC), or the
 * beginning of its message, "state dir DIR:" (the tcp data plane carries no
 * metadata; ts-server/src/session/durable.ts).
 */
function storageClass(code: status, details: string, reason: string): ErrorClass | undefined {
  if (code === status.RESOURCE_EXHAUSTED && (reason === 'disk-full' || (!reason && details.startsWith('state dir '))))
    return StorageFullError;
  if (code === status.UNAVAILABLE && (reason === 'disk-io' || (!reason && details.startsWith('state dir ')))) return StorageIOError;
  return undefined;
}

/** The MurError subclass of a gRPC status code, with the message as gRPC calls give it. */
export function fromStatus(code: status, details: string, reason = ''): MurError {
  const Cls = storageClass(code, details, reason) ?? BY_CODE[code] ?? MurError;
  const resume = code === status.DATA_LOSS ? ` ${RESUME}` : '';
  return new Cls(`${details} [${status[code] ?? code}]${resume}`, code, reason);
}

export function fromServiceError(e: ServiceError): MurError {
  const reason = e.metadata?.get(REASON_KEY)[0];
  return fromStatus(e.code, e.details, reason === undefined ? '' : String(reason));
}
