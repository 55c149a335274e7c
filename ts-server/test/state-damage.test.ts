// The damage harness of --state-dir (docs/state-dir.md): a directory with
// three sessions (steps, an ImportState and an AddParameters in their
// journals, snapshots from a restart) is damaged in many ways, one at a time:
// bit flips at every field of the record header, at record boundaries, in
// the JSON header, padding, payload and checksums of every file kind;
// truncation at and between record boundaries; zeroed 4 KiB pages; a file
// replaced by its own older copy; a missing file; a file of another session;
// and torn tails of a step that was never acknowledged. After each, the
// directory is recovered (StateDir + SessionStore, the server's start-up
// path) and every session's client, which was told of step N, sends step N+1:
// the session either answers it with a state equal bit for bit to an
// undamaged run's, or answers DATA_LOSS; every other session is served
// exactly. Prints the counts.
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DataLoss } from '../src/errors';
import { resolveSpec } from '../src/registry';
import { Credentials } from '../src/session/credentials';
import { StateDir } from '../src/session/durable';
import { readRecord, type Frame } from '../src/session/records';
import { Session } from '../src/session/session';
import { NO_LIMITS, SessionStore } from '../src/session/store';

const spec = { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.01, lr_out: 0.01, gamma: 0.5 }, groups: {} };
const NEVER = { kind: 'never' } as const;

type Op =
  | { op: 'step'; k: number; grads: Array<{ id: string; data: Float32Array }>; overrides?: Record<string, Record<string, unknown>> }
  | { op: 'import'; tensors: Array<{ paramId: string; slot: string; data: Float32Array }> }
  | {
      op: 'add';
      groups: Record<string, Record<string, unknown>>;
      decls: Array<{ id: string; name: string; shape: number[]; group: string; values: Float32Array }>;
    }
  | { op: 'restart' }
  | { op: 'save'; as: string };

const wave = (n: number, k: number, f = 0.1) => new Float32Array(n).map((_, i) => Math.cos(i * f + k) * 0.1);
const g = (sizes: Record<string, number>, k: number) => Object.entries(sizes).map(([id, n], j) => ({ id, data: wave(n, k + j) }));

interface Plan {
  name: string;
  params: Array<{ id: string; n: number }>;
  ops: Op[];
  /** Gradients of the step after the last, per parameter. */
  next: Record<string, number>;
}

// A: one large parameter (several 4 KiB pages per record); B: ImportState and AddParameters in its journal; C: small.
const PLANS: Plan[] = [
  {
    name: 'A',
    params: [{ id: 'w', n: 3000 }],
    ops: [
      ...[1, 2, 3].map((k): Op => ({ op: 'step', k, grads: g({ w: 3000 }, k), overrides: k === 2 ? { '': { lr: 0.02 } } : undefined })),
      { op: 'save', as: 'phase1' },
      { op: 'restart' },
      ...[4, 5].map((k): Op => ({ op: 'step', k, grads: g({ w: 3000 }, k) })),
      { op: 'save', as: 'step5' },
      { op: 'step', k: 6, grads: g({ w: 3000 }, 6) },
    ],
    next: { w: 3000 },
  },
  {
    name: 'B',
    params: [
      { id: 'u', n: 40 },
      { id: 'v', n: 24 },
    ],
    ops: [
      ...[1, 2, 3].map((k): Op => ({ op: 'step', k, grads: g({ u: 40, v: 24 }, k) })),
      { op: 'restart' },
      { op: 'step', k: 4, grads: g({ u: 40, v: 24 }, 4) },
      { op: 'import', tensors: [{ paramId: 'u', slot: '', data: wave(40, 9, 0.3) }] },
      {
        op: 'add',
        groups: { extra: { lr: 0.005 } },
        decls: [{ id: 'z', name: 'z', shape: [16], group: 'extra', values: wave(16, 3, 0.7) }],
      },
      ...[5, 6].map((k): Op => ({ op: 'step', k, grads: g({ u: 40, v: 24, z: 16 }, k) })),
    ],
    next: { u: 40, v: 24, z: 16 },
  },
  {
    name: 'C',
    params: [{ id: 'c', n: 10 }],
    ops: [
      ...[1, 2, 3].map((k): Op => ({ op: 'step', k, grads: g({ c: 10 }, k) })),
      { op: 'restart' },
      ...[4, 5, 6].map((k): Op => ({ op: 'step', k, grads: g({ c: 10 }, k) })),
    ],
    next: { c: 10 },
  },
];
const N = 6; // every plan's last step

