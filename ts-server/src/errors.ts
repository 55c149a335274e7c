// Typed errors raised where a problem is found. grpc/status.ts maps them to
// gRPC status codes in one place; their messages go to the client as they are.

/** The trailing-metadata key naming why a call failed, for a client to act on
 *  without reading the message (e.g. `arena-gone`: map the arena again). */
export const REASON_KEY = 'mur-reason';

/** Reasons a client can act on (the value of REASON_KEY). */
export const Reason = {
  /** The session has no shared-memory arena (a server restarted on --state-dir): OpenArena again. */
  ArenaGone: 'arena-gone',
  /** CreateSession without an optimizer, and the server has no --config default: the client picks one. */
  NoDefaultSpec: 'no-default-spec',
  /** The server's --state-dir is full (RESOURCE_EXHAUSTED): nothing was applied; the same request succeeds once there is room. */
  DiskFull: 'disk-full',
  /** An I/O error of the server's --state-dir (UNAVAILABLE): nothing was applied; the same request may be sent again. */
  DiskIO: 'disk-io',
} as const;
export type Reason = (typeof Reason)[keyof typeof Reason];

export class MurError extends Error {
  /** Sent as REASON_KEY trailing metadata when set. */
  readonly reason?: Reason;
  constructor(message: string, options?: { reason?: Reason }) {
    super(message);
    this.name = new.target.name;
    if (options?.reason) this.reason = options.reason;
  }
}
/** The request is malformed: a bad spec, id, shape, dtype, value. */
export class InvalidArgument extends MurError {}
/** The named session does not exist (never created, or closed). */
export class NotFound extends MurError {}
/** The request is well formed but the session is not in a state to take it. */
export class FailedPrecondition extends MurError {}
/** A size limit was exceeded. */
export class ResourceExhausted extends MurError {}
/** A stream broke its own framing: chunks out of order, a step never closed. */
export class OutOfRange extends MurError {}
/** A stream ended before a frame it had announced was complete. */
export class Aborted extends MurError {}
/** A per-session call without a session token. */
export class Unauthenticated extends MurError {}
/** A per-session call with a token that does not open this session. */
export class PermissionDenied extends MurError {}
/**
 * Kept state cannot be trusted: a file of --state-dir failed its checks
 * (checksum, version, which session or record it belongs to) or is missing.
 * The message names the file and what failed.
 */
export class DataLoss extends MurError {}
/** The server cannot do it now but could later: an I/O error of --state-dir (nothing was applied). */
export class Unavailable extends MurError {}
