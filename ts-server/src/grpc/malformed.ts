// Malformed protobuf gets INVALID_ARGUMENT, not INTERNAL. grpc-js answers
// INTERNAL when a request fails to deserialize, so the service definition's
// deserializers are wrapped: a message that does not decode becomes a marker
// object, and every handler adapter (unary, and each frame of a stream)
// refuses it through checkWellFormed.
import type { ServiceDefinition, ServiceError } from '@grpc/grpc-js';
import { InvalidArgument } from '../errors';

const MALFORMED = Symbol('malformed request');

interface Malformed {
  [MALFORMED]: string;
}

export function tolerantDeserializers<S extends ServiceDefinition>(service: S): S {
  const out: Record<string, unknown> = {};
  for (const [name, m] of Object.entries(service)) {
    out[name] = {
      ...m,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return m.requestDeserialize(bytes) as unknown;
        } catch (e) {
          return { [MALFORMED]: (e as Error).message } satisfies Malformed;
        }
      },
    };
  }
  return out as S;
}

/** The request itself, or InvalidArgument when it did not decode. */
export function checkWellFormed<T>(req: T): T {
  if (req && typeof req === 'object' && MALFORMED in req) {
    throw new InvalidArgument(`malformed request: not a valid protobuf message (${(req as unknown as Malformed)[MALFORMED]})`);
  }
  return req;
}

// A handler of any kind of call (unary, streaming) of services defined elsewhere: grpc-js types
// each kind differently, and these wrappers serve them all, so `any` is the honest type of the
// call and its callback in this file.
/* eslint-disable @typescript-eslint/no-explicit-any, @typescript-eslint/no-unsafe-member-access, @typescript-eslint/no-unsafe-call, @typescript-eslint/no-unsafe-assignment, @typescript-eslint/no-unsafe-return */
type Handler = (call: any, callback?: any) => void;

/**
 * The same for services defined elsewhere that add themselves to a server
 * (grpc.health.v1, reflection): their deserializers are wrapped likewise and
 * their handlers never see a malformed request; the caller gets the status
 * `refuse` makes of the InvalidArgument (as mur's own handlers do).
 */
export function tolerantService<S extends ServiceDefinition>(
  definition: S,
  impl: Record<string, Handler>,
  refuse: (e: unknown, rpc: string) => Partial<ServiceError>,
): [S, Record<string, Handler>] {
  const out: Record<string, Handler> = {};
  for (const [name, m] of Object.entries(definition)) {
    const key = name in impl ? name : (m.originalName as string);
    const handler = impl[key];
    if (!handler) continue;
    const check = (req: unknown): Partial<ServiceError> | null => {
      try {
        checkWellFormed(req);
        return null;
      } catch (e) {
        return refuse(e, name);
      }
    };
    if (!m.requestStream) {
      // Unary or server-streaming: one request, checked before the handler runs.
      out[key] = (call, callback) => {
        const bad = check(call.request);
        if (!bad) return handler(call, callback);
        if (m.responseStream) call.emit('error', bad);
        else callback(bad);
      };
    } else {
      // Streaming requests: 'data' listeners only ever see well-formed messages.
      out[key] = (call, callback) => {
        const on = call.on.bind(call);
        let failed = false;
        call.on = (event: string, listener: (...a: unknown[]) => void) =>
          on(
            event,
            event !== 'data'
              ? listener
              : (msg: unknown) => {
                  if (failed) return;
                  const bad = check(msg);
                  if (!bad) return listener(msg);
                  failed = true;
                  if (m.responseStream) call.emit('error', bad);
                  else callback(bad);
                },
          );
        return handler(call, callback);
      };
    }
  }
  return [tolerantDeserializers(definition), out];
}