const declsOf = (p: Plan) => p.params.map((q, j) => ({ id: q.id, name: q.id, shape: [q.n], group: '', values: wave(q.n, 100 + j, 0.37) }));

async function apply(s: Session, o: Op): Promise<void> {
  if (o.op === 'step') await s.stepAsync(o.k, o.grads, o.overrides ?? {});
  else if (o.op === 'import') await s.exclusive(() => s.importState(undefined, o.tensors));
  else if (o.op === 'add') await s.exclusive(() => s.addParameters(o.groups, o.decls));
}

/** Every tensor and the header of a session, as one comparable string. */
function image(s: Session): string {
  const h = s.header();
  const parts = [`last=${h.lastStep}`, `counts=${JSON.stringify([...h.stepCounts])}`];
  for (const t of s.exportTensors())
    parts.push(`${t.paramId}/${t.slot}=${Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('hex')}`);
  return parts.join('\n');
}

function open(root: string): { dir: StateDir; store: SessionStore } {
  const dir = new StateDir(root, NEVER);
  const store = new SessionStore(NO_LIMITS, new Credentials(dir.key()), Date.now, dir);
  store.recover();
  return { dir, store };
}

interface Built {
  root: string;
  ids: string[];
  tokens: string[];
  /** Copies of a session's files at a named moment: saves[plan][as] = dir. */
  saves: Map<string, string>;
  /** The image each session must have after step N+1. */
  expected: string[];
  /** The bytes of session A's journal record for step N+1 (the torn tail of an unacknowledged step). */
  nextRecordA: Buffer;
}

async function build(base: string): Promise<Built> {
  const root = path.join(base, 'pristine');
  const saves = new Map<string, string>();
  let { store } = open(root);
  const ids: string[] = [];
  const tokens: string[] = [];
  for (const p of PLANS) {
    const { session, token } = store.create(resolveSpec(spec), declsOf(p));
    ids.push(session.id);
    tokens.push(token);
  }
  // Each plan's ops before its restart, a restart of the whole directory, the ops after it.
  for (const phase of [0, 1]) {
    if (phase === 1) {
      store.closeAll();
      ({ store } = open(root));
    }
    for (const [i, p] of PLANS.entries()) {
      const at = p.ops.findIndex((o) => o.op === 'restart');
      for (const o of phase === 0 ? p.ops.slice(0, at) : p.ops.slice(at + 1)) {
        if (o.op === 'save') {
          const to = path.join(base, `save-${p.name}-${o.as}`);
          fs.cpSync(path.join(root, 'sessions', ids[i]), to, { recursive: true });
          saves.set(`${p.name}/${o.as}`, to);
        } else {
          await apply(store.get(ids[i], tokens[i]), o);
        }
      }
    }
  }
  store.closeAll();
  // The reference: the same ops on sessions without a state directory, then step N+1.
  const expected: string[] = [];
  for (const p of PLANS) {
    const s = new Session('ref', resolveSpec(spec), declsOf(p));
    for (const o of p.ops) await apply(s, o);
    await s.stepAsync(N + 1, g(p.next, N + 1));
    expected.push(image(s));
    s.dispose();
  }
  // Session A's record of step N+1, as a restarted server writes it (its journal then holds only that record).
  const scratch = path.join(base, 'scratch');
  fs.cpSync(root, scratch, { recursive: true });
  const o = open(scratch);
  await o.store.get(ids[0], tokens[0]).stepAsync(N + 1, g(PLANS[0].next, N + 1));
  o.store.closeAll();
  const nextRecordA = fs.readFileSync(path.join(scratch, 'sessions', ids[0], 'journal'));
  return { root, ids, tokens, saves, expected, nextRecordA };
}

/** The records of a file, as the server's reader finds them. */
function records(file: string): Frame[] {
  const buf = fs.readFileSync(file);
  const out: Frame[] = [];
  for (let at = 0; ;) {
    const r = readRecord(buf, at);
    if (r === 'torn') return out;
    out.push(r);
    at = r.end;
  }
}

