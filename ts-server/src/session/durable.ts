// Durable sessions (`mur-server --state-dir DIR`): every step a client is
// told about survives a SIGKILL of the server at any instant (and, with
// --fsync always or interval=MS, a power cut); state that fails a check is
// never served: that session answers DATA_LOSS. Format and checks:
// docs/state-dir.md.
//
// DIR/key                      the credentials key (tokens survive restarts)
// DIR/sessions/<id>/meta       which session, under which key
// DIR/sessions/<id>/snapshot   every tensor, the declarations and the session header after record S
// DIR/sessions/<id>/journal    records S+1, S+2, ...: each step, ImportState, AddParameters
//
// Every file is made of records (records.ts): checksummed, versioned, and
// naming the session they belong to; journal records are numbered one after
// another, the snapshot says the last record it contains. A change is written
// to the journal after it is validated and before anything in memory
// changes, and (with fsync) forced to disk before it is applied; a record that
// cannot be written is truncated away and the call refused (RESOURCE_EXHAUSTED
// for a full disk, UNAVAILABLE for an I/O error), the session unchanged.
// Recovery loads the snapshot and replays the journal through the ordinary
// paths, which are deterministic, so a step killed mid-kernel is applied
// again from the same state: exactly once. A torn tail (the last record cut
// short: never acknowledged) is dropped and the client's retry applies it; a
// step refused after its record was written (a NaN found by the native
// engine's fused scan) truncates the journal back, and if the kill falls in
// between, replay refuses it again and drops it. Anything else that fails a
// check makes the session damaged. The snapshot is rewritten (a temporary
// file, then renamed) when the journal has grown past four times the
// session's size: a step costs its record and a quarter of a snapshot per
// state-sized run of records, and recovery reads at most about five times the
// state.
import * as fs from 'fs';
import * as path from 'path';
import { createHash, randomBytes } from 'crypto';
import { DataLoss, InvalidArgument, type MurError, Reason, ResourceExhausted, Unavailable } from '../errors';
import { log } from '../log';
import { resolveSpec, specJson, type ResolvedSpec, type SpecJson } from '../registry';
import type { SessionHeader, SlotTensor } from './checkpoint';
import type { ParamDeclaration } from './declarations';
import { FSYNC_DEFAULT, io, Syncer, type FsyncMode } from './fsync';
import { encodeRecord, floatsOf, type Frame, Kind, MAGIC, readOnly, readRecord, RecordDamage } from './records';
import type { Overrides, Session } from './session';
import type { RoundInput } from './lbfgs';

/** A journal record written and not yet known to be on disk. */
export interface PendingRecord {
  /** Resolves once the record is on disk as --fsync asks (ResourceExhausted / Unavailable if it cannot be). */
  durable(): Promise<void>;
  /** The same, blocking. */
  durableSync(): void;
  /** The change was refused after all: the record is removed. */
  cancel(): void;
}

/** What a Session tells its journal: each change before it is made. */
export interface StepJournal {
  step(step: number, grads: Array<{ id: string; data: Float32Array; rows?: Uint32Array }>, overrides: Overrides): PendingRecord;
  imported(header: Partial<SessionHeader> | undefined, tensors: SlotTensor[]): PendingRecord;
  added(groups: Overrides, decls: ParamDeclaration[]): PendingRecord;
  /** A step numbered past every number so far was refused (clients do not send that number again). */
  refused(step: number): PendingRecord;
  /** An L-BFGS step that ended: the inputs of its rounds (replayed in order, they rebuild it). */
  closureStep(step: number, overrides: Overrides, rounds: RoundInput[]): PendingRecord;
  /** After a change was made in the session. */
  committed(session: Session): void;
}

type ParamsJson = Array<{ id: string; name: string; shape: number[]; group: string }>;

interface SnapshotJson {
  session: string;
  spec: SpecJson;
  stepCounts: Array<[string, number]>;
  lastStep: number;
  lastRequest: { ids: string[]; digest: string | null };
  /** The highest step number refused past lastStep (0: none). */
  lastRefused: number;
  tensors: Array<{ paramId: string; slot: string; length: number }>;
  params: ParamsJson;
}

