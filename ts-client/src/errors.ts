// Server errors as typed exceptions carrying the server's message.
import { status, type ServiceError } from '@grpc/grpc-js';

export class MurError extends Error {
  constructor(message: string, readonly code: status) {
    super(message);
    this.name = new.target.name;
  }
}
export class InvalidArgumentError extends MurError {}
export class NotFoundError extends MurError {}
export class FailedPreconditionError extends MurError {}
export class ResourceExhaustedError extends MurError {}
export class UnavailableError extends MurError {}

const BY_CODE: Partial<Record<status, new (m: string, c: status) => MurError>> = {
  [status.INVALID_ARGUMENT]: InvalidArgumentError,
  [status.NOT_FOUND]: NotFoundError,
  [status.FAILED_PRECONDITION]: FailedPreconditionError,
  [status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [status.UNAVAILABLE]: UnavailableError,
};

/** The MurError subclass of a gRPC status code, with the message as gRPC calls give it. */
export function fromStatus(code: status, details: string): MurError {
  const Cls = BY_CODE[code] ?? MurError;
  return new Cls(`${details} [${status[code] ?? code}]`, code);
}

export function fromServiceError(e: ServiceError): MurError {
  return fromStatus(e.code, e.details);
}
