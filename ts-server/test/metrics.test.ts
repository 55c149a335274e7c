// Prometheus metrics (--metrics-port): scraped over HTTP before and after a
// known sequence of calls, every counter must have moved by exactly what
// those calls did: steps by transport and result, latency observations,
// gradient and parameter bytes, errors by RPC and code; gauges show the open
// sessions and held bytes; prom-client's process metrics are there. The shm
// steps write gradients into the arena with pwrite, as arena.test.ts does
// (native engine only).
import { strict as assert } from 'assert';
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import * as readline from 'readline';
import { status } from '@grpc/grpc-js';
import {
  DType,
  type ArenaInfo,
  type CreateSessionRequest,
  type OpenArenaRequest,
  type StepStreamRequest,
} from '../generated/mur/v1/optimizer';
import { currentEngine } from '../src/engine/engine';
import { auth, bytes, call, closeSession, create, expectStatus, startHarness, step, stream, type Harness } from './harness';

const F32 = DType.DTYPE_FLOAT32;
const BF16 = DType.DTYPE_BFLOAT16;
const CLI = path.join(__dirname, '../src/cli.js');

function get(port: number, urlPath: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: urlPath }, (res) => {
        let body = '';
        res.on('data', (b) => (body += b));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
      })
      .on('error', reject);
  });
}

/** Every sample of the exposition, keyed `name{a="x",b="y"}` with labels sorted. */
async function scrape(port: number): Promise<Map<string, number>> {
  const r = await get(port, '/metrics');
  assert.equal(r.status, 200);
  assert.match(r.type, /^text\/plain; version=0\.0\.4/);
  const out = new Map<string, number>();
  for (const line of r.body.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const labels = m[2] ? [...m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => `${l[1]}="${l[2]}"`).sort() : [];
    out.set(labels.length ? `${m[1]}{${labels.join(',')}}` : m[1], Number(m[3]));
  }
  return out;
}

/** after - before of every sample that moved (counters and histograms). */
function moved(before: Map<string, number>, after: Map<string, number>, prefix = 'mur_'): Record<string, number> {
  const d: Record<string, number> = {};
  for (const [k, v] of after) {
    if (!k.startsWith(prefix) || k.includes('_bucket')) continue;
    const delta = v - (before.get(k) ?? 0);
    if (delta !== 0) d[k] = delta;
  }
  return d;
}

const request = (): CreateSessionRequest => ({
  spec: { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01 }, groups: {} },
  params: [
    { id: 'w', name: 'w', shape: [2, 3], dtype: F32, group: '', data: bytes([0.5, -1, 2, 0.25, -0.75, 1.5]) },
    { id: 'b', name: 'b', shape: [3], dtype: F32, group: '', data: bytes([0.1, 0, -0.2]) },
  ],
});
const gw = (k: number) => ({ paramId: 'w', grad: { shape: [2, 3], dtype: F32, data: bytes([0.1 * k, -0.2, 0.3, 0.05, -k, 0.5]) } });
const gb = (k: number) => ({ paramId: 'b', grad: { shape: [3], dtype: F32, data: bytes([1, -1, 0.5 * k]) } });
/** bfloat16: the upper halves of float32 values. */
const bf16 = (a: number[]) => {
  const f = Float32Array.from(a);
  const u = new Uint16Array(new Uint32Array(f.buffer).map((x) => x >>> 16));
  return Buffer.from(u.buffer);
};

