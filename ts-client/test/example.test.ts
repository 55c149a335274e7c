// The tfjs example, run as a user runs it against a server of their own:
// `node dist/examples/train-tfjs.js host:port` in a process of its own
// (minimizeAsync, nothing else keeping Node alive), against a server this
// test starts. It must train: every step counted by the server, the loss falling.
import { strict as assert } from 'assert';
import { spawn } from 'child_process';
import * as path from 'path';
import { initBackend, startServer, type RunningServer } from '@mur/server';

const EXAMPLE = path.join(__dirname, '..', 'examples', 'train-tfjs.js');

/** Runs the example against `address`; resolves with its exit code and output. */
function runExample(address: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [EXAMPLE, address], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, MUR_LOG: 'silent' },
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The server's mur_steps_total for one transport and result. */
async function stepsCounted(server: RunningServer, transport: string, result: string): Promise<number> {
  const metric = server.context.metrics.registry.getSingleMetric('mur_steps_total')!;
  const { values } = await metric.get();
  return values.filter((v) => v.labels.transport === transport && v.labels.result === result).reduce((n, v) => n + v.value, 0);
}

describe('examples/train-tfjs.js against a separate server', () => {
  let server: RunningServer;
  before(async () => {
    await initBackend('wasm');
    server = await startServer({ port: 0 });
  });
  after(() => server?.close());

  it('trains in its own process: 300 steps reach the server and the loss falls', async function () {
    this.timeout(120_000);
    const { code, stdout, stderr } = await runExample(`127.0.0.1:${server.port}`);
    assert.equal(code, 0, `exit code ${code}; stderr: ${stderr}`);
    const losses = [...stdout.matchAll(/^step +(\d+) +loss ([\d.]+)$/gm)].map((m) => ({ step: Number(m[1]), loss: Number(m[2]) }));
    assert.deepEqual(
      losses.map((l) => l.step),
      [1, 50, 100, 150, 200, 250, 300],
      `printed: ${stdout}`,
    );
    assert.ok(losses[6].loss < losses[0].loss / 10, `the loss fell: ${losses[0].loss} -> ${losses[6].loss}`);
    // "auto" against a server without shm (wasm engine) with a data port: tcp.
    assert.equal(await stepsCounted(server, 'tcp', 'ok'), 300);
    assert.equal(server.context.store.size, 0, 'the example closed its session');
  });
});
