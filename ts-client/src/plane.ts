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

/** An L-BFGS round as the plane sends it (StepRequest.round, .loss). */
export interface Round {
  round: number;
  loss: number;
}

/** What an L-BFGS round answers (StepReply.evaluate, .round, .restart) and every parameter's values after it. */
export interface RoundReply {
  evaluate: boolean;
  round: number;
  restart: string;
  values: Values;
}

export interface Plane {
  readonly name: 'shm' | 'tcp' | 'grpc';
  /** One attempt of a step: the new values of the parameters that had a gradient. */
  step(grads: Values, overrides: Overrides, step: number): Promise<Values>;
  /**
   * One attempt of an L-BFGS round (closure.ts): the gradients at the point
   * the server asked about go as any step's would on this plane, with the
   * round and loss; the reply's fields and the point to evaluate next (or the
   * step's result) come back.
   */
  round(grads: Values, overrides: Overrides, step: number, round: Round): Promise<RoundReply>;
  /**
   * Before a retry (the server was lost, or came back without this plane's
   * resources): the plane to go on with, this one re-attached or gRPC's when
   * the server no longer offers it. Throws what a retry may cure.
   */
  recover(): Promise<Plane>;
  /** Frees what the plane holds (not the session). */
  close(): Promise<void>;
}
