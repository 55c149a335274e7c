// A full or failing disk under --state-dir: a step whose journal record
// cannot be written (ENOSPC on a small tmpfs; an injected EIO on write or on
// fdatasync) is refused with RESOURCE_EXHAUSTED or UNAVAILABLE naming the
// state directory, the session exactly as before and no partial record left
// behind; the same step succeeds once the disk works, and the run ends equal
// bit for bit to one that never hit the problem, before and after a restart.
// Also: group commit (--fsync interval=MS) answers each step only after its
// record is on disk, the window's fdatasyncs issued together.
import { strict as assert } from 'assert';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { DType } from '../generated/mur/v1/optimizer';
import { resolveSpec } from '../src/registry';
import { io, type FsyncMode } from '../src/session/fsync';
import { readRecord } from '../src/session/records';
import { Session } from '../src/session/session';
import { bytes, create, exportAll, floats, grads, startHarness, step, type Harness } from './harness';

const F32 = DType.DTYPE_FLOAT32;
const spec = { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, lr_out: 0.01, gamma: 0.5 }, groups: {} };
const N = 5000; // a journal record of ~20 KB
const theta0 = () => new Float32Array(N).map((_, i) => Math.sin(i));
const grad = (k: number) => new Float32Array(N).map((_, i) => Math.cos(i * 0.1 + k) * 0.1);

/** The same steps on an in-process session that never saw a disk. */
function reference(steps: number): Float32Array {
  const s = new Session('ref', resolveSpec(spec), [{ id: 'w', name: 'w', shape: [N], group: '', values: theta0() }]);
  let out = new Float32Array(0);
  for (let k = 1; k <= steps; k++) out = s.step(k, [{ id: 'w', data: grad(k) }]).values[0].data.slice();
  s.dispose();
  return out;
}

const stepK = (h: Harness, sessionId: string, k: number) =>
  step(h, { sessionId, step: k, grads: grads({ w: { shape: [N], data: grad(k) } }), groupOverrides: {} });

/** A call refused with `code`, a message matching `text`, and (when given) the mur-reason trailer. */
async function refused(p: Promise<unknown>, code: grpc.status, text: RegExp, reason?: string): Promise<string> {
  try {
    await p;
  } catch (e) {
    const se = e as grpc.ServiceError;
    assert.equal(se.code, code, se.details);
    assert.match(se.details, text);
    if (reason) assert.deepEqual(se.metadata.get('mur-reason'), [reason]);
    return se.details;
  }
  assert.fail('the call was not refused');
}

const journalOf = (state: string, id: string) => path.join(state, 'sessions', id, 'journal');

/**
 * The journal holds whole records only (no part of the refused one) and no
 * step record numbered `k`; it may hold a record that the number was refused.
 */
function noRecordOf(file: string, k: number): void {
  const buf = fs.readFileSync(file);
  let at = 0;
  for (;;) {
    const r = readRecord(buf, at);
    if (r === 'torn') break;
    assert.ok(!(r.json.op === 'step' && r.json.step === k), `a step record for step ${k}`);
    at = r.end;
  }
  assert.equal(at, buf.length, 'nothing after the last whole record');
}

