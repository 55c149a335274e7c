// The finiteness scan (and replay digest) with and without its prefetch
// (native/src/prefetch.h): median ms of the addon's scan over n floats in the
// engine's huge-page memory and in an arena memfd, on 1 and 2 threads. The
// prefetch is chosen once per process, so each side runs in a child process
// (MUR_SCAN_PREFETCH=1 or 0), the sides alternating for ROUNDS rounds.
//   node dist/bench/scan.js [n ...]     (default 4000000 64000000; ROUNDS=4, REPS=9)
import { execFileSync } from 'child_process';
import { loadNative } from '../src/engine/native';

type Row = { prefetch: boolean; threads: number; n: number; huge: number; memfd: number };

function child(n: number, reps: number): void {
  const a = loadNative();
  if (!a) throw new Error('the native engine addon did not load');
  const huge = a.allocFloats(n);
  const { fd, buffer } = a.arenaCreate(n * 4);
  const arena = new Float32Array(buffer, 0, n);
  for (let i = 0; i < n; i++) huge[i] = arena[i] = (i % 1000) * 1e-3;
  const rows: Row[] = [];
  for (const threads of [1, 2]) {
    a.setThreads(threads);
    const ms = (x: Float32Array) => {
      const t: number[] = [];
      for (let r = 0; r < reps; r++) {
        const t0 = process.hrtime.bigint();
        a.scan(x);
        t.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
      return t.sort((p, q) => p - q)[reps >> 1];
    };
    rows.push({ prefetch: a.describe().scanPrefetch, threads, n, huge: ms(huge), memfd: ms(arena) });
  }
  a.arenaCloseFd(fd);
  console.log(JSON.stringify(rows));
}

const median = (xs: number[]) => {
  const s = [...xs].sort((p, q) => p - q);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function main(): void {
  if (process.argv[2] === '--child') return child(Number(process.argv[3]), Number(process.argv[4]));
  const sizes = process.argv.slice(2).map(Number);
  const rounds = Number(process.env.ROUNDS ?? 4),
    reps = Number(process.env.REPS ?? 9);
  const got = new Map<string, number[]>();
  for (const n of sizes.length ? sizes : [4000000, 64000000]) {
    for (let r = 0; r < rounds; r++) {
      for (const on of r % 2 ? ['0', '1'] : ['1', '0']) {
        const out = execFileSync(process.execPath, [__filename, '--child', String(n), String(reps)], {
          env: { ...process.env, MUR_SCAN_PREFETCH: on },
          encoding: 'utf8',
        });
        for (const row of JSON.parse(out) as Row[]) {
          for (const mem of ['huge', 'memfd'] as const) {
            const k = `${row.n} ${row.threads} ${mem} ${row.prefetch}`;
            got.set(k, [...(got.get(k) ?? []), row[mem]]);
          }
        }
      }
    }
  }
  console.log('| floats | thr | memory | prefetch ms | none ms | none / prefetch |\n| --- | --- | --- | --- | --- | --- |');
  for (const k of got.keys()) {
    if (!k.endsWith(' true')) continue;
    const [n, thr, mem] = k.split(' ');
    const on = median(got.get(k)!),
      off = median(got.get(`${n} ${thr} ${mem} false`)!);
    console.log(`| ${n} | ${thr} | ${mem} | ${on.toFixed(3)} | ${off.toFixed(3)} | ${(off / on).toFixed(2)} |`);
  }
}

main();
