// What every handler shares: the sessions and the server's limits.
import type { BackendName } from '../engine/backend';
import type { SpecJson } from '../registry';
import type { Metrics } from '../metrics';
import type { SessionStore } from '../session/store';

export interface ServerContext {
  store: SessionStore;
  backend: BackendName;
  maxMessageBytes: number;
  chunkBytes: number;
  /** The most float32 values one streamed request may carry. */
  maxStreamElements: number;
  /** The spec a CreateSession without one gets (the CLI's --config). */
  defaultSpec?: SpecJson;
  /** The tcp data plane's port, when it runs (transport/dataPlane.ts). */
  dataPort?: number;
  /** Counters of steps, bytes and errors (metrics.ts). */
  metrics: Metrics;
}
