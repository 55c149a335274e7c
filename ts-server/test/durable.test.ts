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
import { bytes, call, closeSession, create, exportAll, floats, grads, startHarness, step } from './harness';

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
