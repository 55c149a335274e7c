// make bench-load: one mur-server process and N client processes (default
// 32), each training its own session (100k parameters, Adam with the hybrid
// rule, random gradients) over loopback TCP for a fixed time, once on the
// gRPC transport and once on shm (the shared-memory arena, when the server's
// engine offers it). Prints per transport: steps/s of all clients together,
// p50/p99 client-side step latency, errors, and the server's resident memory
// (VmRSS from /proc/<pid>/status) before, at peak (sampled, and VmHWM), and
// after every session is closed. One JSON line per transport at the end.
//
//   node dist/bench/load.js [--duration S] [--clients N] [--params N] [--transports grpc,shm] [--backend NAME]
//                           [--state-dir DIR [--fsync never|always|interval=MS]]
//
// With --state-dir the server keeps its sessions in a new directory under DIR
// (removed at the end), journaling every step, forced to disk as --fsync says:
// what durability costs in steps/s. DIR must be on the disk to measure (not a tmpfs).
//
// The clients are Node processes (the generated gRPC client; shm: gradients
// written into the arena with pwrite, the values left there, as a PyTorch
// client whose parameters are views of the arena): light enough that 32 of
// them leave the CPU to the server, which is what is measured.
import { fork, spawn, type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import * as readline from 'readline';
import * as grpc from '@grpc/grpc-js';
import {
  DType,
  OptimizerClient,
  type ArenaInfo,
  type CreateSessionReply,
  type StepReply,
  type StepRequest,
} from '../generated/mur/v1/optimizer';

interface Options {
  duration: number;
  clients: number;
  params: number;
  transports: string[];
  backend?: string;
  stateDir?: string;
  fsync?: string;
}

interface WorkerResult {
  steps: number;
  errors: number;
  firstError?: string;
  latenciesMs: number[];
}

const CLI = path.join(__dirname, '../src/cli.js');

function parse(argv: string[]): Options {
  const o: Options = { duration: 45, clients: 32, params: 100_000, transports: ['grpc', 'shm'] };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--duration':
        o.duration = Number(v);
        break;
      case '--clients':
        o.clients = Number(v);
        break;
      case '--params':
        o.params = Number(v);
        break;
      case '--transports':
        o.transports = v.split(',');
        break;
      case '--backend':
        o.backend = v;
        break;
      case '--state-dir':
        o.stateDir = v;
        break;
      case '--fsync':
        o.fsync = v;
        break;
      case '--help':
        console.log(
          'node dist/bench/load.js [--duration S (45)] [--clients N (32)] [--params N (100000)] [--transports grpc,shm] [--backend NAME] [--state-dir DIR [--fsync MODE]]',
        );
        process.exit(0);
        break;
      default:
        throw new Error(`unknown option ${argv[i]}`);
    }
    i++;
  }
  if (!(o.duration > 0) || !(o.clients >= 1) || !(o.params >= 2)) throw new Error('--duration, --clients and --params must be positive');
  if (o.fsync && !o.stateDir) throw new Error('--fsync needs --state-dir');
  return o;
}

// -- a client process -------------------------------------------------------------

function unary<Req, Res>(
  fn: (req: Req, md: grpc.Metadata, cb: (e: grpc.ServiceError | null, r: Res) => void) => unknown,
  req: Req,
  md = new grpc.Metadata(),
): Promise<Res> {
  return new Promise((resolve, reject) => fn(req, md, (e, r) => (e ? reject(e) : resolve(r))));
}

