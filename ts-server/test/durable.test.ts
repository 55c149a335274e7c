// Durable sessions (--state-dir): a restarted server serves the same sessions
// (ids, tokens, step numbers, state), and a server SIGKILLed at random moments
// during training loses and doubles no step: the client retries its step
// number until it is acknowledged, and the result equals an uninterrupted run
// bit for bit.
import { strict as assert } from 'assert';
import { spawn, type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as readline from 'readline';
import * as grpc from '@grpc/grpc-js';
import {
  DType,
  OptimizerClient,
  type CreateSessionReply,
  type CreateSessionRequest,
  type StepReply,
  type StepRequest,
} from '../generated/mur/v1/optimizer';
import { currentEngine } from '../src/engine/engine';
import { resolveSpec } from '../src/registry';
import { Session } from '../src/session/session';
import { bytes, call, closeSession, create, expectStatus, exportAll, floats, grads, startHarness, step, tokenFor } from './harness';
import { createHmac, randomBytes } from 'crypto';

const F32 = DType.DTYPE_FLOAT32;
const spec = { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, lr_out: 0.01, gamma: 0.5 }, groups: {} };
const N = 5000;
const theta0 = () => new Float32Array(N).map((_, i) => Math.sin(i));
const grad = (k: number) => new Float32Array(N).map((_, i) => Math.cos(i * 0.1 + k) * 0.1);

/** The uninterrupted reference: the same steps on an in-process session. */
function reference(steps: number): Float32Array {
  const s = new Session('ref', resolveSpec(spec), [{ id: 'w', name: 'w', shape: [N], group: '', values: theta0() }]);
  let out = new Float32Array(0);
  for (let k = 1; k <= steps; k++)
    out = s.step(k, [{ id: 'w', data: grad(k) }], k === 4 ? { '': { lr: 0.02 } } : {}).values[0].data.slice();
  s.dispose();
  return out;
}

