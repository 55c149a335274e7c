// A server on --state-dir whose files fail their checks: the client throws
// DataLossError (DATA_LOSS, never retried, saying how to resume), and a new
// session restored from the last checkpoint continues the run exactly.
// Disk statuses map to StorageFullError / StorageIOError.
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { status } from '@grpc/grpc-js';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import { DataLossError, fromStatus, MurClient, ResourceExhaustedError, StorageFullError, StorageIOError, UnavailableError } from '../src';

const spec = { optimizer: 'adam', rule: 'additive', defaults: { lr: 0.05 } };
const init = () => [{ id: 'w', shape: [4], values: Float32Array.from([1, -2, 3, 0.5]) }];
const grad = (k: number) => ({ w: Float32Array.from([k, -1, 0.25 * k, 2]) });

describe('MurClient and a damaged or full --state-dir', () => {
  let dir: string;
  before(async () => {
    await initBackend('wasm');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-durability-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('statuses: DATA_LOSS -> DataLossError with how to resume; a full or failing state dir -> StorageFullError / StorageIOError', () => {
    const e = fromStatus(status.DATA_LOSS, "session 'x': /s/sessions/x/journal: body checksum mismatch");
    assert.ok(e instanceof DataLossError && e.code === status.DATA_LOSS);
    assert.match(e.message, /journal: body checksum mismatch \[DATA_LOSS\] To resume: create a new session .*restore\(<your last checkpoint>\)/);
    const full = fromStatus(status.RESOURCE_EXHAUSTED, 'state dir /s: no space left (ENOSPC) while writing');
    assert.ok(full instanceof StorageFullError && full instanceof ResourceExhaustedError);
    assert.ok(!(fromStatus(status.RESOURCE_EXHAUSTED, 'memory: ...') instanceof StorageFullError));
    const io = fromStatus(status.UNAVAILABLE, 'state dir /s: I/O error (EIO) while writing');
    assert.ok(io instanceof StorageIOError && io instanceof UnavailableError);
  });

  it('a damaged session: DataLossError on the first attempt (not retried); a new session from the checkpoint continues exactly', async () => {
    const stateDir = path.join(dir, 'state');
    const socket = path.join(dir, 'mur.sock');
    let server: RunningServer = await startServer({ socket, stateDir });
    const ref = await startServer({ port: 0 });
    const refClient = new MurClient(`127.0.0.1:${ref.port}`);
    const client = new MurClient(`unix:${socket}`, { retries: 5, retryBackoffMs: 10 });
    try {
      const s = await client.createSession(spec, init(), { transport: 'grpc' });
      const r = await refClient.createSession(spec, init(), { transport: 'grpc' });
      for (let k = 1; k <= 2; k++) {
        await s.step(grad(k));
        await r.step(grad(k));
      }
      const cp = await s.checkpoint();
      await s.step(grad(3));
      await server.close();
      const journal = path.join(stateDir, 'sessions', s.id, 'journal');
      const buf = fs.readFileSync(journal);
      buf[buf.length - 5] ^= 0x01;
      fs.writeFileSync(journal, buf);
      server = await startServer({ socket, stateDir });
      // Count the DATA_LOSS answers the session's steps get (a first attempt may meet the reconnect: UNAVAILABLE, retried).
      let dataLoss = 0;
      const raw = client.raw as unknown as { step: (...a: unknown[]) => unknown };
      const step = raw.step;
      raw.step = function (this: unknown, ...a: unknown[]) {
        const cb = a.at(-1) as (e: { code?: number } | null, r: unknown) => void;
        return step.apply(this, [...a.slice(0, -1), (e: { code?: number } | null, r: unknown) => ((dataLoss += e?.code === status.DATA_LOSS ? 1 : 0), cb(e, r))]);
      };
      await assert.rejects(s.step(grad(4)), (e: Error) => e instanceof DataLossError && /journal.*checksum mismatch/.test(e.message) && /To resume/.test(e.message));
      assert.equal(dataLoss, 1, 'DATA_LOSS is not retried');
      raw.step = step;
      const resumed = await client.createSession(spec, init(), { transport: 'grpc' });
      await resumed.restore(cp);
      for (let k = 3; k <= 4; k++) {
        assert.deepEqual(Array.from((await resumed.step(grad(k))).get('w')!), Array.from((await r.step(grad(k))).get('w')!));
      }
    } finally {
      client.close();
      refClient.close();
      await server.close();
      await ref.close();
    }
  });
});