describe('metrics (--metrics-port)', () => {
  let h: Harness;
  let port: number;
  before(async () => {
    h = await startHarness({ metrics: { port: 0 } });
    port = h.server.metricsPort!;
  });
  after(async () => h.close());

  it('serves the text exposition at /metrics with process metrics, zeros from the start, 404 elsewhere', async () => {
    const m = await scrape(port);
    assert.ok(m.get('process_resident_memory_bytes')! > 0, 'process memory (prom-client default metrics)');
    assert.ok(m.has('nodejs_heap_size_used_bytes'));
    for (const t of ['grpc', 'shm']) {
      for (const r of ['ok', 'replayed', 'refused']) assert.ok(m.has(`mur_steps_total{result="${r}",transport="${t}"}`), `${t}/${r}`);
      assert.ok(m.has(`mur_gradient_bytes_total{transport="${t}"}`));
    }
    assert.equal(m.get('mur_sessions_open'), 0);
    assert.equal((await get(port, '/nothing')).status, 404);
  });

  it('counts gRPC steps (unary and streamed), replays, refusals, bytes and errors exactly', async () => {
    const before = await scrape(port);
    const a = await create(h, request());
    const sid = a.sessionId;
    const one = (k: number, grads = [gw(k), gb(k)]) => step(h, { sessionId: sid, step: k, grads, groupOverrides: {} });
    for (let k = 1; k <= 3; k++) await one(k); // 3 ok: 36 gradient bytes, 36 parameter bytes each
    assert.equal((await one(3)).replayed, true); // 1 replayed: 36 + 36 bytes
    await expectStatus(one(2), status.FAILED_PRECONDITION); // refused: step number going back
    await expectStatus(one(4, [{ ...gw(4), grad: { ...gw(4).grad, shape: [6] } }]), status.INVALID_ARGUMENT); // refused: shape
    await one(4, [gb(4)]); // ok: 12 + 12 bytes
    await expectStatus(step(h, { sessionId: 'not-a-session', step: 1, grads: [], groupOverrides: {} }), status.UNAUTHENTICATED); // refused: no token
    // bfloat16 gradients: 2 bytes per element in, float32 out.
    await step(h, {
      sessionId: sid,
      step: 5,
      grads: [{ paramId: 'b', grad: { shape: [3], dtype: BF16, data: bf16([1, 2, 3]) } }],
      groupOverrides: {},
    });
    // Two steps over one stream (both tensors each), then a stream cut inside its step.
    const frames = (k: number): StepStreamRequest[] => [
      { frame: { $case: 'begin', value: { sessionId: sid, step: k, groupOverrides: {} } } },
      { frame: { $case: 'grad', value: { paramId: 'w', slot: '', offset: 0, totalElements: 6, dtype: F32, data: gw(k).grad.data } } },
      { frame: { $case: 'grad', value: { paramId: 'b', slot: '', offset: 0, totalElements: 3, dtype: F32, data: gb(k).grad.data } } },
      { frame: { $case: 'end', value: {} } },
    ];
    const s = await stream(h, [...frames(6), ...frames(7)]);
    assert.equal(s.error, undefined);
    const cut = await stream(h, frames(8).slice(0, 2)); // no StepEnd: ABORTED, a refused step
    assert.equal(cut.error?.code, status.ABORTED);
    const after = await scrape(port);
    const d = moved(before, after);
    assert.ok(d['mur_step_duration_seconds_sum{transport="grpc"}'] > 0);
    delete d['mur_step_duration_seconds_sum{transport="grpc"}'];
    assert.deepEqual(d, {
      'mur_steps_total{result="ok",transport="grpc"}': 3 + 1 + 1 + 2,
      'mur_steps_total{result="replayed",transport="grpc"}': 1,
      'mur_steps_total{result="refused",transport="grpc"}': 3 + 1,
      'mur_step_duration_seconds_count{transport="grpc"}': 3 + 1 + 1 + 1 + 2,
      'mur_gradient_bytes_total{transport="grpc"}': 4 * 36 + 12 + 6 + 2 * 36,
      'mur_parameter_bytes_total{transport="grpc"}': 4 * 36 + 12 + 12 + 2 * 36,
      'mur_errors_total{code="FAILED_PRECONDITION",rpc="Step"}': 1,
      'mur_errors_total{code="INVALID_ARGUMENT",rpc="Step"}': 1,
      'mur_errors_total{code="UNAUTHENTICATED",rpc="Step"}': 1,
      'mur_errors_total{code="ABORTED",rpc="StepStream"}': 1,
      mur_sessions_open: 1,
      mur_held_bytes: h.server.context.store.heldBytes,
    });
    assert.equal(after.get('mur_held_bytes'), 3 * 4 * 9, 'adam: parameters, exp_avg and exp_avg_sq of 9 elements (hybrid keeps no slots)');
    await closeSession(h, sid);
    const closed = await scrape(port);
    assert.equal(closed.get('mur_sessions_open'), 0);
    assert.equal(closed.get('mur_held_bytes'), 0);
  });

  it('counts shm steps: bytes read from and written to the arena, replays touching none', async function () {
    if (!currentEngine().createArena) this.skip(); // the tfjs engines have no arena
    const a = await create(h, request());
    const info = await call<OpenArenaRequest, ArenaInfo>(
      h.client.openArena.bind(h.client),
      { sessionId: a.sessionId, overlap: false },
      auth(a.sessionId),
    );
    const fd = fs.openSync(info.path, 'r+');
    const writeGrad = (i: number, v: number[]) => fs.writeSync(fd, bytes(v), 0, 4 * v.length, info.tensors[i].gradOffset);
    const before = await scrape(port);
    const s = (k: number, arenaGrads: number[]) => step(h, { sessionId: a.sessionId, step: k, grads: [], groupOverrides: {}, arenaGrads });
    try {
      writeGrad(0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
      writeGrad(1, [1, 2, 3]);
      await s(1, [0, 1]); // ok: 36 bytes read, 36 written
      await s(2, [1]); // ok: 12 and 12
      assert.equal((await s(2, [1])).replayed, true); // replayed: nothing touched
      writeGrad(1, [1, NaN, 3]);
      await expectStatus(s(3, [1]), status.INVALID_ARGUMENT, 'element 1'); // refused
    } finally {
      fs.closeSync(fd);
    }
    const after = await scrape(port);
    const d = moved(before, after);
    assert.ok(d['mur_step_duration_seconds_sum{transport="shm"}'] > 0);
    delete d['mur_step_duration_seconds_sum{transport="shm"}'];
    assert.deepEqual(d, {
      'mur_steps_total{result="ok",transport="shm"}': 2,
      'mur_steps_total{result="replayed",transport="shm"}': 1,
      'mur_steps_total{result="refused",transport="shm"}': 1,
      'mur_step_duration_seconds_count{transport="shm"}': 3,
      'mur_gradient_bytes_total{transport="shm"}': 48,
      'mur_parameter_bytes_total{transport="shm"}': 48,
      'mur_errors_total{code="INVALID_ARGUMENT",rpc="Step"}': 1,
    });
    await closeSession(h, a.sessionId);
  });

  it('the CLI prints metrics_port and serves it; --metrics-host without --metrics-port is refused', async function () {
    this.timeout(30_000);
    const env = { ...process.env, MUR_LOG: 'silent' };
    const bad = spawnSync(process.execPath, [CLI, '--metrics-host', '127.0.0.1'], { encoding: 'utf8', env });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--metrics-host: needs --metrics-port/);
    const child = spawn(process.execPath, [CLI, '--port', '0', '--backend', 'cpu', '--metrics-port', '0'], {
      env,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      const info = JSON.parse(
        await new Promise<string>((resolve) => readline.createInterface({ input: child.stdout }).once('line', resolve)),
      ) as { metrics_port: number };
      assert.ok(Number.isInteger(info.metrics_port) && info.metrics_port > 0, JSON.stringify(info));
      const m = await scrape(info.metrics_port);
      assert.equal(m.get('mur_sessions_open'), 0);
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await exited, 0);
  });
});