type JournalJson =
  | { session: string; op: 'step'; step: number; overrides: Overrides; grads: Array<{ id: string; n: number; rows?: number[] }> }
  | {
      session: string;
      op: 'import';
      header: { spec?: SpecJson; stepCounts?: Array<[string, number]>; lastStep?: number };
      tensors: SnapshotJson['tensors'];
    }
  | { session: string; op: 'add'; groups: Overrides; params: Array<ParamsJson[number] & { n: number }> }
  | { session: string; op: 'refused'; step: number }
  | {
      session: string;
      op: 'lbfgs';
      step: number;
      overrides: Overrides;
      rounds: Array<{ loss: number; grads: Array<{ id: string; n: number }> }>;
    };

/** The spec as the journal and snapshots keep it (its state_dtype and state_seed included). */
export function specToJson(s: ResolvedSpec): SpecJson {
  return specJson(s);
}

const paramsJson = (decls: ParamDeclaration[]): ParamsJson =>
  decls.map((d) => ({ id: d.id, name: d.name, shape: d.shape, group: d.group }));

/** A failed write or fsync as the error a client gets: nothing was applied. */
function storageError(e: unknown, root: string, doing: string): MurError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new ResourceExhausted(
      `state dir ${root}: no space left (${code}) while ${doing}; nothing was applied: free space on that disk and send the same request again`,
      {
        reason: Reason.DiskFull,
      },
    );
  }
  return new Unavailable(
    `state dir ${root}: I/O error (${code ?? (e as Error).message}) while ${doing}; nothing was applied: send the same request again once the disk works`,
    {
      reason: Reason.DiskIO,
    },
  );
}

/** Writes `parts` at `pos` onward, however many calls it takes; the position after them. */
function writeAll(fd: number, parts: Buffer[], pos: number): number {
  for (const p of parts) {
    for (let off = 0; off < p.length;) {
      const n = io.write(fd, p.subarray(off), pos);
      off += n;
      pos += n;
    }
  }
  return pos;
}