/** Byte offsets worth flipping in a record: each header field, the JSON header's first, middle and last byte, padding, payload, the boundary. */
function flipPoints(r: Frame, buf: Buffer): Array<[number, string]> {
  const jsonLen = buf.readUInt32LE(r.start + 8);
  const payloadAt = r.end - r.payload.length;
  const pts: Array<[number, string]> = [
    [0, 'magic'],
    [4, 'version'],
    [6, 'kind'],
    [8, 'JSON length'],
    [12, 'reserved'],
    [16, 'payload length'],
    [24, 'sequence number'],
    [32, 'header checksum'],
    [36, 'body checksum'],
    [40, 'JSON first byte'],
    [40 + (jsonLen >> 1), 'JSON middle'],
    [40 + jsonLen - 1, 'JSON last byte'],
  ].map(([o, w]) => [r.start + (o as number), w as string]);
  if (payloadAt > r.start + 40 + jsonLen) pts.push([r.start + 40 + jsonLen, 'padding']);
  if (r.payload.length > 0)
    pts.push(
      [payloadAt, 'payload first byte'],
      [payloadAt + (r.payload.length >> 1), 'payload middle'],
      [r.end - 1, 'last byte (record boundary)'],
    );
  return pts;
}

type Outcome = 'recovered' | 'data_loss';
interface Case {
  name: string;
  /** Index of the damaged session, or -1: the key (every session). */
  target: number;
  expect: Outcome;
  damage(root: string): void;
}

function cases(b: Built): Case[] {
  const out: Case[] = [];
  const file = (root: string, i: number, f: string) => path.join(root, 'sessions', b.ids[i], f);
  const keyFile = (root: string) => path.join(root, 'key');
  const mutate = (f: string, fn: (buf: Buffer) => Buffer) => fs.writeFileSync(f, fn(fs.readFileSync(f)));
  const kinds: Array<{ f: string; target: number; of: (root: string) => string }> = [
    { f: 'key', target: -1, of: keyFile },
    ...[0, 1].flatMap((i) =>
      ['meta', 'snapshot', 'journal'].map((f) => ({ f: `${PLANS[i].name}/${f}`, target: i, of: (root: string) => file(root, i, f) })),
    ),
  ];
  for (const k of kinds) {
    const src = k.of(b.root);
    const buf = fs.readFileSync(src);
    for (const r of records(src)) {
      for (const [at, what] of flipPoints(r, buf)) {
        out.push({
          name: `flip bit ${at % 8} of ${k.f} byte ${at} (${what} of the record at ${r.start})`,
          target: k.target,
          expect: 'data_loss',
          damage: (root) => mutate(k.of(root), (x) => ((x[at] ^= 1 << (at % 8)), x)),
        });
      }
    }
    // Truncation at each record boundary before the end, and inside each record.
    const cuts = new Set<number>();
    for (const r of records(src)) {
      cuts.add(r.start);
      cuts.add(r.start + 20);
      cuts.add(r.end - r.payload.length + (r.payload.length >> 1));
      cuts.add(r.end - 1);
    }
    for (const n of [...cuts].filter((n) => n < buf.length).sort((x, y) => x - y)) {
      out.push({
        name: `truncate ${k.f} to ${n} of ${buf.length} bytes`,
        target: k.target,
        expect: 'data_loss',
        damage: (root) => fs.truncateSync(k.of(root), n),
      });
    }
    for (let page = 0; page * 4096 < buf.length; page++) {
      out.push({
        name: `zero 4 KiB page ${page} of ${k.f}`,
        target: k.target,
        expect: 'data_loss',
        damage: (root) => mutate(k.of(root), (x) => (x.fill(0, page * 4096, Math.min(x.length, (page + 1) * 4096)), x)),
      });
    }
    out.push({ name: `${k.f} missing`, target: k.target, expect: 'data_loss', damage: (root) => fs.rmSync(k.of(root)) });
  }
  // Older copies of A's own files; files of C in A's place.
  const older = (as: string, f: string) => path.join(b.saves.get(`A/${as}`)!, f);
  for (const [as, f] of [
    ['phase1', 'snapshot'],
    ['phase1', 'journal'],
    ['step5', 'journal'],
  ]) {
    out.push({
      name: `A/${f} replaced by its copy at ${as}`,
      target: 0,
      expect: 'data_loss',
      damage: (root) => fs.copyFileSync(older(as, f), file(root, 0, f)),
    });
  }
  for (const f of ['meta', 'snapshot', 'journal']) {
    out.push({
      name: `A/${f} replaced by C's`,
      target: 0,
      expect: 'data_loss',
      damage: (root) => fs.copyFileSync(file(root, 2, f), file(root, 0, f)),
    });
  }
  // A torn tail: step N+1 written in part (the server was killed mid-write, the step never acknowledged), or whole (killed before replying).
  const rec = b.nextRecordA;
  for (const n of [1, 20, 39, 40, 41, 100, rec.length >> 1, rec.length - 1, rec.length]) {
    out.push({
      name: `A/journal + ${n} of ${rec.length} bytes of the unacknowledged step ${N + 1}`,
      target: 0,
      expect: 'recovered',
      damage: (root) => fs.appendFileSync(file(root, 0, 'journal'), rec.subarray(0, n)),
    });
  }
  out.push({
    name: 'A/journal + 4 KiB of zeros (an extended file whose data never landed)',
    target: 0,
    expect: 'recovered',
    damage: (root) => fs.appendFileSync(file(root, 0, 'journal'), Buffer.alloc(4096)),
  });
  return out;
}