async function worker(): Promise<void> {
  const { port, transport, params, seed } = JSON.parse(process.env.MUR_LOAD_WORKER!) as {
    port: number;
    transport: string;
    params: number;
    seed: number;
  };
  const client = new OptimizerClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': -1,
    'grpc.max_send_message_length': -1,
  });
  // Two tensors, like a weight and a smaller one: 90% and 10% of the parameters.
  const sizes = [params - Math.floor(params / 10), Math.floor(params / 10)];
  let s = seed;
  const random = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  const buf = (n: number, scale: number) => Buffer.from(Float32Array.from({ length: n }, () => random() * scale).buffer);
  const session = await unary<unknown, CreateSessionReply>(client.createSession.bind(client) as never, {
    spec: { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 1e-3 }, groups: {} },
    params: sizes.map((n, i) => ({ id: `p${i}`, name: `p${i}`, shape: [n], dtype: DType.DTYPE_FLOAT32, group: '', data: buf(n, 0.1) })),
  });
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${session.sessionToken}`);
  // A few gradient sets, cycled: random, and no time spent making them in the loop.
  const gradSets = Array.from({ length: 4 }, () => sizes.map((n) => buf(n, 1)));
  let arena: { fd: number; info: ArenaInfo } | null = null;
  if (transport === 'shm') {
    const info = await unary<unknown, ArenaInfo>(client.openArena.bind(client) as never, { sessionId: session.sessionId }, md);
    arena = { fd: fs.openSync(info.path, 'r+'), info };
  }
  const result: WorkerResult = { steps: 0, errors: 0, latenciesMs: [] };
  process.send!({ ready: true });
  const deadline = await new Promise<number>((resolve) => process.once('message', (m: { go: number }) => resolve(m.go)));
  for (let k = 1; Date.now() < deadline; k++) {
    const grads = gradSets[k % gradSets.length];
    const t0 = process.hrtime.bigint();
    try {
      let req: StepRequest;
      if (arena) {
        arena.info.tensors.forEach((t, i) => fs.writeSync(arena.fd, grads[i], 0, grads[i].length, t.gradOffset));
        req = { sessionId: session.sessionId, step: k, grads: [], groupOverrides: {}, arenaGrads: sizes.map((_, i) => i) };
      } else {
        req = {
          sessionId: session.sessionId,
          step: k,
          groupOverrides: {},
          arenaGrads: [],
          grads: sizes.map((n, i) => ({ paramId: `p${i}`, grad: { shape: [n], dtype: DType.DTYPE_FLOAT32, data: grads[i] } })),
        };
      }
      await unary<StepRequest, StepReply>(client.step.bind(client), req, md);
      result.steps++;
      result.latenciesMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
    } catch (e) {
      result.errors++;
      result.firstError ??= (e as Error).message;
    }
  }
  if (arena) fs.closeSync(arena.fd);
  await unary(client.closeSession.bind(client) as never, { sessionId: session.sessionId }, md);
  client.close();
  process.send!({ result }, () => process.exit(0));
}

// -- the driver -------------------------------------------------------------------

function rssKiB(pid: number): { rss: number; hwm: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: field('VmRSS'), hwm: field('VmHWM') };
}

const mib = (kib: number) => Math.round(kib / 1024);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function quantile(sorted: Float64Array, q: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN;
}

function scrape(port: number): Promise<Map<string, number>> {
  return new Promise((resolve, reject) =>
    http
      .get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        let body = '';
        res.on('data', (b) => (body += b));
        res.on('end', () => {
          const m = new Map<string, number>();
          for (const line of body.split('\n')) {
            const x = /^(mur_\S+) (\S+)$/.exec(line);
            if (x) m.set(x[1], Number(x[2]));
          }
          resolve(m);
        });
      })
      .on('error', reject),
  );
}

/** The line mur-server prints once it listens (the fields read here). */
interface ListeningLine {
  port: number;
  metrics_port: number;
  backend: string;
}

async function startServer(
  o: Options,
  stateDir: string | null,
): Promise<{ child: ChildProcess; port: number; metricsPort: number; backend: string }> {
  const args = [
    CLI,
    '--port',
    '0',
    '--metrics-port',
    '0',
    '--max-sessions',
    '0',
    ...(o.backend ? ['--backend', o.backend] : []),
    ...(stateDir ? ['--state-dir', stateDir, ...(o.fsync ? ['--fsync', o.fsync] : [])] : []),
  ];
  const child = spawn(process.execPath, args, { env: { ...process.env, MUR_LOG: 'silent' }, stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    readline.createInterface({ input: child.stdout }).once('line', resolve);
    child.once('exit', (code) => reject(new Error(`mur-server exited with ${code} before listening`)));
  });
  const info = JSON.parse(line) as ListeningLine;
  return { child, port: info.port, metricsPort: info.metrics_port, backend: info.backend };
}

async function phase(o: Options, transport: string, server: { child: ChildProcess; port: number; metricsPort: number }) {
  const pid = server.child.pid!;
  const before = rssKiB(pid);
  const metricsBefore = await scrape(server.metricsPort);
  const workers = Array.from({ length: o.clients }, (_, i) =>
    fork(__filename, ['--worker'], {
      env: { ...process.env, MUR_LOAD_WORKER: JSON.stringify({ port: server.port, transport, params: o.params, seed: 1 + i }) },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }),
  );
  const results: Promise<WorkerResult>[] = workers.map(
    (w) =>
      new Promise((resolve, reject) => {
        w.on('message', (m: { result?: WorkerResult }) => m.result && resolve(m.result));
        w.on('exit', (code) => code !== 0 && reject(new Error(`a client exited with code ${code}`)));
      }),
  );
  await Promise.all(workers.map((w) => new Promise<void>((resolve) => w.once('message', () => resolve()))));
  let peak = rssKiB(pid).rss;
  const sampler = setInterval(() => (peak = Math.max(peak, rssKiB(pid).rss)), 200);
  const start = Date.now();
  for (const w of workers) w.send({ go: start + o.duration * 1000 });
  const all = await Promise.all(results);
  clearInterval(sampler);
  const seconds = (Date.now() - start) / 1000;
  peak = Math.max(peak, rssKiB(pid).rss);
  await sleep(1000); // closed sessions' memory returned
  const after = rssKiB(pid);
  const metricsAfter = await scrape(server.metricsPort);
  const lat = Float64Array.from(all.flatMap((r) => r.latenciesMs)).sort();
  const steps = all.reduce((n, r) => n + r.steps, 0);
  const key = `mur_steps_total{transport="${transport}",result="ok"}`;
  return {
    transport,
    clients: o.clients,
    params_per_client: o.params,
    seconds: Number(seconds.toFixed(2)),
    steps,
    steps_per_s: Number((steps / seconds).toFixed(1)),
    p50_ms: Number(quantile(lat, 0.5).toFixed(2)),
    p99_ms: Number(quantile(lat, 0.99).toFixed(2)),
    errors: all.reduce((n, r) => n + r.errors, 0),
    first_error: all.find((r) => r.firstError)?.firstError,
    server_steps_counted: (metricsAfter.get(key) ?? 0) - (metricsBefore.get(key) ?? 0),
    server_rss_mib: { before: mib(before.rss), peak: mib(peak), hwm: mib(after.hwm), after: mib(after.rss) },
  };
}

async function main(): Promise<void> {
  if (process.argv.includes('--worker')) return worker();
  const o = parse(process.argv.slice(2));
  const stateDir = o.stateDir ? fs.mkdtempSync(path.join(o.stateDir, 'mur-bench-state-')) : null;
  const server = await startServer(o, stateDir);
  try {
    const fresh = rssKiB(server.child.pid!).rss;
    const caps = await new Promise<{ transports: string[] }>((resolve, reject) =>
      new OptimizerClient(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure()).getCapabilities({}, (e, r) =>
        e ? reject(e) : resolve(r),
      ),
    );
    console.log(
      `bench-load: ${o.clients} clients x ${o.params} parameters (adam, hybrid), ${o.duration} s per transport, server pid ${server.child.pid} (${server.backend})` +
        (stateDir ? `, --state-dir ${stateDir} --fsync ${o.fsync ?? '(default)'}` : ''),
    );
    console.log(
      `server RSS MiB: ${mib(fresh)} started, ${mib(rssKiB(server.child.pid!).rss)} after one GetCapabilities (it probes the available engines)`,
    );
    const rows = [];
    for (const t of o.transports) {
      if (!caps.transports.includes(t)) {
        console.log(`${t}: skipped, the server (${server.backend}) does not offer it`);
        continue;
      }
      const r = await phase(o, t, server);
      rows.push(r);
      console.log(
        `${t.padEnd(5)} ${String(r.steps_per_s).padStart(8)} steps/s  p50 ${r.p50_ms} ms  p99 ${r.p99_ms} ms  errors ${r.errors}` +
          `  server RSS MiB: before ${r.server_rss_mib.before}, peak ${r.server_rss_mib.peak} (VmHWM ${r.server_rss_mib.hwm}), after close ${r.server_rss_mib.after}` +
          (r.server_steps_counted !== r.steps ? `  (server counted ${r.server_steps_counted} steps)` : ''),
      );
      if (r.first_error) console.log(`      first error: ${r.first_error}`);
    }
    for (const r of rows) console.log(JSON.stringify({ ...r, ...(stateDir ? { state_dir: true, fsync: o.fsync ?? 'default' } : {}) }));
  } finally {
    server.child.kill('SIGTERM');
    if (stateDir) {
      await new Promise((resolve) => server.child.once('exit', resolve));
      fs.rmSync(stateDir, { recursive: true, force: true });
    }
  }
}

main().catch((e) => {
  console.error(`bench-load: ${(e as Error).stack ?? e}`);
  process.exit(1);
});
