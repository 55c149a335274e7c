// TLS and mutual TLS, with certificates made by openssl at test time
// (certs.ts): a TLS server refuses plaintext and clients that do not trust its
// CA; with a client CA (mTLS) it refuses clients without a certificate or with
// one from another CA, and serves a client whose certificate its CA signed.
// The CLI flags (--tls-cert, --tls-key, --tls-client-ca) start the same server.
import { strict as assert } from 'assert';
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import * as readline from 'readline';
import * as grpc from '@grpc/grpc-js';
import { DType, OptimizerClient, type Capabilities, type CreateSessionReply, type StepReply } from '../generated/mur/v1/optimizer';
import { startServer, type RunningServer, type ServerOptions } from '../src/grpc/server';
import { makeCerts, type Certs } from './certs';
import { bytes, floats } from './harness';

const CLI = path.join(__dirname, '../src/cli.js');
const F32 = DType.DTYPE_FLOAT32;

function capabilities(client: OptimizerClient): Promise<Capabilities> {
  return new Promise((resolve, reject) =>
    client.getCapabilities({}, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r))),
  );
}

/** A session and one SGD step over this client: the whole path works, token included. */
async function trainOneStep(client: OptimizerClient): Promise<number[]> {
  const s = await new Promise<CreateSessionReply>((resolve, reject) =>
    client.createSession(
      {
        spec: { optimizer: 'sgd', rule: 'additive', defaults: { lr: 0.5 }, groups: {} },
        params: [{ id: 'w', name: 'w', shape: [2], dtype: F32, group: '', data: bytes([1, 2]) }],
      },
      (e, r) => (e ? reject(e) : resolve(r)),
    ),
  );
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${s.sessionToken}`);
  const r = await new Promise<StepReply>((resolve, reject) =>
    client.step(
      {
        sessionId: s.sessionId,
        step: 1,
        grads: [{ paramId: 'w', grad: { shape: [2], dtype: F32, data: bytes([1, -2]) } }],
        groupOverrides: {},
        arenaGrads: [],
      },
      md,
      (e, r) => (e ? reject(e) : resolve(r)),
    ),
  );
  return Array.from(floats(r.params[0].value!.data));
}

/** The call fails with `code` (UNAVAILABLE: the TLS handshake never completed). */
async function refused(client: OptimizerClient, code = grpc.status.UNAVAILABLE): Promise<string> {
  const e = await capabilities(client).then(
    () => assert.fail('the call succeeded'),
    (x: grpc.ServiceError) => x,
  );
  assert.equal(e.code, code, `${grpc.status[e.code]}: ${e.details}`);
  return e.details;
}

describe('TLS', () => {
  let certs: Certs;
  const clients: OptimizerClient[] = [];
  const client = (target: string, creds: grpc.ChannelCredentials) => {
    const c = new OptimizerClient(target, creds);
    clients.push(c);
    return c;
  };
  const serve = (tls: ServerOptions['tls']) => startServer({ port: 0, tls });

  before(function () {
    this.timeout(30_000);
    certs = makeCerts();
  });
  afterEach(() => {
    for (const c of clients.splice(0)) c.close();
  });
  after(() => certs?.remove());

  describe('server certificate', () => {
    let server: RunningServer;
    before(async () => {
      server = await serve({ cert: certs.server.cert, key: certs.server.key });
    });
    after(async () => server.close());

    it('refuses a plaintext client', async () => {
      await refused(client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure()));
    });

    it('serves a client that trusts its CA, at 127.0.0.1 and at localhost', async () => {
      const creds = grpc.credentials.createSsl(certs.ca);
      assert.deepEqual(await trainOneStep(client(`127.0.0.1:${server.port}`, creds)), [0.5, 3]);
      assert.ok((await capabilities(client(`localhost:${server.port}`, creds))).optimizers.length > 0);
    });

    it('is refused by a client that trusts only another CA', async () => {
      const other = fs.readFileSync(path.join(certs.dir, 'other-ca.pem'));
      await refused(client(`127.0.0.1:${server.port}`, grpc.credentials.createSsl(other)));
    });
  });

  describe('mutual TLS (a client CA)', () => {
    let server: RunningServer;
    before(async () => {
      server = await serve({ cert: certs.server.cert, key: certs.server.key, clientCa: certs.ca });
    });
    after(async () => server.close());

    it('refuses a client without a certificate', async () => {
      await refused(client(`127.0.0.1:${server.port}`, grpc.credentials.createSsl(certs.ca)));
    });

    it('refuses a client whose certificate another CA signed', async () => {
      await refused(client(`127.0.0.1:${server.port}`, grpc.credentials.createSsl(certs.ca, certs.stranger.key, certs.stranger.cert)));
    });

    it('serves a client with a certificate its CA signed', async () => {
      const c = client(`127.0.0.1:${server.port}`, grpc.credentials.createSsl(certs.ca, certs.client.key, certs.client.cert));
      assert.deepEqual(await trainOneStep(c), [0.5, 3]);
    });
  });

  describe('the CLI', () => {
    it('--tls-cert needs --tls-key, and unreadable files are named (exit 2)', () => {
      const env = { ...process.env, MUR_LOG: 'silent' };
      const half = spawnSync(process.execPath, [CLI, '--tls-cert', certs.server.certFile], { encoding: 'utf8', env });
      assert.equal(half.status, 2);
      assert.match(half.stderr, /both --tls-cert and --tls-key/);
      const missing = spawnSync(process.execPath, [CLI, '--tls-cert', certs.server.certFile, '--tls-key', '/nonexistent/key.pem'], {
        encoding: 'utf8',
        env,
      });
      assert.equal(missing.status, 2);
      assert.match(missing.stderr, /--tls-key: cannot read \/nonexistent\/key.pem/);
      const wrongKey = spawnSync(
        process.execPath,
        [CLI, '--port', '0', '--backend', 'cpu', '--tls-cert', certs.server.certFile, '--tls-key', certs.client.keyFile],
        { encoding: 'utf8', env, timeout: 30_000 },
      );
      assert.notEqual(wrongKey.status, 0, 'a key that does not match the certificate stops the server');
      assert.match(wrongKey.stderr, /mur-server: .*key/i);
    });

    it('--tls-cert --tls-key --tls-client-ca start a mutual-TLS server', async function () {
      this.timeout(30_000);
      const child = spawn(
        process.execPath,
        [
          CLI,
          '--port',
          '0',
          '--backend',
          'cpu',
          '--tls-cert',
          certs.server.certFile,
          '--tls-key',
          certs.server.keyFile,
          '--tls-client-ca',
          certs.caFile,
        ],
        { env: { ...process.env, MUR_LOG: 'silent' }, stdio: ['ignore', 'pipe', 'ignore'] },
      );
      const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
      try {
        const info = JSON.parse(
          await new Promise<string>((resolve) => readline.createInterface({ input: child.stdout }).once('line', resolve)),
        ) as { tls: string; port: number };
        assert.equal(info.tls, 'mutual');
        await refused(client(`127.0.0.1:${info.port}`, grpc.credentials.createSsl(certs.ca)));
        const c = client(`localhost:${info.port}`, grpc.credentials.createSsl(certs.ca, certs.client.key, certs.client.cert));
        assert.deepEqual(await trainOneStep(c), [0.5, 3]);
      } finally {
        for (const c of clients.splice(0)) c.close();
        child.kill('SIGTERM');
      }
      assert.equal(await exited, 0);
    });
  });
});
