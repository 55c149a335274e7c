// A data plane: how one session's steps travel. One small interface, one
// module each: shm (arena.ts), tcp (tcpPlane.ts), grpc (grpcPlane.ts). The
// session never asks which one it has; its retry loop asks the plane to
// recover before each retry.
import type * as grpc from '@grpc/grpc-js';
import type { Capabilities } from '../generated/mur/v1/optimizer';
import type { Connection } from './connection';
import type { Overrides, Values } from './types';

/** What a plane knows of its session. */
export interface SessionLink {
  readonly conn: Connection;
  readonly id: string;
  /** The session's token (the tcp plane sends it in its header). */
  readonly token: string;
  readonly caps: Capabilities;
  /** Each parameter's declared shape. */
  readonly shapes: Map<string, number[]>;
  /** Call metadata with the session's token. */
  auth(): grpc.Metadata;
}

export interface Plane {
  readonly name: 'shm' | 'tcp' | 'grpc';
  /** One attempt of a step: the new values of the parameters that had a gradient. */
  step(grads: Values, overrides: Overrides, step: number): Promise<Values>;
  /**
   * Before a retry (the server was lost, or came back without this plane's
   * resources): the plane to go on with, this one re-attached or gRPC's when
   * the server no longer offers it. Throws what a retry may cure.
   */
  recover(): Promise<Plane>;
  /** Frees what the plane holds (not the session). */
  close(): Promise<void>;
}
