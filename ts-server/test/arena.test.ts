// The same-host data plane from a client's side: OpenArena, then gradients
// written into the arena and parameters read from it (through the memfd's
// /proc path with pread/pwrite, as a client without mmap would). Every step
// must equal, bit for bit, the same step sent inline; bad input is refused
// with the same statuses and leaves the arena's parameters untouched; nothing
// appears in /dev/shm. On the tfjs engines OpenArena is refused.
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { status, type ServiceError } from '@grpc/grpc-js';
import { DType, type ArenaInfo, type CreateSessionRequest, type OpenArenaRequest } from '../generated/mur/v1/optimizer';
import { currentEngine } from '../src/engine/engine';
import {
  auth,
  call,
  capabilities as getCaps,
  closeSession,
  create,
  expectStatus as expectRefused,
  importFrames as importState,
  startHarness,
  step,
  type Harness,
} from './harness';

const F32 = DType.DTYPE_FLOAT32;
const bytes = (a: number[]) => Buffer.from(Float32Array.from(a).buffer);
const spec = { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, lr_out: 0.01, gamma: 0.5 }, groups: {} };
const request = (): CreateSessionRequest => ({
  spec,
  params: [
    { id: 'w', name: 'w', shape: [2, 3], dtype: F32, group: '', data: bytes([0.5, -1, 2, 0.25, -0.75, 1.5]) },
    { id: 'b', name: 'b', shape: [3], dtype: F32, group: '', data: bytes([0.1, 0, -0.2]) },
  ],
});
const openArena = (h: Harness, sessionId: string) =>
  call<OpenArenaRequest, ArenaInfo>(h.client.openArena.bind(h.client), { sessionId, overlap: false }, auth(sessionId));

/** A client's handle on an arena: pread/pwrite on the memfd. */
class Mapped {
  private readonly fd: number;
  constructor(readonly info: ArenaInfo) {
    this.fd = fs.openSync(info.path, 'r+');
  }
  token(): Buffer {
    const b = Buffer.alloc(32);
    fs.readSync(this.fd, b, 0, 32, 0);
    return b;
  }
  param(i: number): Float32Array {
    const t = this.info.tensors[i];
    const b = Buffer.alloc(4 * t.elements);
    fs.readSync(this.fd, b, 0, b.length, t.paramOffset);
    return new Float32Array(b.buffer, b.byteOffset, t.elements);
  }
  writeParam(i: number, v: number[]): void {
    fs.writeSync(this.fd, bytes(v), 0, 4 * v.length, this.info.tensors[i].paramOffset);
  }
  writeGrad(i: number, g: number[]): void {
    fs.writeSync(this.fd, bytes(g), 0, 4 * g.length, this.info.tensors[i].gradOffset);
  }
  close(): void {
    fs.closeSync(this.fd);
  }
}

const shmFiles = () => (fs.existsSync('/dev/shm') ? fs.readdirSync('/dev/shm').sort() : []);

