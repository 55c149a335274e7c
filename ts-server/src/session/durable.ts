// Durable sessions (`mur-server --state-dir DIR`): every step a client is
// told about survives a SIGKILL of the server at any instant.
//
// DIR/key                      the credentials key (tokens survive restarts)
// DIR/sessions/<id>/meta.json  spec and parameter declarations at creation
// DIR/sessions/<id>/snapshot   every tensor and the session header at one step
// DIR/sessions/<id>/journal    the steps after the snapshot, as requests
//
// A step's request (step number, overrides, gradients) is appended to the
// journal after it is validated and before the engine touches anything; the
// reply goes out after the engine commits. Recovery loads the snapshot and
// replays the journal through the ordinary step path, which is deterministic
// (the engine's results do not depend on threads), so a step killed mid-kernel
// is applied again from the same state: exactly once. A record cut short by
// the kill is incomplete (its end marker is missing) and ignored: that step
// was never acknowledged and the client's retry applies it. A step refused
// after its record was written (a NaN found by the native engine's fused
// scan) truncates the journal back; if the kill falls in between, replay
// refuses it again. The snapshot is rewritten (to a temporary file, then
// renamed) when the journal has grown past the session's size, so recovery
// reads at most about twice the state.
//
// Parameters added to a live session (AddParameters) are written as a new
// snapshot whose header carries every declaration: the rename of that file is
// the one instant the addition becomes durable, so recovery builds the session
// from the snapshot's declarations when it has them (meta.json's otherwise).
//
// Writes go to the page cache (no fsync): they survive the process, not a
// power cut; --state-dir is about crashes and restarts of the server.
import * as fs from 'fs';
import * as path from 'path';
import { randomBytes } from 'crypto';
import { log } from '../log';
import { resolveSpec, type ResolvedSpec, type SpecJson } from '../registry';
import type { SlotTensor } from './checkpoint';
import type { ParamDeclaration } from './declarations';
import type { Overrides, Session } from './session';

const MAGIC = 0x4d55524a; // "MURJ"
const END = 0x454e4421; // "END!"

/** What a Session tells its journal. */
export interface StepJournal {
  /** Before the engine runs: the validated request. */
  append(step: number, grads: Array<{ id: string; data: Float32Array }>, overrides: Overrides): { cancel(): void };
  /** After the step was recorded in the session. */
  committed(session: Session): void;
  /** After an ImportState: the state changed wholesale. */
  replaced(session: Session): void;
}

interface Meta {
  spec: SpecJson;
  params: Array<{ id: string; name: string; shape: number[]; group: string }>;
}

interface SnapshotHeader {
  spec: SpecJson;
  stepCounts: Array<[string, number]>;
  lastStep: number;
  lastRequest: { ids: string[]; digest: string | null };
  tensors: Array<{ paramId: string; slot: string; length: number }>;
  /** Every parameter declaration at this snapshot (absent in snapshots older than AddParameters). */
  params?: Meta['params'];
}

export function specToJson(s: ResolvedSpec): SpecJson {
  return { optimizer: s.optimizer.name, rule: s.rule.name, defaults: s.defaults, groups: s.groups };
}

/** A length-prefixed JSON header followed by float32 payloads. */
function encode(header: unknown, payloads: Float32Array[]): Buffer[] {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const head = Buffer.alloc(8);
  head.writeUInt32LE(MAGIC, 0);
  head.writeUInt32LE(json.length, 4);
  const pad = Buffer.alloc((4 - (json.length % 4)) % 4);
  const bodyBytes = payloads.reduce((a, p) => a + p.byteLength, 0);
  const tail = Buffer.alloc(12);
  tail.writeUInt32LE(END, 0);
  tail.writeDoubleLE(8 + json.length + pad.length + bodyBytes + 12, 4);
  return [head, json, pad, ...payloads.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength)), tail];
}

/** Decodes records from `buf` starting at `at`; stops at the first incomplete one. */
function* decode(buf: Buffer): Generator<{ header: unknown; floats: Float32Array; end: number }> {
  let at = 0;
  while (at + 8 <= buf.length && buf.readUInt32LE(at) === MAGIC) {
    const jsonLen = buf.readUInt32LE(at + 4);
    const jsonEnd = at + 8 + jsonLen;
    if (jsonEnd > buf.length) return;
    let header: { bytes?: number };
    try {
      header = JSON.parse(buf.toString('utf8', at + 8, jsonEnd));
    } catch {
      return;
    }
    const dataAt = jsonEnd + ((4 - (jsonLen % 4)) % 4);
    const bytes = header.bytes ?? 0;
    const end = dataAt + bytes + 12;
    if (end > buf.length || buf.readUInt32LE(end - 12) !== END || buf.readDoubleLE(end - 8) !== end - at) return;
    const floats = new Float32Array(buf.buffer.slice(buf.byteOffset + dataAt, buf.byteOffset + dataAt + bytes));
    yield { header, floats, end };
    at = end;
  }
}

