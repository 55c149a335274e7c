// The mur-server CLI as a user runs it: --help, a bad flag or --config (exit 2,
// naming the field), and a real start on port 0 with SIGTERM shutdown.
import { strict as assert } from 'assert';
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as readline from 'readline';
import * as grpc from '@grpc/grpc-js';
import { OptimizerClient } from '../generated/mur/v1/optimizer';
import { parseArgs } from '../src/cli';

const CLI = path.join(__dirname, '../src/cli.js');

/** A JSON line mur-server writes (stdout: listening; stderr: log events); the fields read here. */
interface ServerLine {
  event: string;
  backend?: string;
  port?: number;
  socket?: string;
}
const env = { ...process.env, MUR_LOG: 'info' };

describe('mur-server CLI', () => {
  it('--help describes every flag', () => {
    const r = spawnSync(process.execPath, [CLI, '--help'], { encoding: 'utf8', env });
    assert.equal(r.status, 0);
    for (const f of [
      '--port',
      '--socket',
      '--backend',
      '--threads',
      '--config',
      '--max-sessions',
      '--max-bytes',
      '--session-idle-timeout',
      '--fsync',
      '--max-streams',
      '--exit-with-stdin',
      '--max-message-mb',
      '--chunk-kb',
    ]) {
      assert.ok(r.stdout.includes(f), f);
    }
  });

  it('keeps the default chunk within half of a smaller --max-message-mb, and an explicit one that fits as given', () => {
    const small = parseArgs(['--max-message-mb', '1']);
    const fits = parseArgs(['--max-message-mb', '1', '--chunk-kb', '256']);
    const dflt = parseArgs([]);
    assert.ok(typeof small === 'object' && typeof fits === 'object' && typeof dflt === 'object');
    assert.equal(small.chunkBytes, 512 * 1024); // a streamed chunk and its framing stay within the 1 MiB limit
    assert.equal(fits.chunkBytes, 256 * 1024);
    assert.equal(dflt.chunkBytes, 1024 * 1024); // 64 MiB messages: the 1 MiB default is kept
  });

  it('--version prints the package version', () => {
    const r = spawnSync(process.execPath, [CLI, '--version'], { encoding: 'utf8', env });
    assert.equal(r.status, 0);
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '../../package.json'), 'utf8')) as { version: string };
    assert.equal(r.stdout.trim(), `mur-server ${pkg.version}`);
  });

  it('refuses a bad flag value and a bad --config with exit code 2, naming the field and value', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-cli-'));
    const cfg = path.join(dir, 'spec.json');
    fs.writeFileSync(cfg, JSON.stringify({ optimizer: 'adam', rule: 'hybrid', defaults: { lr_in: -1 } }));
    const bad = spawnSync(process.execPath, [CLI, '--config', cfg], { encoding: 'utf8', env });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /defaults\.lr_in: -1 must be >= 0/);
    const port = spawnSync(process.execPath, [CLI, '--port', 'abc'], { encoding: 'utf8', env });
    assert.equal(port.status, 2);
    assert.match(port.stderr, /--port: "abc"/);
    const backend = spawnSync(process.execPath, [CLI, '--backend', 'gpu9'], { encoding: 'utf8', env });
    assert.equal(backend.status, 2);
    assert.match(backend.stderr, /--backend: "gpu9"/);
    const bytes = spawnSync(process.execPath, [CLI, '--max-bytes', '12X'], { encoding: 'utf8', env });
    assert.equal(bytes.status, 2);
    assert.match(bytes.stderr, /--max-bytes: "12X" is not a size/);
    // Every other flag this server added: a bad value is refused before anything starts (no socket, no state dir).
    const sock = path.join(dir, 'never.sock');
    const state = path.join(dir, 'never-state');
    for (const [args, want] of [
      [['--threads', 'abc'], /--threads: "abc" is not a non-negative integer/],
      [['--max-sessions', '-1'], /--max-sessions: "-1" is not a non-negative integer/],
      [['--session-idle-timeout', '1.5'], /--session-idle-timeout: "1.5" is not a non-negative integer/],
      [['--max-streams', '0'], /--max-streams: "0" is not a positive integer/],
      [['--socket'], /--socket: missing path/],
      [['--state-dir'], /--state-dir: missing directory/],
      [['--socket', sock, '--state-dir', state, '--threads', 'x'], /--threads: "x"/],
      [['--data-port', 'abc'], /--data-port: "abc" is not a non-negative integer/],
      [['--data-port', '70000'], /--data-port: 70000 is not a port/],
      [['--socket', sock, '--state-dir', state, '--data-port'], /--data-port: null is not a non-negative integer/],
      [['--socket', sock, '--state-dir', state, '--fsync', 'sometimes'], /--fsync: "sometimes" is not never, always or interval=MS/],
      [
        ['--max-message-mb', '1', '--chunk-kb', '1024'],
        /--chunk-kb: 1024 KiB chunks do not fit in --max-message-mb 1 \(at most half of it: 512 KiB\)/,
      ],
    ] as Array<[string[], RegExp]>) {
      const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env });
      assert.equal(r.status, 2, args.join(' '));
      assert.match(r.stderr, want);
    }
    assert.equal(fs.existsSync(sock), false, 'no socket was created');
    assert.equal(fs.existsSync(state), false, 'no state directory was created');
    fs.rmSync(dir, { recursive: true });
  });

  it('starts on port 0 with --config, serves, and stops cleanly on SIGTERM', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-cli-'));
    const cfg = path.join(dir, 'spec.json');
    fs.writeFileSync(cfg, JSON.stringify({ optimizer: 'adam', rule: 'hybrid' }));
    const child = spawn(process.execPath, [CLI, '--port', '0', '--backend', 'cpu', '--config', cfg], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const stderr: string[] = [];
    child.stderr.on('data', (b) => stderr.push(String(b)));
    const first = await new Promise<string>((resolve) => readline.createInterface({ input: child.stdout }).once('line', resolve));
    const info = JSON.parse(first) as ServerLine;
    assert.equal(info.event, 'listening');
    assert.equal(info.backend, 'cpu');
    const client = new OptimizerClient(`127.0.0.1:${info.port}`, grpc.credentials.createInsecure());
    const caps = await new Promise<{ backend: string }>((resolve, reject) =>
      client.getCapabilities({}, (e, r) => (e ? reject(e) : resolve(r))),
    );
    assert.equal(caps.backend, 'cpu');
    client.close();
    const code = await new Promise<number | null>((resolve) => {
      child.on('exit', resolve);
      child.kill('SIGTERM');
    });
    assert.equal(code, 0);
    // JSON log lines (libtensorflow may print its own non-JSON notices when probed).
    const events = stderr
      .join('')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => (JSON.parse(l) as ServerLine).event);
    assert.deepEqual(
      events.filter((e) => e !== 'rpc_error'),
      ['listening', 'shutdown', 'stopped'],
    );
    fs.rmSync(dir, { recursive: true });
  });

  it('a SIGTERM the instant it says it listens still shuts it down cleanly (10 of 10)', async () => {
    for (let k = 0; k < 10; k++) {
      const child = spawn(process.execPath, [CLI, '--port', '0'], {
        env: { ...env, MUR_LOG: 'silent' },
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('exit', (c, sig) => resolve([c, sig])));
      await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
      child.kill('SIGTERM');
      assert.deepEqual(await exited, [0, null], `run ${k}`);
    }
  });

  it('--socket listens on a Unix socket and removes it on exit; --exit-with-stdin stops when stdin closes', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mur-cli-'));
    const sock = path.join(dir, 'mur.sock');
    const child = spawn(process.execPath, [CLI, '--socket', sock, '--exit-with-stdin'], {
      env: { ...env, MUR_LOG: 'silent' },
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    const info = JSON.parse(
      await new Promise<string>((resolve) => readline.createInterface({ input: child.stdout }).once('line', resolve)),
    ) as ServerLine;
    assert.equal(info.socket, sock);
    const client = new OptimizerClient(`unix:${sock}`, grpc.credentials.createInsecure());
    const caps = await new Promise<{ transports: string[] }>((resolve, reject) =>
      client.getCapabilities({}, (e, r) => (e ? reject(e) : resolve(r))),
    );
    assert.ok(caps.transports.includes('grpc'));
    client.close();
    child.stdin.end(); // the parent lets go
    assert.equal(await exited, 0);
    assert.equal(fs.existsSync(sock), false, 'the socket file is gone');
    fs.rmSync(dir, { recursive: true });
  });
});