describe('--state-dir on a full or failing disk', () => {
  let tmp: string;
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-disk-'));
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('a full disk (2 MiB tmpfs): RESOURCE_EXHAUSTED naming the directory, nothing applied; the same step succeeds once there is room', async function () {
    this.timeout(60_000);
    const mnt = path.join(tmp, 'mnt');
    fs.mkdirSync(mnt);
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mnt], { stdio: 'pipe' });
    } catch (e) {
      process.stdout.write(
        `      skipped: cannot mount a tmpfs here (${String((e as { stderr?: Buffer }).stderr ?? (e as Error).message).trim()})\n`,
      );
      this.skip();
    }
    const state = path.join(mnt, 'state');
    let h: Harness | null = null;
    try {
      h = await startHarness({ stateDir: state, fsync: { kind: 'always' } });
      const s = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [N], dtype: F32, group: '', data: bytes(theta0()) }] });
      for (let k = 1; k <= 3; k++) await stepK(h, s.sessionId, k);
      const before = await exportAll(h, s.sessionId);
      // Fill the disk: 4 KiB at a time until it refuses (less than a page is left).
      const filler = path.join(mnt, 'filler');
      const fd = fs.openSync(filler, 'w');
      try {
        for (const page = Buffer.alloc(4096, 1); ;) fs.writeSync(fd, page);
      } catch (e) {
        assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
      } finally {
        fs.closeSync(fd);
      }
      for (let attempt = 0; attempt < 2; attempt++) {
        await refused(
          stepK(h, s.sessionId, 4),
          grpc.status.RESOURCE_EXHAUSTED,
          new RegExp(`state dir ${state}: no space left \\(ENOSPC\\).*nothing was applied`),
          'disk-full',
        );
        noRecordOf(journalOf(state, s.sessionId), 4); // the part of the record that was written is truncated away
        assert.deepEqual(await exportAll(h, s.sessionId), before, 'the session exactly as before');
      }
      await refused(
        create(h, { spec, params: [{ id: 'x', name: 'x', shape: [N], dtype: F32, group: '', data: bytes(theta0()) }] }),
        grpc.status.RESOURCE_EXHAUSTED,
        /no space left/,
      );
      assert.deepEqual(fs.readdirSync(path.join(state, 'sessions')), [s.sessionId], 'a refused CreateSession leaves no files');
      fs.rmSync(filler);
      let last = await stepK(h, s.sessionId, 4);
      assert.equal(last.replayed, false);
      for (let k = 5; k <= 6; k++) last = await stepK(h, s.sessionId, k);
      assert.deepEqual(
        Array.from(floats(last.params[0].value!.data)),
        Array.from(reference(6)),
        'equal to a run that never hit a full disk',
      );
      const after = await exportAll(h, s.sessionId);
      await h.close();
      h = await startHarness({ stateDir: state });
      assert.deepEqual(await exportAll(h, s.sessionId), after, 'and after a restart: the journal holds no garbage');
    } finally {
      await h?.close();
      execFileSync('umount', [mnt]);
    }
  });

  for (const [what, fsync, inject] of [
    ['an EIO half-way through writing the record', { kind: 'never' }, 'write'],
    ['an EIO from fdatasync (--fsync always)', { kind: 'always' }, 'datasync'],
    ['an EIO from the group commit (--fsync interval=5)', { kind: 'interval', ms: 5 }, 'datasync'],
  ] as Array<[string, FsyncMode, 'write' | 'datasync']>) {
    it(`${what}: UNAVAILABLE naming the directory, nothing applied; the retry succeeds`, async () => {
      const state = path.join(tmp, 'state');
      let h = await startHarness({ stateDir: state, fsync });
      const saved = { ...io };
      try {
        const s = await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [N], dtype: F32, group: '', data: bytes(theta0()) }] });
        for (let k = 1; k <= 2; k++) await stepK(h, s.sessionId, k);
        const before = await exportAll(h, s.sessionId);
        let failures = 0;
        const eio = () => Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
        if (inject === 'write') {
          io.write = (fd, buf, pos) => {
            if (failures++ === 0) return saved.write(fd, buf.subarray(0, buf.length >> 1), pos); // half the header and JSON land
            throw eio();
          };
        } else {
          io.datasync = (_fd, cb) => {
            failures++;
            setImmediate(() => cb(eio()));
          };
        }
        await refused(
          stepK(h, s.sessionId, 3),
          grpc.status.UNAVAILABLE,
          new RegExp(`state dir ${state}: I/O error \\(EIO\\).*nothing was applied`),
          'disk-io',
        );
        assert.ok(failures > 0);
        Object.assign(io, saved);
        noRecordOf(journalOf(state, s.sessionId), 3);
        assert.deepEqual(await exportAll(h, s.sessionId), before, 'the session exactly as before');
        let last = await stepK(h, s.sessionId, 3);
        assert.equal(last.replayed, false);
        last = await stepK(h, s.sessionId, 4);
        assert.deepEqual(Array.from(floats(last.params[0].value!.data)), Array.from(reference(4)));
        const after = await exportAll(h, s.sessionId);
        await h.close();
        h = await startHarness({ stateDir: state });
        assert.deepEqual(await exportAll(h, s.sessionId), after, 'recovered exactly');
      } finally {
        Object.assign(io, saved);
        await h.close();
      }
    });
  }

  it('group commit: the steps of one window share one round of fdatasyncs, each answered after its own', async () => {
    const state = path.join(tmp, 'state');
    const h = await startHarness({ stateDir: state, fsync: { kind: 'interval', ms: 20 } });
    const saved = { ...io };
    const events: string[] = [];
    try {
      const ids: string[] = [];
      for (let i = 0; i < 6; i++)
        ids.push(
          (await create(h, { spec, params: [{ id: 'w', name: 'w', shape: [N], dtype: F32, group: '', data: bytes(theta0()) }] })).sessionId,
        );
      const fdToSession = new Map<number, string>();
      io.datasync = (fd, cb) => {
        events.push(`issue ${fd}`);
        saved.datasync(fd, (e) => {
          events.push(`synced ${fd}`);
          cb(e);
        });
      };
      io.write = (fd, buf, pos) => {
        const n = saved.write(fd, buf, pos);
        const id = ids.find((x) => fs.readlinkSync(`/proc/self/fd/${fd}`) === journalOf(state, x));
        if (id) fdToSession.set(fd, id);
        return n;
      };
      await Promise.all(ids.map((id) => stepK(h, id, 1).then(() => events.push(`reply ${id}`))));
      const issued = events.filter((e) => e.startsWith('issue')).length;
      assert.equal(issued, 6, 'one fdatasync per journal');
      assert.ok(
        events.slice(0, 6).every((e) => e.startsWith('issue')),
        `issued together, before any completes: ${events.join(', ')}`,
      );
      for (const [fd, id] of fdToSession) {
        assert.ok(events.indexOf(`synced ${fd}`) < events.indexOf(`reply ${id}`), `session ${id} answered after its record was on disk`);
      }
      assert.equal(fdToSession.size, 6);
    } finally {
      Object.assign(io, saved);
      await h.close();
    }
  });
});