/** A new file holding `parts`, on disk as the mode asks. */
function writeFile(file: string, parts: Buffer[], syncer: Syncer): void {
  const fd = fs.openSync(file, 'w', 0o600);
  try {
    writeAll(fd, parts, 0);
    syncer.file(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** `file` replaced by `parts` at once: a temporary file renamed over it, the directory synced. */
function writeAtomic(file: string, parts: Buffer[], syncer: Syncer): void {
  const tmp = `${file}.tmp`;
  try {
    writeFile(tmp, parts, syncer);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  syncer.dir(path.dirname(file));
}

function snapshotRecord(session: Session, seq: number): Buffer[] {
  const tensors: SlotTensor[] = [...session.exportTensors()];
  const h = session.header();
  const json: SnapshotJson = {
    session: session.id,
    spec: specToJson(h.spec),
    stepCounts: [...h.stepCounts],
    lastStep: h.lastStep,
    lastRequest: session.lastRequest,
    lastRefused: session.refusedUpTo,
    tensors: tensors.map((t) => ({ paramId: t.paramId, slot: t.slot, length: t.data.length })),
    params: paramsJson(session.declarations()),
  };
  return encodeRecord(
    Kind.Snapshot,
    seq,
    json as unknown as Record<string, unknown>,
    tensors.map((t) => t.data),
  );
}

/** The journal and snapshots of one session. */
class SessionFiles implements StepJournal {
  private fd: number;
  /** End of the last complete record. */
  private bytes: number;
  /** Bytes a failed write may have left past `bytes` (truncated before the next record). */
  private dirtyEnd: number;
  /** The last record's sequence number (the snapshot's when the journal is empty). */
  private seq: number;
  private compactAt: number;

  constructor(
    private readonly state: StateDir,
    readonly id: string,
    readonly dir: string,
    private readonly stateBytes: number,
    seq: number,
    validEnd: number,
  ) {
    this.fd = fs.openSync(path.join(dir, 'journal'), 'r+');
    this.seq = seq;
    this.bytes = validEnd;
    this.dirtyEnd = fs.fstatSync(this.fd).size;
    this.compactAt = this.threshold();
  }

  /** The journal size at which a new snapshot is written: four times the session's state (at least 4 MiB) past now. */
  private threshold(): number {
    return this.bytes + Math.max(4 * this.stateBytes, 4 << 20);
  }

  private doing(): string {
    return `writing the journal of session ${this.id}`;
  }

  private append(json: JournalJson, payloads: Float32Array[]): PendingRecord {
    const before = this.bytes;
    const root = this.state.root;
    try {
      if (this.dirtyEnd > before) {
        fs.ftruncateSync(this.fd, before); // what a failed write left: the next record must not follow it
        this.dirtyEnd = before;
      }
      const parts = encodeRecord(Kind.Journal, this.seq + 1, json, payloads);
      this.dirtyEnd = before + parts.reduce((a, p) => a + p.length, 0);
      this.bytes = writeAll(this.fd, parts, before);
    } catch (e) {
      this.truncate(before);
      throw storageError(e, root, this.doing());
    }
    this.seq += 1;
    const fd = this.fd;
    let cancelled = false;
    const fail = (e: unknown): never => {
      cancel();
      throw storageError(e, root, `forcing the journal of session ${this.id} to disk (fsync)`);
    };
    const cancel = () => {
      if (cancelled) return;
      cancelled = true;
      this.truncate(before);
      this.seq -= 1;
    };
    return {
      durable: () => this.state.syncer.journal(fd).catch(fail),
      durableSync: () => {
        try {
          this.state.syncer.journalSync(fd);
        } catch (e) {
          fail(e);
        }
      },
      cancel,
    };
  }

  /** The journal back to `n` bytes (a failure is remembered: the next record truncates first). */
  private truncate(n: number): void {
    this.bytes = n;
    try {
      fs.ftruncateSync(this.fd, n);
      this.dirtyEnd = n;
    } catch (e) {
      log('error', 'journal_truncate_failed', { session: this.id, message: (e as Error).message });
    }
  }

  step(step: number, grads: Array<{ id: string; data: Float32Array; rows?: Uint32Array }>, overrides: Overrides): PendingRecord {
    // A row-sparse gradient's rows go in the record's JSON, its values in the payload.
    const entry = (g: (typeof grads)[number]) => ({ id: g.id, n: g.data.length, ...(g.rows ? { rows: Array.from(g.rows) } : {}) });
    return this.append(
      { session: this.id, op: 'step', step, overrides, grads: grads.map(entry) },
      grads.map((g) => g.data),
    );
  }

  imported(header: Partial<SessionHeader> | undefined, tensors: SlotTensor[]): PendingRecord {
    const h: Extract<JournalJson, { op: 'import' }>['header'] = {};
    if (header?.spec) h.spec = specToJson(header.spec);
    if (header?.stepCounts) h.stepCounts = [...header.stepCounts];
    if (header?.lastStep !== undefined) h.lastStep = header.lastStep;
    return this.append(
      {
        session: this.id,
        op: 'import',
        header: h,
        tensors: tensors.map((t) => ({ paramId: t.paramId, slot: t.slot, length: t.data.length })),
      },
      tensors.map((t) => t.data),
    );
  }

  added(groups: Overrides, decls: ParamDeclaration[]): PendingRecord {
    return this.append(
      { session: this.id, op: 'add', groups, params: decls.map((d) => ({ ...paramsJson([d])[0], n: d.values ? d.values.length : -1 })) },
      decls.flatMap((d) => (d.values ? [d.values] : [])),
    );
  }

  refused(step: number): PendingRecord {
    return this.append({ session: this.id, op: 'refused', step }, []);
  }

  closureStep(step: number, overrides: Overrides, rounds: RoundInput[]): PendingRecord {
    // Each loss is a JSON number (a double, exactly: JSON.stringify writes the shortest exact form).
    const json = rounds.map((r) => ({ loss: r.loss, grads: r.grads.map((g) => ({ id: g.id, n: g.data.length })) }));
    return this.append(
      { session: this.id, op: 'lbfgs', step, overrides, rounds: json },
      rounds.flatMap((r) => r.grads.map((g) => g.data)),
    );
  }

  committed(session: Session): void {
    if (this.bytes >= this.compactAt) this.compact(session);
  }

  /**
   * A new snapshot of everything up to the last record, then the journal
   * restarts empty. A snapshot that cannot be written (a full disk) changes
   * nothing: the journal keeps every record and grows until one can.
   */
  compact(session: Session): void {
    try {
      writeAtomic(path.join(this.dir, 'snapshot'), snapshotRecord(session, this.seq), this.state.syncer);
    } catch (e) {
      log('warn', 'snapshot_failed', { session: this.id, dir: this.state.root, message: (e as Error).message });
      this.compactAt = this.threshold();
      return;
    }
    // Records up to the snapshot's are skipped at recovery: a failure here loses nothing.
    this.truncate(0);
    this.compactAt = this.threshold();
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

/** A session of the directory after recovery: served, or damaged (every call about it: DATA_LOSS). */
export type Recovered =
  | { session: Session; journal: StepJournal }
  | {
      id: string;
      damage: DataLoss;
      /** False when the session's tokens cannot be checked (it was created under another key). */
      checkToken: boolean;
    };

/** A session that failed a check: the message names the file and what failed. */
class Damage extends DataLoss {
  constructor(
    message: string,
    readonly checkToken = true,
  ) {
    super(message);
  }
}

const RESUME = 'restore it from your last checkpoint (load_state_dict into a new RemoteOptimizer)';

/** The state directory of a server. */
export class StateDir {
  private readonly files = new Map<string, SessionFiles>();
  readonly syncer: Syncer;
  private keyId = '';
  /** Why the key file was replaced at start-up, if it was. */
  private keyDamage: string | null = null;

  constructor(
    readonly root: string,
    fsync: FsyncMode = FSYNC_DEFAULT,
  ) {
    this.syncer = new Syncer(fsync);
    fs.mkdirSync(path.join(root, 'sessions'), { recursive: true, mode: 0o700 });
  }

  private get sessionsDir(): string {
    return path.join(this.root, 'sessions');
  }

  /**
   * The credentials key, created on first use and kept (0600). A key of the
   * unversioned format (32 raw bytes) is rewritten as a record; a damaged one
   * is set aside (key.damaged) and replaced: the sessions created under it
   * then answer DATA_LOSS, since their tokens can no longer be checked.
   */
  key(): Buffer {
    const file = path.join(this.root, 'key');
    const fresh = (why: string) => {
      const key = randomBytes(32);
      writeAtomic(file, encodeRecord(Kind.Key, 0, { key: 'credentials' }, [key]), this.syncer);
      log('info', 'state_dir_key', { dir: this.root, event: why });
      return key;
    };
    let key: Buffer;
    if (!fs.existsSync(file)) {
      key = fresh('created');
    } else {
      const buf = fs.readFileSync(file);
      if (buf.length === 32 && buf.readUInt32LE(0) !== MAGIC) {
        key = buf;
        writeAtomic(file, encodeRecord(Kind.Key, 0, { key: 'credentials' }, [key]), this.syncer);
        log('info', 'state_dir_key', { dir: this.root, event: 'rewritten in format 2' });
      } else {
        try {
          const r = readOnly(buf, Kind.Key);
          if (r.payload.length !== 32) throw new RecordDamage(0, `a key of ${r.payload.length} bytes, expected 32`);
          key = Buffer.from(r.payload);
        } catch (e) {
          if (!(e instanceof RecordDamage)) throw e;
          this.keyDamage = `${file}: ${e.message}`;
          fs.renameSync(file, `${file}.damaged`);
          log('error', 'state_dir_key_damaged', { dir: this.root, message: this.keyDamage, kept: `${file}.damaged` });
          key = fresh('replaced (the damaged key is kept as key.damaged)');
        }
      }
    }
    this.keyId = createHash('sha256').update(key).digest('hex').slice(0, 16);
    return key;
  }

  /** A new session's files: meta, a first snapshot and an empty journal, made in a hidden directory and renamed into place. */
  created(session: Session, stateBytes: number): StepJournal {
    const dir = path.join(this.sessionsDir, session.id);
    const tmp = path.join(this.sessionsDir, `.new-${session.id}`);
    try {
      fs.mkdirSync(tmp, { mode: 0o700 });
      writeFile(
        path.join(tmp, 'meta'),
        encodeRecord(Kind.Meta, 0, { session: session.id, key: this.keyId, created: new Date().toISOString() }),
        this.syncer,
      );
      writeFile(path.join(tmp, 'snapshot'), snapshotRecord(session, 0), this.syncer);
      writeFile(path.join(tmp, 'journal'), [], this.syncer);
      this.syncer.dir(tmp);
      fs.renameSync(tmp, dir);
      this.syncer.dir(this.sessionsDir);
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw storageError(e, this.root, `creating the files of session ${session.id}`);
    }
    const f = new SessionFiles(this, session.id, dir, stateBytes, 0, 0);
    this.files.set(session.id, f);
    return f;
  }

  /** The session is gone for good: its files too. */
  removed(id: string): void {
    this.files.get(id)?.close();
    this.files.delete(id);
    try {
      fs.rmSync(path.join(this.sessionsDir, id), { recursive: true, force: true });
      this.syncer.dir(this.sessionsDir);
    } catch (e) {
      log('error', 'session_files_not_removed', { session: id, message: (e as Error).message });
    }
  }

  /**
   * Every session of the directory, as it was after its last acknowledged
   * change, or damaged: `make` builds an empty session from the
   * declarations, the snapshot is imported, the journal replayed.
   */
  *recover(
    make: (id: string, spec: ResolvedSpec, decls: ParamDeclaration[]) => { session: Session; stateBytes: number },
  ): Generator<Recovered> {
    for (const id of fs.readdirSync(this.sessionsDir).sort()) {
      const dir = path.join(this.sessionsDir, id);
      if (id.startsWith('.')) {
        fs.rmSync(dir, { recursive: true, force: true }); // a creation that never completed (never acknowledged)
        continue;
      }
      let made: Session | null = null;
      try {
        const r = this.recoverOne(id, dir, (spec, decls) => {
          const m = make(id, spec, decls);
          made = m.session;
          return m;
        });
        const f = new SessionFiles(this, id, dir, r.stateBytes, r.seq, r.validEnd);
        f.compact(r.session); // the recovered state becomes the new base (if it can be written)
        this.files.set(id, f);
        r.session.resumed();
        log('info', 'session_recovered', {
          session: id,
          lastStep: r.session.header().lastStep,
          replayed: r.replayed,
          tornBytes: r.tornBytes,
        });
        yield { session: r.session, journal: f };
      } catch (e) {
        (made as Session | null)?.dispose();
        const damage =
          e instanceof Damage ? e : new Damage(`session '${id}' in ${dir} cannot be recovered: ${(e as Error).message}; ${RESUME}`);
        log('error', 'session_damaged', { session: id, message: damage.message });
        yield { id, damage, checkToken: damage.checkToken };
      }
    }
  }

  private recoverOne(
    id: string,
    dir: string,
    make: (spec: ResolvedSpec, decls: ParamDeclaration[]) => { session: Session; stateBytes: number },
  ): { session: Session; stateBytes: number; seq: number; validEnd: number; replayed: number; tornBytes: number } {
    const damage = (file: string, what: string, checkToken = true) =>
      new Damage(
        `session '${id}': ${path.join(dir, file)}: ${what}; the session's state cannot be trusted, so it is not served: ${RESUME}`,
        checkToken,
      );
    if (!fs.existsSync(path.join(dir, 'meta')) && fs.existsSync(path.join(dir, 'meta.json'))) {
      throw new Damage(
        `session '${id}': ${dir} is in the unversioned state-dir format of mur before format 2 (meta.json; records without checksums), which this server does not read: ` +
          `it cannot verify it. ${RESUME[0].toUpperCase()}${RESUME.slice(1)}, then remove ${dir}`,
      );
    }
    const read = (file: string): Buffer => {
      try {
        return fs.readFileSync(path.join(dir, file));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        throw damage(file, code === 'ENOENT' ? 'missing' : `cannot be read (${code ?? (e as Error).message})`);
      }
    };
    const checked = <T>(file: string, fn: () => T): T => {
      try {
        return fn();
      } catch (e) {
        if (e instanceof RecordDamage) throw damage(file, e.message);
        throw e;
      }
    };
    const owner = (file: string, r: Frame) => {
      if (r.json.session !== id) throw damage(file, `record at byte ${r.start} belongs to session ${JSON.stringify(r.json.session)}`);
    };

    const meta = checked('meta', () => readOnly(read('meta'), Kind.Meta));
    owner('meta', meta);
    if (meta.json.key !== this.keyId) {
      const why = this.keyDamage
        ? `the key it was created under was damaged (${this.keyDamage}) and replaced`
        : `${path.join(this.root, 'key')} is not the key it was created under`;
      throw damage('meta', `${why}: its tokens cannot be checked`, false);
    }
    const snap = checked('snapshot', () => readOnly(read('snapshot'), Kind.Snapshot));
    owner('snapshot', snap);
    const buf = read('journal');
    const records: Frame[] = [];
    let at = 0;
    for (;;) {
      const r = checked('journal', () => readRecord(buf, at));
      if (r === 'torn') break;
      if (r.kind !== Kind.Journal) throw damage('journal', `record at byte ${r.start} is of kind ${r.kind}, not a journal record`);
      owner('journal', r);
      const prev = records.at(-1);
      if (prev && r.seq !== prev.seq + 1) throw damage('journal', `record at byte ${r.start} is number ${r.seq}, after number ${prev.seq}`);
      records.push(r);
      at = r.end;
    }
    let validEnd = at;
    const base = snap.seq;
    const live = records.filter((r) => r.seq > base);
    if (live.length > 0 && live[0].seq !== base + 1) {
      throw damage(
        'journal',
        `its records continue from number ${live[0].seq - 1}, but the snapshot holds the session up to record ${base} (one of the two is older than the other)`,
      );
    }

    const s = snap.json as unknown as SnapshotJson;
    const groups = new Set(s.params.map((p) => p.group));
    let session: Session;
    let stateBytes: number;
    try {
      ({ session, stateBytes } = make(
        resolveSpec(s.spec, groups),
        s.params.map((p) => ({ ...p, values: null })),
      ));
      let off = 0;
      const tensors = s.tensors.map((t) => {
        const data = floatsOf(snap.payload, off, t.length);
        off += t.length;
        return { paramId: t.paramId, slot: t.slot, data };
      });
      session.importState({ spec: resolveSpec(s.spec, groups), stepCounts: new Map(s.stepCounts), lastStep: s.lastStep }, tensors);
      session.lastRequest = s.lastRequest;
      session.refusedUpTo = s.lastRefused;
    } catch (e) {
      throw damage('snapshot', `its content is refused: ${(e as Error).message}`);
    }
    let seq = base;
    for (const [i, r] of live.entries()) {
      const j = r.json as unknown as JournalJson;
      try {
        replay(session, j, r.payload);
      } catch (e) {
        if (i === live.length - 1 && j.op === 'step' && e instanceof InvalidArgument) {
          // The last record, refused (a non-finite gradient found by the fused scan): the kill fell
          // between writing it and truncating it away. That step was refused to its client.
          log('warn', 'journal_record_refused', { session: id, step: j.step, message: (e as Error).message });
          validEnd = r.start;
          break;
        }
        throw damage(
          'journal',
          `record ${r.seq} (${j.op}${j.op === 'step' ? ` ${j.step}` : ''}) at byte ${r.start} is refused on replay: ${(e as Error).message}`,
        );
      }
      seq = r.seq;
    }
    return { session, stateBytes, seq, validEnd, replayed: seq - base, tornBytes: buf.length - at };
  }

  close(): void {
    for (const f of this.files.values()) f.close();
    this.files.clear();
  }
}

/** Applies one journal record to a recovering session. */
function replay(session: Session, j: JournalJson, payload: Buffer): void {
  let off = 0;
  const take = (n: number) => {
    const data = floatsOf(payload, off, n);
    off += n;
    return data;
  };
  const groups = () => new Set(session.declarations().map((d) => d.group));
  switch (j.op) {
    case 'step':
      session.step(
        j.step,
        j.grads.map((g) => ({ id: g.id, data: take(g.n), ...(g.rows ? { rows: Uint32Array.from(g.rows) } : {}) })),
        j.overrides,
      );
      return;
    case 'import': {
      const h = j.header;
      session.importState(
        {
          ...(h.spec ? { spec: resolveSpec(h.spec, groups()) } : {}),
          ...(h.stepCounts ? { stepCounts: new Map(h.stepCounts) } : {}),
          ...(h.lastStep !== undefined ? { lastStep: h.lastStep } : {}),
        },
        j.tensors.map((t) => ({ paramId: t.paramId, slot: t.slot, data: take(t.length) })),
      );
      return;
    }
    case 'refused':
      session.refusedUpTo = j.step;
      return;
    case 'lbfgs':
      session.replayClosureStep(
        j.step,
        j.overrides,
        j.rounds.map((r) => ({ loss: r.loss, grads: r.grads.map((g) => ({ id: g.id, data: take(g.n) })) })),
      );
      return;
    case 'add':
      session.addParameters(
        j.groups,
        j.params.map((p) => ({ id: p.id, name: p.name, shape: p.shape, group: p.group, values: p.n >= 0 ? take(p.n) : null })),
      );
      return;
    default:
      throw new Error(`unknown journal operation ${JSON.stringify((j as { op: unknown }).op)}`);
  }
}
