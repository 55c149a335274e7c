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

const BY_CODE: Partial<Record<status, new (m: string, c: status, r?: string) => MurError>> = {
  [status.INVALID_ARGUMENT]: InvalidArgumentError,
  [status.NOT_FOUND]: NotFoundError,
  [status.FAILED_PRECONDITION]: FailedPreconditionError,
  [status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [status.UNAVAILABLE]: UnavailableError,
};

/** The MurError subclass of a gRPC status code, with the message as gRPC calls give it. */
export function fromStatus(code: status, details: string, reason = ''): MurError {
  const Cls = BY_CODE[code] ?? MurError;
  return new Cls(`${details} [${status[code] ?? code}]`, code, reason);
}

export function fromServiceError(e: ServiceError): MurError {
  const reason = e.metadata?.get(REASON_KEY)[0];
  return fromStatus(e.code, e.details, reason === undefined ? '' : String(reason));
}