/** The client of session i, told of step N, sends step N+1. */
async function probe(store: SessionStore, b: Built, i: number): Promise<{ outcome: Outcome; message?: string }> {
  try {
    const s = store.get(b.ids[i], b.tokens[i]);
    // A retry of the unacknowledged step whose record is whole replays it: either way, the state is step N+1's.
    await s.stepAsync(N + 1, g(PLANS[i].next, N + 1));
    assert.equal(image(s), b.expected[i], `session ${PLANS[i].name}: the state after step ${N + 1} equals an undamaged run's, bit for bit`);
    return { outcome: 'recovered' };
  } catch (e) {
    if (!(e instanceof DataLoss)) throw e;
    assert.throws(() => store.get(b.ids[i], b.tokens[i]), DataLoss, 'and every later call');
    return { outcome: 'data_loss', message: e.message };
  }
}

describe('--state-dir damage harness', () => {
  let base: string;
  before(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-damage-'));
  });
  after(() => fs.rmSync(base, { recursive: true, force: true }));

  it('every damage: the session recovered exactly or DATA_LOSS naming what failed, every other session exact', async function () {
    this.timeout(120_000);
    const b = await build(base);
    const list = cases(b);
    const counts = { cases: 0, recovered: 0, data_loss: 0 };
    const t0 = Date.now();
    for (const c of list) {
      const root = path.join(base, 'case');
      fs.rmSync(root, { recursive: true, force: true });
      fs.cpSync(b.root, root, { recursive: true });
      c.damage(root);
      const { store } = open(root);
      let outcomeOfCase: Outcome | null = null;
      try {
        for (let i = 0; i < PLANS.length; i++) {
          const { outcome, message } = await probe(store, b, i).catch((e: Error) => {
            throw new Error(`${c.name}: session ${PLANS[i].name}: ${e.message}`);
          });
          const mine = c.target === -1 || c.target === i;
          assert.equal(outcome, mine ? c.expect : 'recovered', `${c.name}: session ${PLANS[i].name} ${message ?? ''}`);
          if (!mine) continue;
          outcomeOfCase = outcome;
          if (outcome === 'data_loss') assert.match(message!, /restore it from your last checkpoint \(load_state_dict/, c.name);
          if (outcome === 'data_loss' && /^flip|missing|replaced by C/.test(c.name) && c.target >= 0) {
            // A check that failed on a file names the file.
            const f = c.name.match(/[ABC]\/(meta|snapshot|journal)/)![1];
            assert.match(message!, new RegExp(`${b.ids[c.target]}/${f}: `), `${c.name}: ${message}`);
          }
        }
      } finally {
        store.closeAll();
      }
      counts.cases++;
      counts[outcomeOfCase!]++;
    }
    process.stdout.write(`      damage harness: ${JSON.stringify(counts)} in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    assert.ok(counts.recovered > 0 && counts.data_loss > 0);
  });
});
