// MurClient over TLS and mutual TLS ({ tls: { ca, cert, key } }), against an
// in-process server, with certificates made by openssl at test time (the
// server package's test helper).
import { strict as assert } from 'assert';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import { makeCerts, type Certs } from '@mur/server/dist/test/certs';
import { MurClient, UnavailableError } from '../src';
import { DataPlane } from '../src/dataPlane';

describe('MurClient over TLS', () => {
  let certs: Certs;
  let server: RunningServer;
  before(async function () {
    this.timeout(30_000);
    await initBackend('wasm');
    certs = makeCerts();
    server = await startServer({ port: 0, tls: { cert: certs.server.cert, key: certs.server.key, clientCa: certs.ca } });
  });
  after(async () => {
    await server?.close();
    certs?.remove();
  });

  it('trains with a certificate the server trusts (mutual TLS)', async () => {
    const client = new MurClient(`localhost:${server.port}`, { tls: { ca: certs.ca, cert: certs.client.cert, key: certs.client.key } });
    try {
      const s = await client.createSession(
        { optimizer: 'sgd', rule: 'additive', defaults: { lr: 0.5 } },
        [{ id: 'w', shape: [2], values: Float32Array.from([1, 2]) }],
        { transport: 'grpc' },
      );
      assert.deepEqual(Array.from((await s.step({ w: Float32Array.from([1, -2]) })).get('w')!), [0.5, 3]);
      await s.close();
    } finally {
      client.close();
    }
  });

  it('the tcp transport goes over TLS with the same certificates, and steps as grpc', async () => {
    const client = new MurClient(`localhost:${server.port}`, { tls: { ca: certs.ca, cert: certs.client.cert, key: certs.client.key } });
    try {
      const sgd = { optimizer: 'sgd', rule: 'additive', defaults: { lr: 0.5 } };
      const tcp = await client.createSession(sgd, [{ id: 'w', shape: [2], values: Float32Array.from([1, 2]) }], { transport: 'tcp' });
      const wire = await client.createSession(sgd, [{ id: 'w', shape: [2], values: Float32Array.from([1, 2]) }], { transport: 'grpc' });
      assert.equal(tcp.transport, 'tcp');
      for (let k = 1; k <= 3; k++) {
        const g = { w: Float32Array.from([k, -2 * k]) };
        assert.deepEqual(Array.from((await tcp.step(g)).get('w')!), Array.from((await wire.step(g)).get('w')!));
      }
      await tcp.close();
      await wire.close();
    } finally {
      client.close();
    }
    // Without a client certificate the data port refuses too (with TLS 1.3, after the handshake).
    const plane = new DataPlane('localhost', server.context.dataPort!, { ca: certs.ca });
    try {
      const request = { sessionId: 'x', step: 1, grads: [], groupOverrides: {}, arenaGrads: [] };
      await assert.rejects(plane.step('t', request, [], 10_000), (e: unknown) => e instanceof UnavailableError);
    } finally {
      await plane.close();
    }
  });

  it('is refused without a client certificate, and in plaintext', async () => {
    for (const options of [{ tls: { ca: certs.ca } }, {}]) {
      const client = new MurClient(`localhost:${server.port}`, options);
      try {
        await assert.rejects(client.capabilities(), (e: unknown) => e instanceof UnavailableError);
      } finally {
        client.close();
      }
    }
  });

  it('a certificate without its key is a TypeError', () => {
    assert.throws(() => new MurClient('localhost:1', { tls: { cert: certs.client.cert } }), /cert and key go together/);
  });
});
