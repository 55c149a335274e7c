// The tcp data plane (src/transport/dataPlane.ts) through real sockets on
// port 0: a step equals the same step sent with gRPC's Step, bit for bit;
// replays and refusals keep Step's semantics; a header that cannot be used is
// answered with its status, before any gradient byte is read, and leaves the
// session as it was.
import { strict as assert } from 'assert';
import * as net from 'net';
import { status } from '@grpc/grpc-js';
import { DataStepHeader, DataStepReplyHeader, DType, type StepRequest } from '../generated/mur/v1/optimizer';
import { currentEngine } from '../src/engine/engine';
import { bytes, capabilities, closeSession, create, exportAll, floats, grads, startHarness, step, tokenFor, type Harness } from './harness';

const F32 = DType.DTYPE_FLOAT32;
const BF16 = DType.DTYPE_BFLOAT16;
const spec = { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, lr_out: 0.01, gamma: 0.5 }, groups: {} };

interface Reply {
  header: DataStepReplyHeader;
  values: Map<string, Float32Array>;
}

/** A minimal client of the framing in the proto (DataStepHeader), for one connection. */
class Conn {
  private chunks: Buffer[] = [];
  private ended = false;
  private waiting?: () => void;
  readonly socket: net.Socket;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (c) => {
      this.chunks.push(c);
      this.waiting?.();
    });
    socket.on('end', () => {
      this.ended = true;
      this.waiting?.();
    });
    socket.on('error', () => undefined);
  }

  static open(port: number): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new Conn(s)));
      s.once('error', reject);
    });
  }

  private async read(n: number): Promise<Buffer | undefined> {
    for (;;) {
      const all = Buffer.concat(this.chunks);
      if (all.length >= n) {
        this.chunks = [all.subarray(n)];
        return all.subarray(0, n);
      }
      if (this.ended) return undefined;
      await new Promise<void>((r) => (this.waiting = r));
    }
  }

  send(frame: Buffer[]): void {
    for (const b of frame) this.socket.write(b);
  }

  async reply(): Promise<Reply> {
    const len = await this.read(4);
    if (!len) throw new Error('closed');
    const head = await this.read(len.readUInt32LE(0));
    if (!head) throw new Error('closed');
    const header = DataStepReplyHeader.decode(head);
    const values = new Map<string, Float32Array>();
    for (const p of header.reply?.params ?? []) {
      const size = p.value!.shape.reduce((a, d) => a * d, 1) * 4;
      values.set(p.paramId, floats((await this.read(size))!));
    }
    return { header, values };
  }

  /** Resolves when the server has closed the connection (nothing more to read). */
  async closedByServer(): Promise<boolean> {
    return (await this.read(1)) === undefined;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** One request frame: the header, then each gradient's bytes. */
function frame(token: string, req: StepRequest, payload: Buffer[], headerOverride?: Buffer): Buffer[] {
  const stripped = { ...req, grads: req.grads.map((g) => ({ ...g, grad: { ...g.grad!, data: Buffer.alloc(0) } })) };
  const h = headerOverride ?? Buffer.from(DataStepHeader.encode({ sessionToken: token, request: stripped }).finish());
  const n = Buffer.alloc(4);
  n.writeUInt32LE(h.length, 0);
  return [n, h, ...payload];
}

const bf16 = (a: number[]) => {
  const f = new Float32Array(a);
  const u = new Uint32Array(f.buffer);
  const out = Buffer.alloc(2 * a.length);
  u.forEach((x, i) => out.writeUInt16LE(x >>> 16, 2 * i));
  return out;
};

describe('tcp data plane', () => {
  let h: Harness;
  let port: number;
  let memoryBefore: { buffers: number; bytes: number };
  before(async () => {
    memoryBefore = currentEngine().memory();
    h = await startHarness();
    port = (await capabilities(h)).dataPort;
  });
  after(async () => {
    await h.close();
    assert.deepEqual(currentEngine().memory(), memoryBefore, 'closing the server disposes every tensor and buffer');
  });

  const params = () => [
    { id: 'w', name: 'w', shape: [2, 3], dtype: F32, group: '', data: bytes([1, -2, 3, -4, 5, -6]) },
    { id: 'b', name: 'b', shape: [3], dtype: F32, group: '', data: bytes([0.5, 0.25, -0.5]) },
  ];
  const g1 = { w: { shape: [2, 3], data: [0.1, 0.2, -0.3, 0.4, -0.5, 0.6] }, b: { shape: [3], data: [1, -1, 0.5] } };
  const g2 = { w: { shape: [2, 3], data: [-0.2, 0.1, 0.3, 0.3, 0.5, -0.6] }, b: { shape: [3], data: [0.1, 0.2, 0.3] } };

  it('steps exactly as gRPC Step, replays a repeated step and refuses another request under a used number', async () => {
    const viaGrpc = await create(h, { spec, params: params() });
    const viaTcp = await create(h, { spec, params: params() });
    const c = await Conn.open(port);
    try {
      for (const [i, g] of [g1, g2].entries()) {
        const req = { sessionId: viaTcp.sessionId, step: i + 1, grads: grads(g), groupOverrides: {}, arenaGrads: [], validateOnly: false };
        c.send(
          frame(
            tokenFor(viaTcp.sessionId)!,
            req,
            req.grads.map((x) => x.grad.data),
          ),
        );
        const r = await c.reply();
        assert.equal(r.header.code, 0, r.header.message);
        assert.equal(r.header.reply!.replayed, false);
        const ref = await step(h, { sessionId: viaGrpc.sessionId, step: i + 1, grads: grads(g), groupOverrides: {} });
        for (const p of ref.params) assert.deepEqual(r.values.get(p.paramId), floats(p.value!.data), `step ${i + 1} ${p.paramId}`);
      }
      const again = { sessionId: viaTcp.sessionId, step: 2, grads: grads(g2), groupOverrides: {}, arenaGrads: [], validateOnly: false };
      c.send(
        frame(
          tokenFor(viaTcp.sessionId)!,
          again,
          again.grads.map((x) => x.grad.data),
        ),
      );
      const replay = await c.reply();
      assert.equal(replay.header.reply!.replayed, true);
      const other = { ...again, grads: grads(g1) };
      c.send(
        frame(
          tokenFor(viaTcp.sessionId)!,
          other,
          other.grads.map((x) => x.grad.data),
        ),
      );
      const refused = await c.reply();
      assert.equal(refused.header.code, status.FAILED_PRECONDITION);
      assert.match(refused.header.message, /different request/);
      // The connection stays usable after a refused step.
      const next = { ...again, step: 3, grads: grads(g1) };
      c.send(
        frame(
          tokenFor(viaTcp.sessionId)!,
          next,
          next.grads.map((x) => x.grad.data),
        ),
      );
      assert.equal((await c.reply()).header.code, 0);
      await step(h, { sessionId: viaGrpc.sessionId, step: 3, grads: grads(g1), groupOverrides: {} });
      assert.deepEqual((await exportAll(h, viaTcp.sessionId)).tensors, (await exportAll(h, viaGrpc.sessionId)).tensors, 'same state');
    } finally {
      c.close();
      await closeSession(h, viaGrpc.sessionId);
      await closeSession(h, viaTcp.sessionId);
    }
  });

  it('takes bfloat16 gradients as Step does', async () => {
    const a = await create(h, { spec, params: params() });
    const b = await create(h, { spec, params: params() });
    const c = await Conn.open(port);
    try {
      const data = { w: bf16(g1.w.data), b: bf16(g1.b.data) };
      const req: StepRequest = {
        sessionId: a.sessionId,
        step: 1,
        groupOverrides: {},
        arenaGrads: [],
        validateOnly: false,
        grads: [
          { paramId: 'w', grad: { shape: [2, 3], dtype: BF16, data: data.w } },
          { paramId: 'b', grad: { shape: [3], dtype: BF16, data: data.b } },
        ],
      };
      c.send(frame(tokenFor(a.sessionId)!, req, [data.w, data.b]));
      const r = await c.reply();
      assert.equal(r.header.code, 0, r.header.message);
      const ref = await step(h, { ...req, sessionId: b.sessionId });
      for (const p of ref.params) assert.deepEqual(r.values.get(p.paramId), floats(p.value!.data));
    } finally {
      c.close();
      await closeSession(h, a.sessionId);
      await closeSession(h, b.sessionId);
    }
  });

  it('takes float16 gradients: the step equals a float32 step on the same values', async () => {
    const a = await create(h, { spec, params: params() });
    const b = await create(h, { spec, params: params() });
    const c = await Conn.open(port);
    try {
      // Values exact in float16, so the float32 step sees the very same gradient.
      const w = [0.5, -0.25, 1.5, 2, -0.125, 3];
      const f16 = Buffer.from(Uint16Array.from([0x3800, 0xb400, 0x3e00, 0x4000, 0xb000, 0x4200]).buffer);
      const req: StepRequest = {
        sessionId: a.sessionId,
        step: 1,
        groupOverrides: {},
        arenaGrads: [],
        validateOnly: false,
        grads: [{ paramId: 'w', grad: { shape: [2, 3], dtype: DType.DTYPE_FLOAT16, data: f16 } }],
      };
      c.send(frame(tokenFor(a.sessionId)!, req, [f16]));
      const r = await c.reply();
      assert.equal(r.header.code, 0, r.header.message);
      const ref = await step(h, { sessionId: b.sessionId, step: 1, grads: grads({ w: { shape: [2, 3], data: w } }), groupOverrides: {} });
      assert.deepEqual(r.values.get('w'), floats(ref.params[0].value!.data));
      // And gRPC's Step takes them too, with the same result.
      const viaGrpc = await create(h, { spec, params: params() });
      const g = await step(h, { ...req, sessionId: viaGrpc.sessionId });
      assert.deepEqual(floats(g.params[0].value!.data), r.values.get('w'));
      await closeSession(h, viaGrpc.sessionId);
    } finally {
      c.close();
      await closeSession(h, a.sessionId);
      await closeSession(h, b.sessionId);
    }
  });

  it('refuses bad input with Step statuses, reads no gradient byte after a bad header, and changes nothing', async () => {
    const s = await create(h, { spec, params: params() });
    const other = await create(h, { spec, params: params() });
    const token = tokenFor(s.sessionId)!;
    const before = await exportAll(h, s.sessionId);
    const base = { sessionId: s.sessionId, step: 1, grads: grads(g1), groupOverrides: {}, arenaGrads: [], validateOnly: false };
    const payload = base.grads.map((x) => x.grad.data);
    const cases: Array<{ what: string; frame: Buffer[]; code: status; words: RegExp; closes: boolean }> = [
      { what: 'no token', frame: frame('', base, payload), code: status.UNAUTHENTICATED, words: /token/i, closes: true },
      {
        what: 'a wrong token',
        frame: frame(
          token.replace(/.$/, (x) => (x === 'a' ? 'b' : 'a')),
          base,
          payload,
        ),
        code: status.PERMISSION_DENIED,
        words: /token/i,
        closes: true,
      },
      {
        what: 'an unknown session',
        frame: frame(token, { ...base, sessionId: 'nope' }, payload),
        code: status.PERMISSION_DENIED,
        words: /./,
        closes: true,
      },
      {
        what: 'a malformed header',
        frame: frame(token, base, payload, Buffer.from([0xff, 0xff, 0xff])),
        code: status.INVALID_ARGUMENT,
        words: /malformed/,
        closes: true,
      },
      {
        what: 'an unknown parameter',
        frame: frame(token, { ...base, grads: grads({ nope: { shape: [3], data: [1, 2, 3] } }) }, payload),
        code: status.INVALID_ARGUMENT,
        words: /nope/,
        closes: true,
      },
      {
        what: 'a wrong shape',
        frame: frame(token, { ...base, grads: grads({ b: { shape: [4], data: [1, 2, 3, 4] } }) }, payload),
        code: status.INVALID_ARGUMENT,
        words: /shape/,
        closes: true,
      },
      {
        what: 'a parameter twice',
        frame: frame(token, { ...base, grads: [...grads({ b: g1.b }), ...grads({ b: g1.b })] }, payload),
        code: status.INVALID_ARGUMENT,
        words: /twice/,
        closes: true,
      },
      {
        what: 'arena_grads',
        frame: frame(token, { ...base, arenaGrads: [0] }, payload),
        code: status.INVALID_ARGUMENT,
        words: /arena_grads/,
        closes: true,
      },
      {
        what: 'a header over the message limit',
        frame: [Buffer.from([0xff, 0xff, 0xff, 0x7f])],
        code: status.RESOURCE_EXHAUSTED,
        words: /limit/,
        closes: true,
      },
      {
        what: 'a non-finite gradient',
        frame: frame(token, { ...base, grads: grads({ w: g1.w, b: { shape: [3], data: [1, NaN, 0] } }) }, [
          bytes(g1.w.data),
          bytes([1, NaN, 0]),
        ]),
        code: status.INVALID_ARGUMENT,
        words: /finite|NaN/i,
        closes: false,
      },
    ];
    for (const k of cases) {
      const c = await Conn.open(port);
      try {
        c.send(k.frame);
        const r = await c.reply();
        assert.equal(r.header.code, k.code, `${k.what}: ${status[r.header.code]} ${r.header.message}`);
        assert.match(r.header.message, k.words, k.what);
        assert.ok(!/\n\s+at /.test(r.header.message), `${k.what}: no stack trace`);
        if (k.closes) {
          assert.ok(await c.closedByServer(), `${k.what}: the connection is closed`);
        } else {
          // Still usable: a good step of another session goes through on it.
          const ok = { ...base, sessionId: other.sessionId };
          c.send(frame(tokenFor(other.sessionId)!, ok, payload));
          assert.equal((await c.reply()).header.code, 0, `${k.what}: the connection stays usable`);
        }
      } finally {
        c.close();
      }
    }
    assert.deepEqual(await exportAll(h, s.sessionId), before, 'every refusal left the session as it was');
    await closeSession(h, s.sessionId);
    await closeSession(h, other.sessionId);
  });

  it('survives random bytes: each connection gets a status or is closed, and the server steps on', async () => {
    const s = await create(h, { spec, params: params() });
    const valid = frame(
      tokenFor(s.sessionId)!,
      { sessionId: s.sessionId, step: 1, grads: grads(g1), groupOverrides: {}, arenaGrads: [], validateOnly: false },
      [bytes(g1.w.data), bytes(g1.b.data)],
    );
    const whole = Buffer.concat(valid);
    let seed = 12345;
    const next = () => (seed = (1103515245 * seed + 12345) % 2 ** 31) / 2 ** 31;
    const codes = new Map<string, number>();
    for (let k = 0; k < 60; k++) {
      // A valid request with bytes flipped, cut short, or followed by junk.
      const b = Buffer.from(whole);
      for (let f = 0; f < 1 + Math.floor(next() * 4); f++) b[Math.floor(next() * b.length)] = Math.floor(next() * 256);
      const sent = next() < 0.3 ? b.subarray(0, Math.floor(next() * b.length)) : b;
      const c = await Conn.open(port);
      try {
        c.send([sent]);
        c.socket.end(); // nothing more: a cut request must not keep the server waiting for ever
        const n = await new Promise<string>((resolve) => {
          c.reply().then(
            (r) => resolve(status[r.header.code]),
            () => resolve('closed'),
          );
        });
        codes.set(n, (codes.get(n) ?? 0) + 1);
        assert.ok(
          [
            'OK',
            'INVALID_ARGUMENT',
            'RESOURCE_EXHAUSTED',
            'PERMISSION_DENIED',
            'UNAUTHENTICATED',
            'FAILED_PRECONDITION',
            'closed',
          ].includes(n),
          n,
        );
      } finally {
        c.close();
      }
    }
    // The server is still up and the session still steps.
    const c = await Conn.open(port);
    try {
      const req = { sessionId: s.sessionId, step: 1000, grads: grads(g2), groupOverrides: {}, arenaGrads: [], validateOnly: false };
      c.send(
        frame(
          tokenFor(s.sessionId)!,
          req,
          req.grads.map((x) => x.grad.data),
        ),
      );
      assert.equal((await c.reply()).header.code, 0);
    } finally {
      c.close();
      await closeSession(h, s.sessionId);
    }
  });

  it('closes open data connections when the server closes', async () => {
    const h2 = await startHarness();
    const c = await Conn.open((await capabilities(h2)).dataPort);
    const ended = new Promise<void>((r) => c.socket.once('close', () => r()));
    await h2.close();
    await ended;
  });

  it('a data port already taken fails the start with a clear error and leaves nothing behind', async () => {
    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
    const busy = (taken.address() as net.AddressInfo).port;
    const memory = currentEngine().memory();
    try {
      await assert.rejects(startHarness({ dataPort: busy }), /data port: cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
      assert.deepEqual(currentEngine().memory(), memory);
    } finally {
      await new Promise<void>((r) => taken.close(() => r()));
    }
  });

  it('is off with dataPort: null', async () => {
    const off = await startHarness({ dataPort: null });
    try {
      const caps = await capabilities(off);
      assert.equal(caps.dataPort, 0);
      assert.ok(!caps.transports.includes('tcp'));
    } finally {
      await off.close();
    }
  });
});
