// L-BFGS steps from the TypeScript client (src/closure.ts) against an
// in-process server: a least-squares problem whose minimum is known, the
// closure called at the server's points, and the first loss returned; on
// every plane (grpc, grpc with every round streamed, tcp, shm), the same
// rounds bit for bit; a --state-dir server restarted in the middle of a step
// (grpc, shm: the client maps the new server's arena) ends the step where an
// uninterrupted one does.
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import { MurClient, type Hypers, type MurSession, type Values } from '../src';

const TRANSPORTS = ['grpc', 'grpc-stream', 'tcp', 'shm'] as const;

describe('L-BFGS steps (stepClosure)', () => {
  let server: RunningServer;
  let native = true;
  before(async () => {
    try {
      await initBackend('native'); // the shm plane needs it
    } catch (e) {
      if (process.env.MUR_EXPECT_NATIVE_ENGINE === '1') throw e;
      native = false;
      await initBackend('wasm');
    }
    server = await startServer({ port: 0 });
  });
  after(async () => {
    await server.close();
  });

  /** sum_i (i + 1) (w_i - i)^2 + (b - 3)^2, evaluated where the server asks; counts its calls. */
  function problem(w0: Float32Array) {
    const calls = { n: 0 };
    let here: Values = new Map([
      ['w', w0],
      ['b', Float32Array.of(0)],
    ]);
    const closure = (params: Values | null) => {
      calls.n++;
      if (params) here = params;
      const w = here.get('w')!;
      const b = here.get('b')![0];
      let loss = (b - 3) ** 2;
      const g = new Float32Array(5);
      w.forEach((v, i) => {
        loss += (i + 1) * (v - i) ** 2;
        g[i] = 2 * (i + 1) * (v - i);
      });
      return {
        loss,
        grads: new Map([
          ['w', g],
          ['b', Float32Array.of(2 * (b - 3))],
        ]),
      };
    };
    return { closure, calls };
  }

  /** Two steps on `transport`: each step's first loss, evaluations and parameters, and how many rounds went by StepStream. */
  async function twoSteps(transport: (typeof TRANSPORTS)[number], defaults: Hypers) {
    const client = new MurClient(`127.0.0.1:${server.port}`);
    let s: MurSession | null = null;
    let streamed = 0;
    try {
      const w0 = new Float32Array(5);
      const session = await client.createSession(
        { optimizer: 'lbfgs', rule: 'additive', defaults },
        [
          { id: 'w', shape: [5], values: w0 },
          { id: 'b', shape: [], values: Float32Array.of(0) },
        ],
        { transport: transport === 'grpc-stream' ? 'grpc' : transport },
      );
      s = session;
      assert.equal(session.transport, transport === 'grpc-stream' ? 'grpc' : transport);
      if (transport === 'grpc-stream') {
        // This client's own message limit, so small that every round (24 bytes of gradients) streams, in 8-byte chunks.
        Object.assign(session.link.caps, { maxMessageBytes: 16, chunkBytes: 8 });
        const raw = session.link.conn.raw;
        const open = raw.stepStream.bind(raw);
        raw.stepStream = ((...a: Parameters<typeof open>) => {
          streamed++;
          return open(...a);
        }) as typeof raw.stepStream;
        raw.step = () => assert.fail('a round went unary');
      }
      const { closure, calls } = problem(w0);
      const out: Array<{ loss: number; values: Values; evaluations: number }> = [];
      for (let k = 0; k < 2; k++) {
        const r: { loss: number; values: Values; evaluations: number } = await session.stepClosure(closure);
        assert.equal(r.evaluations, calls.n - out.reduce((a, o) => a + o.evaluations, 0));
        out.push(r);
      }
      return { out, streamed };
    } finally {
      await s?.close();
      client.close();
    }
  }

  it('minimises sum_i (i + 1) (w_i - i)^2 + (b - 3)^2 in one step; the first loss and the evaluations come back', async () => {
    const { out } = await twoSteps('grpc', { line_search_fn: 'strong_wolfe' });
    const r = out[0];
    assert.equal(r.loss, 9 + [0, 1, 2, 3, 4].reduce((a, i) => a + (i + 1) * i * i, 0), 'the loss at the start');
    assert.ok(r.evaluations > 1);
    Array.from(r.values.get('w')!).forEach((v, i) => assert.ok(Math.abs(v - i) < 1e-4, `w[${i}] = ${v}`));
    assert.ok(Math.abs(r.values.get('b')![0] - 3) < 1e-4);
  });

  for (const transport of TRANSPORTS.slice(1)) {
    it(`${transport}: the rounds of grpc, bit for bit (the losses, evaluations and every parameter after each step)`, async function () {
      if (transport === 'shm' && !native) this.skip(); // no native engine here: no shm plane to test
      const defaults: Hypers = { line_search_fn: 'strong_wolfe', max_iter: 3 };
      const want = await twoSteps('grpc', defaults);
      const got = await twoSteps(transport, defaults);
      if (transport === 'grpc-stream') {
        assert.equal(
          got.streamed,
          got.out.reduce((a, o) => a + o.evaluations, 0),
          'one StepStream per round',
        );
      }
      got.out.forEach((r, k) => {
        const w = want.out[k];
        assert.equal(r.loss, w.loss, `step ${k + 1}: first loss`);
        assert.equal(r.evaluations, w.evaluations, `step ${k + 1}: evaluations`);
        for (const id of ['w', 'b'])
          assert.deepEqual(Array.from(r.values.get(id)!), Array.from(w.values.get(id)!), `step ${k + 1} '${id}'`);
      });
    });
  }

  for (const transport of ['grpc', 'shm'] as const) {
    it(`${transport}: a --state-dir server restarted in the middle of a step: the step runs again from before it, and ends as uninterrupted`, async function () {
      if (transport === 'shm' && !native) this.skip();
      const defaults: Hypers = { max_iter: 3, lr: 0.1 }; // no line search, short moves: 4 evaluations per step
      const want = await twoSteps('grpc', defaults);
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-closure-'));
      const socket = path.join(dir, 'mur.sock');
      const stateDir = path.join(dir, 'state');
      let restarted: RunningServer = await startServer({ socket, stateDir });
      const client = new MurClient(`unix:${socket}`, { deadlineMs: 10_000 });
      try {
        const w0 = new Float32Array(5);
        const s = await client.createSession(
          { optimizer: 'lbfgs', rule: 'additive', defaults },
          [
            { id: 'w', shape: [5], values: w0 },
            { id: 'b', shape: [], values: Float32Array.of(0) },
          ],
          { transport },
        );
        assert.equal(s.transport, transport);
        const { closure, calls } = problem(w0);
        const first = await s.stepClosure(closure);
        const before = calls.n;
        const second = await s.stepClosure(async (params) => {
          if (calls.n === before + 2) {
            // The third evaluation of step 2: the server stops and comes back on its state directory.
            await restarted.close();
            restarted = await startServer({ socket, stateDir });
          }
          return closure(params);
        });
        assert.equal(s.transport, transport, 'the same plane after the restart (shm: the new arena)');
        assert.equal(second.evaluations, want.out[1].evaluations + 3, 'three evaluations before the restart, then the whole step');
        for (const [k, r] of [first, second].entries()) {
          assert.equal(r.loss, want.out[k].loss, `step ${k + 1}: first loss`);
          for (const id of ['w', 'b'])
            assert.deepEqual(Array.from(r.values.get(id)!), Array.from(want.out[k].values.get(id)!), `step ${k + 1} '${id}'`);
        }
        await s.close();
      } finally {
        client.close();
        await restarted.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
