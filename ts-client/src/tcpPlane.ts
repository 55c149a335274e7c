// The "tcp" plane: a step's bytes on the server's data port (dataPlane.ts
// has the wire), everything else on gRPC.
import type { Capabilities } from '../generated/mur/v1/optimizer';
import { F32 } from './chunks';
import type { Connection } from './connection';
import { DataPlane, hostOf } from './dataPlane';
import { GrpcPlane } from './grpcPlane';
import type { Plane, Round, RoundReply, SessionLink } from './plane';
import type { Overrides, Values } from './types';

/** The data port of a server with these capabilities, connected; throws an Error saying why there is none from here. */
export async function openDataPort(conn: Connection, caps: Capabilities): Promise<DataPlane> {
  if (!caps.transports.includes('tcp') || !caps.dataPort) {
    throw new Error(`the server at ${conn.address} has no data port (it listens on a Unix socket, or was started with --data-port off)`);
  }
  const host = hostOf(conn.address);
  if (host === null) throw new Error(`${conn.address} has no host to reach a data port at`);
  const { tls } = conn.options;
  const data = new DataPlane(host, caps.dataPort, tls && { ca: tls.ca, cert: tls.cert, key: tls.key });
  await data.connect(conn.deadlineMs);
  return data;
}

export class TcpPlane implements Plane {
  readonly name = 'tcp';

  constructor(
    private readonly s: SessionLink,
    private readonly data: DataPlane,
  ) {}

  async step(g: Values, overrides: Overrides, step: number): Promise<Values> {
    return (await this.send(g, overrides, step)).values;
  }

  /** An L-BFGS round: its round and loss in the header's StepRequest. */
  async round(g: Values, overrides: Overrides, step: number, round: Round): Promise<RoundReply> {
    const { values, reply } = await this.send(g, overrides, step, round);
    return { evaluate: reply.evaluate, round: reply.round, restart: reply.restart, values };
  }

  private send(g: Values, overrides: Overrides, step: number, round?: Round) {
    // The server frames the gradient bytes by the session's shapes: an array
    // of another length would shift every byte after it, so it never leaves.
    const grads = [...g].map(([paramId, a]) => {
      const shape = this.s.shapes.get(paramId) ?? [a.length];
      const elements = shape.reduce((x, d) => x * d, 1);
      if (!(a instanceof Float32Array)) throw new TypeError(`gradient of '${paramId}' is not a Float32Array`);
      if (a.length !== elements)
        throw new TypeError(`gradient of '${paramId}': ${a.length} elements, parameter has ${elements} (shape ${JSON.stringify(shape)})`);
      return { paramId, grad: { shape, dtype: F32, data: Buffer.alloc(0) } };
    });
    const request = { sessionId: this.s.id, step, ...round, groupOverrides: overrides, arenaGrads: [], grads };
    return this.data.step(this.s.token, request, [...g.values()], this.s.conn.deadlineMs);
  }

  /**
   * A server restarted on its --state-dir listens on another data port,
   * which GetCapabilities gives; one that came back without a data port
   * leaves the session on gRPC.
   */
  async recover(): Promise<Plane> {
    const caps = await this.s.conn.freshCapabilities();
    await this.data.close();
    if (!caps.transports.includes('tcp') || !caps.dataPort) return new GrpcPlane(this.s);
    this.data.port = caps.dataPort;
    return this;
  }

  close(): Promise<void> {
    return this.data.close();
  }
}