describe('durable sessions (--state-dir)', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-state-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a restarted server serves the same session: token, step number, state; a retried step replays', async () => {
    let h = await startHarness({ stateDir: dir });
    const s = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [N], dtype: F32, group: '', data: bytes(theta0()) }] });
    let last: StepReply | null = null;
    for (let k = 1; k <= 3; k++) {
      last = await step(h, {
        sessionId: s.sessionId,
        step: k,
        grads: grads({ w: { shape: [N], data: grad(k) } }),
        groupOverrides: k === 4 ? { '': { lr: 0.02 } } : {},
      });
    }
    const before = await exportAll(h, s.sessionId);
    await h.close();
    h = await startHarness({ stateDir: dir });
    try {
      assert.deepEqual(await exportAll(h, s.sessionId), before, 'every tensor and the header, as before the restart');
      const again = await step(h, {
        sessionId: s.sessionId,
        step: 3,
        grads: grads({ w: { shape: [N], data: grad(3) } }),
        groupOverrides: {},
      });
      assert.equal(again.replayed, true);
      assert.ok(
        Buffer.from(again.params[0].value!.data).equals(Buffer.from(last!.params[0].value!.data)),
        'the replay answers the same values',
      );
      let r: StepReply | null = null;
      for (let k = 4; k <= 6; k++) {
        r = await step(h, {
          sessionId: s.sessionId,
          step: k,
          grads: grads({ w: { shape: [N], data: grad(k) } }),
          groupOverrides: k === 4 ? { '': { lr: 0.02 } } : {},
        });
      }
      assert.deepEqual(Array.from(floats(r!.params[0].value!.data)), Array.from(reference(6)));
      await closeSession(h, s.sessionId);
      assert.deepEqual(fs.readdirSync(path.join(dir, 'sessions')), [], 'a closed session leaves no files');
    } finally {
      await h.close();
    }
  });

  it('a journal grown past four times the state becomes a new snapshot; recovery from it is exact', async () => {
    const n = 1 << 16; // 256 KiB per gradient; adam + hybrid hold 4 floats per element: 1 MiB of state, a 4 MiB threshold
    const big = (k: number) => new Float32Array(n).map((_, i) => Math.cos(i * 0.01 + k) * 0.1);
    let h = await startHarness({ stateDir: dir });
    const s = await create(h, {
      spec,
      params: [{ id: 'w', name: 'w', shape: [n], dtype: F32, group: '', data: bytes(new Float32Array(n).fill(0.5)) }],
    });
    const journal = path.join(dir, 'sessions', s.sessionId, 'journal');
    let grew = 0;
    let compacted = false;
    for (let k = 1; k <= 20; k++) {
      await step(h, { sessionId: s.sessionId, step: k, grads: grads({ w: { shape: [n], data: big(k) } }), groupOverrides: {} });
      const size = fs.statSync(journal).size;
      if (size < grew) compacted = true;
      grew = size;
    }
    assert.ok(compacted, 'the journal was truncated after a snapshot');
    const before = await exportAll(h, s.sessionId);
    await h.close();
    h = await startHarness({ stateDir: dir });
    try {
      assert.deepEqual(await exportAll(h, s.sessionId), before);
    } finally {
      await h.close();
    }
  });

  it('after a restart a step numbered past the next expected one is DATA_LOSS; refused numbers are kept, so they do not count as lost', async () => {
    let h = await startHarness({ stateDir: dir });
    const params = [{ id: 'w', name: 'w', shape: [N], dtype: F32, group: '', data: bytes(theta0()) }];
    const s = await create(h, { spec, params });
    const t = await create(h, { spec, params });
    const req = (id: string, k: number, data = grad(k)) => ({
      sessionId: id,
      step: k,
      grads: grads({ w: { shape: [N], data } }),
      groupOverrides: k === 4 ? { '': { lr: 0.02 } } : {},
    });
    const nan = grad(3).map((v, i) => (i === 7 ? NaN : v));
    try {
      for (const id of [s.sessionId, t.sessionId]) for (let k = 1; k <= 2; k++) await step(h, req(id, k));
      await expectStatus(step(h, req(s.sessionId, 3, nan)), grpc.status.INVALID_ARGUMENT, 'finite');
      await h.close();
      h = await startHarness({ stateDir: dir });
      const r = await step(h, req(s.sessionId, 4)); // 3 was refused (and kept): 4 is the next number
      assert.equal(r.replayed, false);
      await expectStatus(step(h, req(t.sessionId, 4)), grpc.status.DATA_LOSS, 'up to step 2', 'next step is 4', 'load_state_dict');
      await expectStatus(step(h, req(t.sessionId, 3)), grpc.status.DATA_LOSS, 'up to step 2');
    } finally {
      await h.close();
    }
  });

  it('a damaged session answers DATA_LOSS on every call, naming the file and the check; the others are served; tokens are still checked', async () => {
    let h = await startHarness({ stateDir: dir });
    const params = [{ id: 'w', name: 'w', shape: [N], dtype: F32, group: '', data: bytes(theta0()) }];
    const a = await create(h, { spec, params });
    const b = await create(h, { spec, params });
    for (const id of [a.sessionId, b.sessionId]) {
      for (let k = 1; k <= 3; k++)
        await step(h, {
          sessionId: id,
          step: k,
          grads: grads({ w: { shape: [N], data: grad(k) } }),
          groupOverrides: k === 4 ? { '': { lr: 0.02 } } : {},
        });
    }
    await h.close();
    // One bit in the payload of a's second journal record.
    const journal = path.join(dir, 'sessions', a.sessionId, 'journal');
    const buf = fs.readFileSync(journal);
    buf[Math.floor(buf.length / 2)] ^= 0x10;
    fs.writeFileSync(journal, buf);
    h = await startHarness({ stateDir: dir });
    try {
      const next = {
        sessionId: a.sessionId,
        step: 4,
        grads: grads({ w: { shape: [N], data: grad(4) } }),
        groupOverrides: { '': { lr: 0.02 } },
      };
      await expectStatus(step(h, next), grpc.status.DATA_LOSS, `${a.sessionId}/journal`, 'checksum mismatch', 'load_state_dict');
      await expectStatus(step(h, { ...next, validateOnly: true }), grpc.status.DATA_LOSS, `${a.sessionId}/journal`);
      await expectStatus(exportAll(h, a.sessionId), grpc.status.DATA_LOSS, `${a.sessionId}/journal`);
      await expectStatus(closeSession(h, a.sessionId), grpc.status.DATA_LOSS, `${a.sessionId}/journal`);
      const wrong = new grpc.Metadata();
      wrong.set('authorization', `Bearer ${tokenFor(b.sessionId)}`);
      await expectStatus(call(h.client.step.bind(h.client), { ...next, arenaGrads: [] }, wrong), grpc.status.PERMISSION_DENIED);
      assert.ok(fs.existsSync(journal), "a damaged session's files are kept");
      const r = await step(h, { ...next, sessionId: b.sessionId });
      assert.deepEqual(Array.from(floats(r.params[0].value!.data)), Array.from(reference(4)), 'the other session, exact');
      assert.ok((await create(h, { spec, params })).sessionId, 'new sessions are served');
    } finally {
      await h.close();
    }
  });

  it('a state dir of the unversioned format: its sessions answer DATA_LOSS naming the format; its key is kept (tokens still checked)', async () => {
    const key = randomBytes(32);
    fs.writeFileSync(path.join(dir, 'key'), key);
    const id = '0b5e7c1e-0000-4000-8000-000000000001';
    fs.mkdirSync(path.join(dir, 'sessions', id), { recursive: true });
    fs.writeFileSync(
      path.join(dir, 'sessions', id, 'meta.json'),
      JSON.stringify({ spec, params: [{ id: 'w', name: 'w', shape: [N], group: '' }] }),
    );
    fs.writeFileSync(path.join(dir, 'sessions', id, 'snapshot'), Buffer.from('MURJ'));
    fs.writeFileSync(path.join(dir, 'sessions', id, 'journal'), Buffer.alloc(0));
    const h = await startHarness({ stateDir: dir });
    try {
      const md = new grpc.Metadata();
      md.set('authorization', `Bearer ${createHmac('sha256', key).update(id, 'utf8').digest('base64url')}`);
      const req = { sessionId: id, step: 1, arenaGrads: [], grads: grads({ w: { shape: [N], data: grad(1) } }), groupOverrides: {} };
      await expectStatus(
        call(h.client.step.bind(h.client), req, md),
        grpc.status.DATA_LOSS,
        'unversioned state-dir format',
        'meta.json',
        'load_state_dict',
      );
      await expectStatus(call(h.client.step.bind(h.client), req, new grpc.Metadata()), grpc.status.UNAUTHENTICATED);
      assert.equal(fs.readFileSync(path.join(dir, 'key')).toString('latin1', 0, 4), 'MUR2', 'the key rewritten as a format-2 record');
      assert.ok(
        (await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [N], dtype: F32, group: '', data: bytes(theta0()) }] })).sessionId,
      );
    } finally {
      await h.close();
    }
  });

  it('SIGKILL at random moments during training: no step lost or doubled (bit for bit)', async function () {
    this.timeout(120_000);
    const CLI = path.join(__dirname, '../src/cli.js');
    const sock = path.join(dir, 'mur.sock');
    let child: ChildProcess | null = null;
    const startServer = async () => {
      // The same engine as the in-process reference, so the comparison can be bit for bit.
      child = spawn(process.execPath, [CLI, '--socket', sock, '--state-dir', path.join(dir, 'state'), '--backend', currentEngine().name], {
        env: { ...process.env, MUR_LOG: 'silent' },
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      await new Promise<string>((resolve) => readline.createInterface({ input: child!.stdout! }).once('line', resolve));
      return new OptimizerClient(`unix:${sock}`, grpc.credentials.createInsecure());
    };
    let client = await startServer();
    const created = await call<CreateSessionRequest, CreateSessionReply>(client.createSession.bind(client), {
      spec,
      params: [{ id: 'w', name: 'w', shape: [N], dtype: F32, group: '', data: bytes(theta0()) }],
    });
    const meta = new grpc.Metadata();
    meta.set('authorization', `Bearer ${created.sessionToken}`);
    const STEPS = 40;
    // Deterministic "random" kill points: during steps 5, 11, 12, 23, 31 (right after sending).
    const killAt = new Set([5, 11, 12, 23, 31]);
    let kills = 0;
    let last: StepReply | null = null;
    for (let k = 1; k <= STEPS; k++) {
      const req: StepRequest = {
        sessionId: created.sessionId,
        step: k,
        arenaGrads: [],
        groupOverrides: k === 4 ? { '': { lr: 0.02 } } : {},
        grads: grads({ w: { shape: [N], data: grad(k) } }),
      };
      for (let attempt = 0; ; attempt++) {
        assert.ok(attempt < 20, `step ${k}: no answer after 20 attempts`);
        const p = call<StepRequest, StepReply>(client.step.bind(client), req, meta);
        if (killAt.has(k) && attempt === 0) {
          // Kill while the step is in flight (before, during or after the kernel).
          child!.kill('SIGKILL');
          kills++;
        }
        try {
          last = await p;
          break;
        } catch (e) {
          const code = (e as grpc.ServiceError).code;
          assert.ok(
            [grpc.status.UNAVAILABLE, grpc.status.CANCELLED, grpc.status.INTERNAL].includes(code),
            `step ${k}: ${(e as Error).message}`,
          );
          await new Promise<void>((resolve) =>
            child!.exitCode !== null || child!.signalCode !== null ? resolve() : child!.once('exit', () => resolve()),
          );
          client.close();
          client = await startServer();
        }
      }
    }
    assert.equal(kills, 5);
    assert.deepEqual(Array.from(floats(last!.params[0].value!.data)), Array.from(reference(STEPS)), 'equal to an uninterrupted run');
    client.close();
    child!.kill('SIGTERM');
    await new Promise<void>((resolve) => child!.once('exit', () => resolve()));
  });
});