function writeAtomic(file: string, parts: Buffer[]): void {
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    for (const p of parts) fs.writeSync(fd, p);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

/** The journal and snapshots of one session. */
class SessionFiles implements StepJournal {
  private journalFd: number;
  private journalBytes = 0;

  constructor(
    readonly dir: string,
    private readonly stateBytes: number,
  ) {
    this.journalFd = fs.openSync(path.join(dir, 'journal'), 'a', 0o600);
    this.journalBytes = fs.fstatSync(this.journalFd).size;
  }

  append(step: number, grads: Array<{ id: string; data: Float32Array }>, overrides: Overrides): { cancel(): void } {
    const before = this.journalBytes;
    const bytes = grads.reduce((a, g) => a + g.data.byteLength, 0);
    const parts = encode({ step, overrides, grads: grads.map((g) => ({ id: g.id, n: g.data.length })), bytes }, grads.map((g) => g.data));
    for (const p of parts) {
      fs.writeSync(this.journalFd, p);
      this.journalBytes += p.length;
    }
    return {
      cancel: () => {
        fs.ftruncateSync(this.journalFd, before);
        this.journalBytes = before;
      },
    };
  }

  committed(session: Session): void {
    if (this.journalBytes > Math.max(this.stateBytes, 1 << 20)) this.snapshot(session);
  }

  replaced(session: Session): void {
    this.snapshot(session);
  }

  /** Every tensor and the header, atomically; then the journal restarts empty. */
  snapshot(session: Session): void {
    const tensors: SlotTensor[] = [...session.exportTensors()];
    const h = session.header();
    const header: SnapshotHeader & { bytes: number } = {
      spec: specToJson(h.spec),
      stepCounts: [...h.stepCounts],
      lastStep: h.lastStep,
      lastRequest: session.lastRequest,
      tensors: tensors.map((t) => ({ paramId: t.paramId, slot: t.slot, length: t.data.length })),
      params: session.declarations().map((d) => ({ id: d.id, name: d.name, shape: d.shape, group: d.group })),
      bytes: tensors.reduce((a, t) => a + t.data.byteLength, 0),
    };
    writeAtomic(path.join(this.dir, 'snapshot'), encode(header, tensors.map((t) => t.data)));
    fs.ftruncateSync(this.journalFd, 0);
    this.journalBytes = 0;
  }

  close(): void {
    if (this.journalFd >= 0) fs.closeSync(this.journalFd);
    this.journalFd = -1;
  }
}

/** The state directory of a server. */
export class StateDir {
  private readonly files = new Map<string, SessionFiles>();

  constructor(readonly root: string) {
    fs.mkdirSync(path.join(root, 'sessions'), { recursive: true, mode: 0o700 });
  }

  /** The credentials key, created on first use and kept (0600). */
  key(): Buffer {
    const file = path.join(this.root, 'key');
    if (!fs.existsSync(file)) writeAtomic(file, [randomBytes(32)]);
    return fs.readFileSync(file);
  }

  /** A new session's files: its declarations and a first snapshot. */
  created(session: Session, spec: ResolvedSpec, decls: ParamDeclaration[], stateBytes: number): StepJournal {
    const dir = path.join(this.root, 'sessions', session.id);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const meta: Meta = { spec: specToJson(spec), params: decls.map((d) => ({ id: d.id, name: d.name, shape: d.shape, group: d.group })) };
    writeAtomic(path.join(dir, 'meta.json'), [Buffer.from(JSON.stringify(meta))]);
    const f = new SessionFiles(dir, stateBytes);
    f.snapshot(session);
    this.files.set(session.id, f);
    return f;
  }

  /** The session is gone for good: its files too. */
  removed(id: string): void {
    this.files.get(id)?.close();
    this.files.delete(id);
    fs.rmSync(path.join(this.root, 'sessions', id), { recursive: true, force: true });
  }

  /**
   * Every session of the directory, as it was after its last acknowledged
   * step: `make` builds an empty session from the declarations, the snapshot
   * is imported, the journal replayed.
   */
  *recover(
    make: (id: string, spec: ResolvedSpec, decls: ParamDeclaration[]) => { session: Session; stateBytes: number },
  ): Generator<{ session: Session; journal: StepJournal }> {
    for (const id of fs.readdirSync(path.join(this.root, 'sessions'))) {
      const dir = path.join(this.root, 'sessions', id);
      try {
        const meta = JSON.parse(fs.readFileSync(path.join(dir, 'meta.json'), 'utf8')) as Meta;
        const snap = [...decode(fs.readFileSync(path.join(dir, 'snapshot')))][0];
        if (!snap) throw new Error('no complete snapshot');
        const h = snap.header as SnapshotHeader;
        // The snapshot's declarations include parameters added after creation.
        const params = h.params ?? meta.params;
        const groups = new Set(params.map((p) => p.group));
        const spec = resolveSpec(h.params ? h.spec : meta.spec, groups);
        const { session, stateBytes } = make(id, spec, params.map((p) => ({ ...p, values: null })));
        let at = 0;
        const tensors = h.tensors.map((t) => {
          const data = snap.floats.subarray(at, at + t.length);
          at += t.length;
          return { paramId: t.paramId, slot: t.slot, data };
        });
        session.importState({ spec: resolveSpec(h.spec, groups), stepCounts: new Map(h.stepCounts), lastStep: h.lastStep }, tensors);
        session.lastRequest = h.lastRequest;
        let replayed = 0;
        for (const r of decode(fs.readFileSync(path.join(dir, 'journal')))) {
          const rec = r.header as { step: number; overrides: Overrides; grads: Array<{ id: string; n: number }> };
          if (rec.step <= session.header().lastStep) continue; // already in the snapshot
          let off = 0;
          const grads = rec.grads.map((g) => {
            const data = r.floats.subarray(off, off + g.n);
            off += g.n;
            return { id: g.id, data };
          });
          try {
            session.step(rec.step, grads, rec.overrides);
            replayed++;
          } catch (e) {
            log('warn', 'journal_record_refused', { session: id, step: rec.step, message: (e as Error).message });
          }
        }
        const f = new SessionFiles(dir, stateBytes);
        f.snapshot(session); // the recovered state becomes the new base
        this.files.set(id, f);
        log('info', 'session_recovered', { session: id, lastStep: session.header().lastStep, replayed });
        yield { session, journal: f };
      } catch (e) {
        log('error', 'session_unrecoverable', { session: id, message: (e as Error).message });
      }
    }
  }

  close(): void {
    for (const f of this.files.values()) f.close();
    this.files.clear();
  }
}
