// When --state-dir's writes are forced to disk (--fsync never|always|interval=MS).
//
//   never        nothing is fsynced: an acknowledged step survives a crash of
//                the server process (the page cache keeps it), not a power cut
//                or kernel crash.
//   always       each journal record is fsynced before the step is applied
//                and answered; snapshots before their rename, and the
//                directory after it: an acknowledged step survives a power cut.
//   interval=MS  group commit: the journal records written in a window of MS
//                milliseconds are fsynced together (one fdatasync per session's
//                journal per window, issued at once, which the file system's
//                own journal commits together), and each step waits for it
//                before it is applied and answered: the same guarantee as
//                always, up to MS more latency per step.
//
// In the two fsyncing modes a directory is fsynced wherever a file in it is
// created, renamed or removed, so the name survives with the data.
import * as fs from 'fs';

export type FsyncMode = { kind: 'never' } | { kind: 'always' } | { kind: 'interval'; ms: number };

export const FSYNC_DEFAULT: FsyncMode = { kind: 'always' };

/** "never", "always", "interval=MS" (MS a positive integer, at most 1000). */
export function parseFsync(v: string | undefined): FsyncMode {
  if (v === 'never' || v === 'always') return { kind: v };
  const m = /^interval=(\d+)$/.exec(v ?? '');
  const ms = m ? Number(m[1]) : NaN;
  if (!(ms >= 1 && ms <= 1000))
    throw new Error(`--fsync: ${JSON.stringify(v ?? null)} is not never, always or interval=MS (MS from 1 to 1000)`);
  return { kind: 'interval', ms };
}

export function fsyncName(m: FsyncMode): string {
  return m.kind === 'interval' ? `interval=${m.ms}` : m.kind;
}

/**
 * The file-system calls the state directory makes, replaceable by tests (a
 * failing disk). A journal record needs fdatasync only (its data and the
 * file's size, not its times); snapshots and directories get fsync.
 */
export const io = {
  write: (fd: number, buf: Uint8Array, position: number): number => fs.writeSync(fd, buf, 0, buf.length, position),
  datasync: (fd: number, cb: (e: NodeJS.ErrnoException | null) => void): void => fs.fdatasync(fd, cb),
  datasyncSync: (fd: number): void => fs.fdatasyncSync(fd),
  fsyncSync: (fd: number): void => fs.fsyncSync(fd),
};

export class Syncer {
  private waiting = new Map<number, Array<{ resolve(): void; reject(e: Error): void }>>();
  private timer: NodeJS.Timeout | null = null;

  constructor(readonly mode: FsyncMode = FSYNC_DEFAULT) {}

  get syncs(): boolean {
    return this.mode.kind !== 'never';
  }

  /** A journal record was written to `fd`: resolves when it is on disk as the mode asks. */
  journal(fd: number): Promise<void> {
    switch (this.mode.kind) {
      case 'never':
        return Promise.resolve();
      case 'always':
        return new Promise((resolve, reject) => io.datasync(fd, (e) => (e ? reject(e) : resolve())));
      case 'interval': {
        const ms = this.mode.ms;
        return new Promise((resolve, reject) => {
          const list = this.waiting.get(fd) ?? [];
          list.push({ resolve, reject });
          this.waiting.set(fd, list);
          this.timer ??= setTimeout(() => this.flush(), ms);
        });
      }
    }
  }

  /** The same, blocking (records written outside a step's async path: ImportState, AddParameters). */
  journalSync(fd: number): void {
    if (this.syncs) io.datasyncSync(fd);
  }

  /** A file about to be renamed into place, or just created. */
  file(fd: number): void {
    if (this.syncs) io.fsyncSync(fd);
  }

  /** A directory whose entries changed. */
  dir(dir: string): void {
    if (!this.syncs) return;
    const fd = fs.openSync(dir, 'r');
    try {
      io.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  /** One fsync per journal with records waiting, then every waiter answered. */
  private flush(): void {
    this.timer = null;
    const batch = this.waiting;
    this.waiting = new Map();
    for (const [fd, list] of batch) {
      io.datasync(fd, (e) => {
        for (const w of list) {
          if (e) w.reject(e);
          else w.resolve();
        }
      });
    }
  }
}