describe('same-host transport: the shared-memory arena', () => {
  let h: Harness;
  let native: boolean;
  before(async () => {
    h = await startHarness();
    native = currentEngine().createArena !== undefined;
  });
  after(async () => h.close());

  it('is refused with FAILED_PRECONDITION where the engine cannot step in shared memory', async function () {
    if (native) this.skip(); // the native engine offers it: the tests below
    const caps = await getCaps(h);
    assert.deepEqual(caps.transports, ['grpc', 'tcp']);
    const s = await create(h, request());
    await expectRefused(openArena(h, s.sessionId), status.FAILED_PRECONDITION, 'native engine');
    await closeSession(h, s.sessionId);
  });

  it('steps in place: each arena step equals the same step sent inline, bit for bit; replays apply nothing', async function () {
    if (!native) this.skip();
    const before = shmFiles();
    const a = await create(h, request());
    const b = await create(h, request());
    const info = await openArena(h, a.sessionId);
    assert.equal(info.tensors.length, 2);
    assert.ok(info.tensors.every((t) => t.paramOffset % 64 === 0 && t.gradOffset % 64 === 0));
    assert.deepEqual((await openArena(h, a.sessionId)).token, info.token, 'OpenArena again returns the same arena');
    const m = new Mapped(info);
    try {
      assert.ok(m.token().equals(Buffer.from(info.token)), 'the token is at offset 0');
      assert.deepEqual(Array.from(m.param(0)), Array.from(new Float32Array([0.5, -1, 2, 0.25, -0.75, 1.5])));
      for (let k = 1; k <= 5; k++) {
        const gw = [0.1 * k, -0.2, 0.3, 0.05, -k, 0.5];
        const gb = [1, -1, 0.5 * k];
        m.writeGrad(0, gw);
        m.writeGrad(1, gb);
        const r = await step(h, { sessionId: a.sessionId, step: k, grads: [], groupOverrides: {}, arenaGrads: [0, 1] });
        assert.equal(r.replayed, false);
        assert.equal(r.params.length, 0, 'values are in the arena, not the reply');
        const inline = await step(h, {
          sessionId: b.sessionId,
          step: k,
          groupOverrides: {},
          grads: [
            { paramId: 'w', grad: { shape: [2, 3], dtype: F32, data: bytes(gw) } },
            { paramId: 'b', grad: { shape: [3], dtype: F32, data: bytes(gb) } },
          ],
        });
        const want = inline.params.map((p) => Buffer.from(p.value!.data));
        assert.ok(Buffer.from(m.param(0).buffer).equals(want[0]), `step ${k}: w differs`);
        assert.ok(Buffer.from(m.param(1).buffer).equals(want[1]), `step ${k}: b differs`);
      }
      const was = Buffer.from(m.param(0).buffer);
      const again = await step(h, { sessionId: a.sessionId, step: 5, grads: [], groupOverrides: {}, arenaGrads: [0, 1] });
      assert.equal(again.replayed, true, 'the same arena gradients under the same number: a retry');
      assert.ok(Buffer.from(m.param(0).buffer).equals(was), 'a replayed step changes nothing');
      m.writeGrad(0, [9, 9, 9, 9, 9, 9]);
      await expectRefused(
        step(h, { sessionId: a.sessionId, step: 5, grads: [], groupOverrides: {}, arenaGrads: [0, 1] }),
        status.FAILED_PRECONDITION,
        'different request',
      );
      assert.ok(Buffer.from(m.param(0).buffer).equals(was));
      // Only the parameters named step: b keeps its value when only w has a gradient.
      const bWas = Buffer.from(m.param(1).buffer);
      m.writeGrad(0, [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]);
      await step(h, { sessionId: a.sessionId, step: 6, grads: [], groupOverrides: {}, arenaGrads: [0] });
      assert.ok(Buffer.from(m.param(1).buffer).equals(bWas));
      assert.ok(!Buffer.from(m.param(0).buffer).equals(was));
    } finally {
      m.close();
    }
    await closeSession(h, a.sessionId);
    await closeSession(h, b.sessionId);
    assert.deepEqual(shmFiles(), before, 'the arena has no name in /dev/shm');
  });

  it("a client's edit of the arena's parameters between steps is what the next step starts from", async function () {
    if (!native) this.skip();
    const a = await create(h, request());
    const b = await create(h, request());
    const m = new Mapped(await openArena(h, a.sessionId));
    try {
      const edited = [3, 3, 3, -3, -3, -3];
      m.writeParam(0, edited);
      // The twin gets the same values the ordinary way.
      await importState(h, [
        { frame: { $case: 'header', value: { sessionId: b.sessionId, stepCounts: [], lastStep: 0 } } },
        { frame: { $case: 'chunk', value: { paramId: 'w', slot: '', offset: 0, totalElements: 6, dtype: F32, data: bytes(edited) } } },
      ]);
      const g = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
      m.writeGrad(0, g);
      await step(h, { sessionId: a.sessionId, step: 1, grads: [], groupOverrides: {}, arenaGrads: [0] });
      const inline = await step(h, {
        sessionId: b.sessionId,
        step: 1,
        groupOverrides: {},
        grads: [{ paramId: 'w', grad: { shape: [2, 3], dtype: F32, data: bytes(g) } }],
      });
      assert.ok(Buffer.from(m.param(0).buffer).equals(Buffer.from(inline.params[0].value!.data)));
      assert.ok(Math.abs(m.param(0)[0] - 3) < 0.1, 'stepped from the edited value');
    } finally {
      m.close();
    }
    await closeSession(h, a.sessionId);
    await closeSession(h, b.sessionId);
  });

  it('bad arena steps are refused with the right status and leave the parameters bit for bit', async function () {
    if (!native) this.skip();
    const a = await create(h, request());
    const m = new Mapped(await openArena(h, a.sessionId));
    const s = (req: { step: number; arenaGrads: number[]; grads?: [] | never[] }) =>
      step(h, { sessionId: a.sessionId, groupOverrides: {}, grads: [], ...req });
    try {
      m.writeGrad(0, [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]);
      await s({ step: 1, arenaGrads: [0] });
      const was = [Buffer.from(m.param(0).buffer), Buffer.from(m.param(1).buffer)];
      m.writeGrad(0, [0.1, NaN, 0.1, 0.1, 0.1, 0.1]);
      m.writeGrad(1, [1, 1, 1]);
      await expectRefused(s({ step: 2, arenaGrads: [1, 0] }), status.INVALID_ARGUMENT, "'w'", 'element 1');
      await expectRefused(s({ step: 2, arenaGrads: [2] }), status.INVALID_ARGUMENT, 'arena_grads[0]', '2');
      await expectRefused(s({ step: 2, arenaGrads: [1, 1] }), status.INVALID_ARGUMENT, 'twice');
      await expectRefused(
        step(h, {
          sessionId: a.sessionId,
          step: 2,
          groupOverrides: {},
          arenaGrads: [1],
          grads: [{ paramId: 'b', grad: { shape: [3], dtype: F32, data: bytes([1, 1, 1]) } }],
        }),
        status.INVALID_ARGUMENT,
        'must be empty',
      );
      await expectRefused(s({ step: 1, arenaGrads: [1] }), status.FAILED_PRECONDITION, 'different request');
      assert.ok(Buffer.from(m.param(0).buffer).equals(was[0]));
      assert.ok(Buffer.from(m.param(1).buffer).equals(was[1]));
      assert.equal((await s({ step: 2, arenaGrads: [1] })).replayed, false, 'the refused steps did not count');
    } finally {
      m.close();
    }
    const other = await create(h, request());
    await expectRefused(
      step(h, { sessionId: other.sessionId, step: 1, groupOverrides: {}, grads: [], arenaGrads: [0] }),
      status.FAILED_PRECONDITION,
      'OpenArena',
    );
    await expectRefused(openArena(h, 'nope'), status.UNAUTHENTICATED, 'token');
    await closeSession(h, other.sessionId);
    await closeSession(h, a.sessionId);
  });

  it('refusals a client acts on carry mur-reason (arena-gone, no-default-spec); others carry none', async () => {
    const a = await create(h, request());
    const refusal = (p: Promise<unknown>) =>
      p.then(
        () => assert.fail('the call succeeded'),
        (e: ServiceError) => e,
      );
    const gone = await refusal(step(h, { sessionId: a.sessionId, step: 1, groupOverrides: {}, grads: [], arenaGrads: [0] }));
    assert.equal(gone.code, status.FAILED_PRECONDITION);
    assert.match(gone.details, /has no arena/);
    assert.deepEqual(gone.metadata.get('mur-reason'), ['arena-gone']);
    const other = await refusal(step(h, { sessionId: a.sessionId, step: 0, groupOverrides: {}, grads: [] }));
    assert.notEqual(other.code, status.OK);
    assert.deepEqual(other.metadata.get('mur-reason'), []);
    await closeSession(h, a.sessionId);
    // No spec and no --config default: the client chooses one (mur-reason: no-default-spec).
    const { spec: _, ...noSpec } = request();
    const none = await refusal(create(h, noSpec));
    assert.equal(none.code, status.INVALID_ARGUMENT);
    assert.deepEqual(none.metadata.get('mur-reason'), ['no-default-spec']);
  });

  it('after CloseSession the arena can no longer be opened', async function () {
    if (!native) this.skip();
    const a = await create(h, request());
    const info = await openArena(h, a.sessionId);
    await closeSession(h, a.sessionId);
    // The fd is closed: the path is gone, or its number now names some other file.
    let reopened: Buffer | null = null;
    try {
      const fd = fs.openSync(info.path, 'r');
      reopened = Buffer.alloc(32);
      fs.readSync(fd, reopened, 0, 32, 0);
      fs.closeSync(fd);
    } catch (e) {
      assert.equal((e as NodeJS.ErrnoException).code, 'ENOENT');
    }
    if (reopened) assert.ok(!reopened.equals(Buffer.from(info.token)));
  });

  it("an overlapping client's OpenArena reserves the lane's staging within --max-bytes, or opens without it", async function () {
    if (!native) this.skip();
    const withOverlap = (hh: Harness, sessionId: string, overlap: boolean) =>
      call<OpenArenaRequest, ArenaInfo>(hh.client.openArena.bind(hh.client), { sessionId, overlap }, auth(sessionId));
    // What one session holds (its parameters and state) and its arena's gradients, on a server without a limit.
    const s = await create(h, request());
    const held0 = h.server.context.store.heldBytes;
    const plain = await withOverlap(h, s.sessionId, false);
    const grads = h.server.context.store.heldBytes - held0;
    assert.equal(grads, 4 * 9, "the arena's gradient regions");
    assert.equal(plain.staging, false, 'no staging without overlap');
    const staged = await withOverlap(h, s.sessionId, true);
    assert.equal(staged.staging, true, 'the same arena, staging added');
    assert.deepEqual(Buffer.from(staged.token), Buffer.from(plain.token));
    const stagingBytes = h.server.context.store.heldBytes - held0 - grads;
    assert.ok(stagingBytes >= 4 * 9 * 3, `staging: the parameters and Adam's two slots once more (${stagingBytes})`);
    await closeSession(h, s.sessionId);
    const session = stagingBytes; // staging is the session's projected bytes again
    for (const room of [true, false]) {
      const lim = await startHarness({
        limits: { maxSessions: 0, maxBytes: 2 * session + grads - (room ? 0 : 1), idleTimeoutMs: 0 },
      });
      try {
        const a = await create(lim, request());
        const info = await withOverlap(lim, a.sessionId, true);
        assert.equal(info.staging, room, room ? 'staging fits' : 'one byte short: the arena opens without staging');
        assert.equal(lim.server.context.store.heldBytes, session + grads + (room ? session : 0));
        const m = new Mapped(info);
        try {
          m.writeGrad(0, [0.1, -0.2, 0.3, 0.05, -1, 0.5]);
          m.writeGrad(1, [0.01, 0.02, -0.03]);
          await step(lim, { sessionId: a.sessionId, step: 1, grads: [], groupOverrides: {}, arenaGrads: [0, 1] });
          assert.ok(m.param(0)[0] !== 0.5, 'the arena steps either way');
        } finally {
          m.close();
        }
        await closeSession(lim, a.sessionId);
        assert.equal(lim.server.context.store.heldBytes, 0, 'staging is given back with the session');
      } finally {
        await lim.close();
      }
    }
  });
});
