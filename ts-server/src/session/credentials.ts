// Session credentials. A session's token is an HMAC of its id under a key
// this server holds (random per process, or kept in --state-dir so tokens
// survive a restart), so a token can be checked before the session is looked
// up: a caller without the right token learns nothing, not even whether the
// session exists, and the owner of a lost session still gets NOT_FOUND.
import { createHmac, randomBytes, timingSafeEqual } from 'crypto';
import type { Metadata } from '@grpc/grpc-js';
import { PermissionDenied, Unauthenticated } from '../errors';

export class Credentials {
  constructor(private readonly key: Buffer = randomBytes(32)) {}

  /** The secret key, for persisting next to durable sessions. */
  get secret(): Buffer {
    return this.key;
  }

  tokenFor(sessionId: string): string {
    return createHmac('sha256', this.key).update(sessionId, 'utf8').digest('base64url');
  }

  /** Throws Unauthenticated (no token) or PermissionDenied (not this session's). */
  check(sessionId: string, token: string | undefined): void {
    if (!token)
      throw new Unauthenticated('this call needs the session token (metadata "authorization: Bearer <token>" from CreateSession)');
    const want = Buffer.from(this.tokenFor(sessionId), 'utf8');
    const got = Buffer.from(token, 'utf8');
    if (got.length !== want.length || !timingSafeEqual(got, want)) {
      throw new PermissionDenied('the session token does not match this session id');
    }
  }
}

/** The bearer token of a call's metadata, if any. */
export function tokenOf(metadata: Metadata | undefined): string | undefined {
  const v = metadata?.get('authorization')[0];
  if (typeof v !== 'string') return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(v.trim());
  return m ? m[1] : undefined;
}
