// Malformed protobuf gets INVALID_ARGUMENT, not INTERNAL. grpc-js answers
// INTERNAL when a request fails to deserialize, so the service definition's
// deserializers are wrapped: a message that does not decode becomes a marker
// object, and every handler adapter (unary, and each frame of a stream)
// refuses it through checkWellFormed.
import type { ServiceDefinition } from '@grpc/grpc-js';
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
          return m.requestDeserialize(bytes);
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
