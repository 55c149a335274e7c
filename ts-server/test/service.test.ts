// The service through a real grpc-js channel on port 0: capabilities, unary
// and streamed steps (with chunking, above the 4 MiB default message size),
// replay of a repeated step number, export/import, health and reflection.
import { strict as assert } from 'assert';
import { currentEngine } from '../src/engine/engine';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { DType, type StateFrame, type StepStreamRequest } from '../generated/mur/v1/optimizer';
import { OPTIMIZERS } from '../src/optimizers';
import { RULES } from '../src/rules';
import {
  auth,
  bytes,
  call,
  expectStatus,
  capabilities,
  closeSession,
  create,
  exportAll,
  floats,
  grads,
  importFrames,
  startHarness,
  step,
  stream,
  type Harness,
} from './harness';

const F32 = DType.DTYPE_FLOAT32;
const adamHybrid = { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, lr_out: 0.01, gamma: 0.5 }, groups: {} };

describe('service over gRPC', () => {
  let h: Harness;
  let memoryBefore: { buffers: number; bytes: number };
  before(async () => {
    memoryBefore = currentEngine().memory();
    h = await startHarness({ chunkBytes: 64 * 1024 });
  });
  after(async () => {
    await h.close();
    assert.deepEqual(currentEngine().memory(), memoryBefore, 'closing the server disposes every tensor and buffer');
  });

  it('GetCapabilities lists every optimizer and rule of the registry, the backend and the limits', async () => {
    const c = await capabilities(h);
    assert.deepEqual(
      c.optimizers.map((o) => o.name),
      OPTIMIZERS.map((o) => o.name),
    );
    assert.deepEqual(
      c.rules.map((r) => r.name),
      RULES.map((r) => r.name),
    );
    assert.equal(c.backend, currentEngine().name);
    assert.ok(c.availableBackends.includes(c.backend));
    assert.deepEqual(c.dtypes, [F32, DType.DTYPE_BFLOAT16, DType.DTYPE_FLOAT16]);
    assert.deepEqual(c.transports, currentEngine().createArena ? ['grpc', 'shm', 'tcp'] : ['grpc', 'tcp']);
    assert.ok(c.dataPort > 0, 'a server on TCP offers its data plane');
    assert.equal(c.chunkBytes, 64 * 1024);
    assert.equal(c.maxMessageBytes, 64 * 1024 * 1024);
    const adam = c.optimizers.find((o) => o.name === 'adam')!;
    assert.deepEqual(adam.hyperparameters.find((x) => x.name === 'betas')!.defaultValue, [0.9, 0.999]);
    assert.equal((JSON.parse(c.specSchemaJson) as { title: string }).title, 'mur optimizer spec');
  });

  it('unary Step updates the parameters, skips those without a gradient, and replays a repeated step', async () => {
    const s = await create(h, {
      spec: adamHybrid,
      params: [
        { id: 'w', name: 'layer.w', shape: [2, 2], dtype: F32, group: '', data: bytes([1, -2, 3, -4]) },
        { id: 'b', name: 'layer.b', shape: [2], dtype: F32, group: '', data: bytes([0.5, 0.5]) },
      ],
    });
    assert.equal(s.resolvedSpec?.optimizer, 'adam');
    const r1 = await step(h, {
      sessionId: s.sessionId,
      step: 1,
      grads: grads({ w: { shape: [2, 2], data: [0.1, 0.2, -0.3, 0.4] } }),
      groupOverrides: {},
    });
    assert.equal(r1.replayed, false);
    assert.deepEqual(
      r1.params.map((p) => p.paramId),
      ['w'],
    );
    const w1 = floats(r1.params[0].value!.data);
    // Adam's first direction is sign(g) (m/sqrt(v) with bc), times 1/bc1 on the rates.
    const expect = [1, -2, 3, -4].map((t, i) => {
      const g = [0.1, 0.2, -0.3, 0.4][i];
      const d = (0.1 * g) / ((Math.abs(g) * Math.sqrt(0.001)) / Math.sqrt(0.001) + 1e-8);
      return t - (((0.5 * 0.01) / 0.1) * Math.abs(t) * Math.tanh(d) + 0.5 * (0.01 / 0.1) * d);
    });
    w1.forEach((v, i) => assert.ok(Math.abs(v - expect[i]) < 1e-5, `w[${i}] = ${v}, expected ${expect[i]}`));
    // A retry (the same request under the same number) is answered, not applied.
    const again = await step(h, {
      sessionId: s.sessionId,
      step: 1,
      grads: grads({ w: { shape: [2, 2], data: [0.1, 0.2, -0.3, 0.4] } }),
      groupOverrides: {},
    });
    assert.equal(again.replayed, true);
    assert.deepEqual(floats(again.params[0].value!.data), w1, 'a replayed step returns the same values and applies nothing');
    // Another request under a used number is refused: its gradient would otherwise be dropped silently.
    await expectStatus(
      step(h, { sessionId: s.sessionId, step: 1, grads: grads({ w: { shape: [2, 2], data: [9, 9, 9, 9] } }), groupOverrides: {} }),
      grpc.status.FAILED_PRECONDITION,
      'step: 1 was already applied with a different request',
    );
    await expectStatus(
      step(h, {
        sessionId: s.sessionId,
        step: 1,
        grads: grads({ w: { shape: [2, 2], data: [0.1, 0.2, -0.3, 0.4] } }),
        groupOverrides: { '': { lr: 0.5 } },
      }),
      grpc.status.FAILED_PRECONDITION,
      'different request',
    );
    const state = await exportAll(h, s.sessionId);
    assert.deepEqual((state.header as { stepCounts: unknown }).stepCounts, [
      { paramId: 'w', steps: 1 },
      { paramId: 'b', steps: 0 },
    ]);
    await closeSession(h, s.sessionId);
  });

  it('StepStream: a 6 MiB model (above the 4 MiB default) in 64 KiB chunks, several steps on one stream', async () => {
    const n = 1_500_000;
    const init = new Float32Array(n).map((_, i) => Math.sin(i));
    const s = await create(h, {
      spec: { optimizer: 'sgd', rule: 'multiplicative', defaults: { lr: 0.1, lr_out: 0.1, momentum: 0.9 }, groups: {} },
      params: [{ id: 'big', name: 'big', shape: [1500, 1000], dtype: F32, group: '', data: Buffer.alloc(0) }],
    });
    // Initial values too large for one message go through ImportState chunks.
    const frames: StateFrame[] = [{ frame: { $case: 'header', value: { sessionId: s.sessionId, stepCounts: [], lastStep: 0 } } }];
    for (let off = 0; off < n; off += 100_000) {
      frames.push({
        frame: {
          $case: 'chunk',
          value: { paramId: 'big', slot: '', offset: off, totalElements: n, dtype: F32, data: bytes(init.subarray(off, off + 100_000)) },
        },
      });
    }
    assert.equal((await importFrames(h, frames)).tensorsImported, 1);
    const g = new Float32Array(n).fill(0.5);
    const stepFrames = (k: number): StepStreamRequest[] => {
      const out: StepStreamRequest[] = [{ frame: { $case: 'begin', value: { sessionId: s.sessionId, step: k, groupOverrides: {} } } }];
      for (let off = 0; off < n; off += 300_000) {
        out.push({
          frame: {
            $case: 'grad',
            value: { paramId: 'big', slot: '', offset: off, totalElements: n, dtype: F32, data: bytes(g.subarray(off, off + 300_000)) },
          },
        });
      }
      out.push({ frame: { $case: 'end', value: {} } });
      return out;
    };
    const { replies, error } = await stream(h, [...stepFrames(1), ...stepFrames(2)]);
    assert.equal(error, undefined);
    const done = replies.filter((r) => r.frame?.$case === 'done').map((r) => r.frame!.value);
    assert.deepEqual(done, [
      { step: 1, replayed: false, evaluate: false, round: 0, restart: '' },
      { step: 2, replayed: false, evaluate: false, round: 0, restart: '' },
    ]);
    const chunks = replies.filter((r) => r.frame?.$case === 'param');
    assert.equal(chunks.length, 2 * Math.ceil((n * 4) / (64 * 1024)), 'every reply chunk is at most chunk_bytes');
    // Reassemble step 2's values and check them against the rule by hand.
    const out = new Float32Array(n);
    for (const r of chunks.slice(chunks.length / 2)) {
      const c = r.frame!.value as { offset: number; data: Buffer };
      out.set(floats(c.data), c.offset);
    }
    for (const i of [0, 1, 777_777, n - 1]) {
      // SGD momentum: d1 = 0.5, d2 = 0.9*0.5+0.5 = 0.95; multiplicative: theta *= 1 - 0.1 tanh(d) for theta > 0.
      let t = init[i];
      for (const d of [0.5, 0.95]) t = t - 0.1 * Math.abs(t) * Math.tanh(d);
      assert.ok(Math.abs(out[i] - t) < 1e-6, `element ${i}: ${out[i]} vs ${t}`);
    }
    await closeSession(h, s.sessionId);
  });

  it('per-group hyperparameters and step overrides (a learning-rate schedule) persist from that step on', async () => {
    const s = await create(h, {
      spec: { optimizer: 'sgd', rule: 'additive', defaults: { lr: 0.1 }, groups: { head: { lr: 1 } } },
      params: [
        { id: 'a', name: 'a', shape: [1], dtype: F32, group: '', data: bytes([1]) },
        { id: 'b', name: 'b', shape: [1], dtype: F32, group: 'head', data: bytes([1]) },
      ],
    });
    const g = grads({ a: { shape: [1], data: [1] }, b: { shape: [1], data: [1] } });
    const r1 = await step(h, { sessionId: s.sessionId, step: 1, grads: g, groupOverrides: {} });
    assert.deepEqual(
      r1.params.map((p) => floats(p.value!.data)[0]),
      [Math.fround(0.9), 0],
    );
    const r2 = await step(h, { sessionId: s.sessionId, step: 2, grads: g, groupOverrides: { '': { lr: 0.5 } } });
    const r3 = await step(h, { sessionId: s.sessionId, step: 3, grads: g, groupOverrides: {} });
    assert.ok(Math.abs(floats(r2.params[0].value!.data)[0] - 0.4) < 1e-6);
    assert.ok(Math.abs(floats(r3.params[0].value!.data)[0] + 0.1) < 1e-6, 'the override persisted');
    await closeSession(h, s.sessionId);
  });

  it('ExportState then ImportState into a new session resumes the same trajectory bit for bit', async () => {
    const spec = { optimizer: 'rmsprop', rule: 'exp_sign', defaults: { centered: true, momentum: 0.5, lr: 0.01 }, groups: {} };
    const params = [{ id: 'w', name: 'w', shape: [3], dtype: F32, group: '', data: bytes([0.3, -0.7, 1.1]) }];
    const g = (k: number) => grads({ w: { shape: [3], data: [0.1 * k, -0.2, 0.3] } });
    const a = await create(h, { spec, params });
    for (let k = 1; k <= 3; k++) await step(h, { sessionId: a.sessionId, step: k, grads: g(k), groupOverrides: {} });
    const frames: StateFrame[] = [];
    await new Promise<void>((resolve, reject) => {
      const s = h.client.exportState({ sessionId: a.sessionId }, auth(a.sessionId));
      s.on('data', (f: StateFrame) => frames.push(f));
      s.on('error', reject);
      s.on('end', resolve);
    });
    const b = await create(h, { spec, params });
    const header = frames[0].frame!.value as { sessionId: string };
    header.sessionId = b.sessionId;
    await importFrames(h, frames);
    const ra = await step(h, { sessionId: a.sessionId, step: 4, grads: g(4), groupOverrides: {} });
    const rb = await step(h, { sessionId: b.sessionId, step: 4, grads: g(4), groupOverrides: {} });
    assert.deepEqual(rb.params[0].value!.data, ra.params[0].value!.data);
    const ea = await exportAll(h, a.sessionId);
    const eb = await exportAll(h, b.sessionId);
    assert.deepEqual(eb.tensors, ea.tensors);
    for (const id of [a.sessionId, b.sessionId]) await closeSession(h, id);
  });

  // The health and reflection clients are built at run time from their .proto files
  // (grpc.loadPackageDefinition): untyped by nature, so `any` is their honest type here.
  /* eslint-disable @typescript-eslint/no-explicit-any, @typescript-eslint/no-unsafe-assignment, @typescript-eslint/no-unsafe-call, @typescript-eslint/no-unsafe-member-access, @typescript-eslint/no-unsafe-return, @typescript-eslint/no-unsafe-argument */
  it('grpc.health.v1 reports SERVING', async () => {
    const def = protoLoader.loadSync(path.join(require.resolve('grpc-health-check/package.json'), '../proto/health/v1/health.proto'), {
      enums: String,
    });
    const Health = (grpc.loadPackageDefinition(def) as any).grpc.health.v1.Health;
    const c = new Health(h.address, grpc.credentials.createInsecure());
    const r = await call<any, any>(c.check.bind(c), { service: 'mur.v1.Optimizer' });
    c.close();
    assert.equal(r.status, 'SERVING');
  });

  it('server reflection serves every service and every file with its imports (so grpcurl describe works)', async () => {
    const dir = path.join(require.resolve('@grpc/reflection/package.json'), '../build/proto');
    const def = protoLoader.loadSync('grpc/reflection/v1alpha/reflection.proto', { includeDirs: [dir] });
    const R = (grpc.loadPackageDefinition(def) as any).grpc.reflection.v1alpha.ServerReflection;
    const c = new R(h.address, grpc.credentials.createInsecure());
    const ask = (req: object) =>
      new Promise<any>((resolve, reject) => {
        const s = c.serverReflectionInfo();
        s.on('data', (r: unknown) => {
          resolve(r);
          s.end();
        });
        s.on('error', reject);
        s.write(req);
      });
    // A FileDescriptorProto starts with field 1 (name): tag 0x0a, a length byte, the name.
    const fileNames = (r: any): string[] =>
      (r.fileDescriptorResponse?.fileDescriptorProto ?? []).map((b: Buffer) => b.subarray(2, 2 + b[1]).toString('utf8'));
    try {
      const list = await ask({ listServices: '' });
      const services = list.listServicesResponse.service.map((x: { name: string }) => x.name).sort();
      assert.deepEqual(services, ['grpc.health.v1.Health', 'mur.v1.Optimizer']);
      const opt = fileNames(await ask({ fileContainingSymbol: 'mur.v1.Optimizer' }));
      assert.ok(opt.includes('mur/v1/optimizer.proto'), opt.join());
      assert.ok(opt.includes('google/protobuf/struct.proto'), `the import travels with it: ${opt.join()}`);
      assert.deepEqual(fileNames(await ask({ fileByFilename: 'google/protobuf/struct.proto' })), ['google/protobuf/struct.proto']);
      assert.ok(fileNames(await ask({ fileContainingSymbol: 'mur.v1.StepRequest' })).includes('mur/v1/optimizer.proto'));
      assert.ok(fileNames(await ask({ fileContainingSymbol: 'grpc.health.v1.Health' })).includes('health/v1/health.proto'));
    } finally {
      c.close();
    }
  });
  /* eslint-enable @typescript-eslint/no-explicit-any, @typescript-eslint/no-unsafe-assignment, @typescript-eslint/no-unsafe-call, @typescript-eslint/no-unsafe-member-access, @typescript-eslint/no-unsafe-return, @typescript-eslint/no-unsafe-argument */
});
