#!/usr/bin/env node
// mur-server: the optimizer service on one port.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { BACKEND_NAMES, initBackend, type BackendName } from './engine/backend';
import { currentEngine } from './engine/engine';
import { NativeEngine } from './engine/native';
import { startServer } from './grpc/server';
import { log } from './log';
import { checkSpecJson, type SpecJson } from './registry';
import { FSYNC_DEFAULT, fsyncName, parseFsync, type FsyncMode } from './session/fsync';
import type { Limits } from './session/store';

const HELP = `mur-server: remote optimizer service (multiplicative update rules)

Usage: mur-server [options]
  --port N            port to listen on (0: any free port; default 50051)
  --host H            address to bind (default 127.0.0.1)
  --socket PATH       listen on a Unix domain socket instead of --host/--port
                      (what server="auto" clients use; the socket file is removed on exit)
  --remove-socket-dir with --socket: on exit, also remove the socket's directory if it is
                      empty (server="auto" makes one for each server)
  --exit-with-stdin   shut down when stdin closes (a parent that started this server
                      died or let go of it: server="auto" never leaves an orphan)
  --backend NAME      engine: ${BACKEND_NAMES.join(' | ')}
                      (default: native, the fused C++ engine, when its addon loads;
                      else tensorflow when @tensorflow/tfjs-node loads; else wasm)
  --threads N         native engine threads (0: every core; default: MUR_THREADS or 0)
  --config FILE       default optimizer spec (JSON, same schema as CreateSession's spec)
  --state-dir DIR     keep sessions in DIR: every acknowledged step survives a crash or
                      restart of the server (same ids, tokens and step numbers); files
                      that fail their checks make that session answer DATA_LOSS
                      (docs/state-dir.md)
  --fsync MODE        with --state-dir, when writes are forced to disk: never (survives
                      a crash of the server, not a power cut) | always (each step before
                      it is answered) | interval=MS (group commit: the steps of an MS
                      window share one fsync, each answered once on disk); default ${fsyncName(FSYNC_DEFAULT)}
  --max-sessions N    open sessions at once (default 1024; 0: no limit)
  --max-bytes N       bytes of parameters and optimizer state of all sessions together,
                      suffixes K M G allowed (default: 80% of this machine's memory; 0: no limit)
  --session-idle-timeout S
                      close a session unused for S seconds (default 3600; 0: never)
  --max-streams N     concurrent calls per connection (default 64)
  --max-message-mb N  largest gRPC message accepted or sent (default 64)
  --chunk-kb N        size of the chunks of streamed tensors (default 1024, at most half of --max-message-mb)
  --tls-cert FILE     serve TLS with this certificate chain (PEM); needs --tls-key
  --tls-key FILE      the certificate's private key (PEM)
  --tls-client-ca FILE
                      mutual TLS: clients must present a certificate signed by this CA (PEM)
  --metrics-port N    serve Prometheus metrics at http://HOST:N/metrics (0: any free port;
                      default: no metrics endpoint)
  --metrics-host H    address of the metrics endpoint (default 127.0.0.1)
  --data-port N|off   the "tcp" data plane: steps' tensor bytes on a plain TCP (TLS with
                      --tls-*) connection beside gRPC, for clients on other hosts
                      (0: any free port, the default; off: none; not with --socket)
  --version           the server's version
  --help              this text

On start it prints {"event":"listening","port":N,"backend":"..."} on stdout
(with --socket: "socket":PATH and port 0; with --metrics-port: "metrics_port":N;
with a data plane: "data_port":N).
Logs are JSON lines on stderr. SIGTERM/SIGINT shut it down gracefully.`;

export interface CliOptions {
  port: number;
  host: string;
  socket?: string;
  exitWithStdin?: boolean;
  removeSocketDir?: boolean;
  backend?: BackendName;
  config?: SpecJson;
  threads?: number;
  maxMessageBytes: number;
  chunkBytes: number;
  limits: Limits;
  maxStreams: number;
  tls?: { cert: Buffer; key: Buffer; clientCa?: Buffer };
  metrics?: { port: number; host: string };
  stateDir?: string;
  fsync?: FsyncMode;
  /** null: no data plane. */
  dataPort?: number | null;
}

/** "512M", "2G", "1048576" -> bytes. */
function bytesArg(flag: string, v: string | undefined): number {
  const m = /^(\d+)([KMG]?)$/i.exec(v ?? '');
  if (!m) throw new Error(`${flag}: ${JSON.stringify(v ?? null)} is not a size (e.g. 512M, 2G, 1048576)`);
  return Number(m[1]) * 1024 ** ' KMG'.indexOf((m[2] || ' ').toUpperCase());
}

function readFile(flag: string, file: string | undefined): Buffer {
  if (!file) throw new Error(`${flag}: missing file name`);
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new Error(`${flag}: cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
}

function positive(flag: string, v: string | undefined, allowZero = false): number {
  const n = Number(v);
  if (v === undefined || !Number.isInteger(n) || n < 0 || (!allowZero && n === 0)) {
    throw new Error(`${flag}: ${JSON.stringify(v ?? null)} is not a ${allowZero ? 'non-negative' : 'positive'} integer`);
  }
  return n;
}

export function parseArgs(argv: string[]): CliOptions | 'help' | 'version' {
  const o: CliOptions = {
    port: 50051,
    host: '127.0.0.1',
    maxMessageBytes: 64 << 20,
    chunkBytes: 1 << 20,
    limits: { maxSessions: 1024, maxBytes: Math.floor(os.totalmem() * 0.8), idleTimeoutMs: 3600_000 },
    maxStreams: 64,
  };
  const tls: { cert?: Buffer; key?: Buffer; clientCa?: Buffer } = {};
  let metricsPort: number | undefined;
  let metricsHost: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const next = () => argv[++i];
    switch (flag) {
      case '--help':
      case '-h':
        return 'help';
      case '--version':
        return 'version';
      case '--port':
        o.port = positive(flag, next(), true);
        if (o.port > 65535) throw new Error(`--port: ${o.port} is not a port`);
        break;
      case '--host':
        o.host = next() ?? '';
        if (!o.host) throw new Error('--host: missing value');
        break;
      case '--backend': {
        const b = next();
        if (!BACKEND_NAMES.includes(b as BackendName))
          throw new Error(`--backend: ${JSON.stringify(b ?? null)} is not one of ${BACKEND_NAMES.join(', ')}`);
        o.backend = b as BackendName;
        break;
      }
      case '--config': {
        const file = next();
        if (!file) throw new Error('--config: missing file name');
        let json: unknown;
        try {
          json = JSON.parse(fs.readFileSync(file, 'utf8'));
        } catch (e) {
          throw new Error(`--config: cannot read ${file}: ${(e as Error).message}`, { cause: e });
        }
        checkSpecJson(json, `--config ${file}: `);
        o.config = json;
        break;
      }
      case '--socket':
        o.socket = next() ?? '';
        if (!o.socket) throw new Error('--socket: missing path');
        break;
      case '--exit-with-stdin':
        o.exitWithStdin = true;
        break;
      case '--remove-socket-dir':
        o.removeSocketDir = true;
        break;
      case '--threads':
        o.threads = positive(flag, next(), true);
        break;
      case '--state-dir':
        o.stateDir = next() ?? '';
        if (!o.stateDir) throw new Error('--state-dir: missing directory');
        break;
      case '--fsync':
        o.fsync = parseFsync(next());
        break;
      case '--max-sessions':
        o.limits.maxSessions = positive(flag, next(), true);
        break;
      case '--max-bytes':
        o.limits.maxBytes = bytesArg(flag, next());
        break;
      case '--session-idle-timeout':
        o.limits.idleTimeoutMs = positive(flag, next(), true) * 1000;
        break;
      case '--max-streams':
        o.maxStreams = positive(flag, next());
        break;
      case '--max-message-mb':
        o.maxMessageBytes = positive(flag, next()) * 1024 * 1024;
        break;
      case '--chunk-kb':
        o.chunkBytes = positive(flag, next()) * 1024;
        break;
      case '--tls-cert':
        tls.cert = readFile(flag, next());
        break;
      case '--tls-key':
        tls.key = readFile(flag, next());
        break;
      case '--tls-client-ca':
        tls.clientCa = readFile(flag, next());
        break;
      case '--metrics-port':
        metricsPort = positive(flag, next(), true);
        if (metricsPort > 65535) throw new Error(`--metrics-port: ${metricsPort} is not a port`);
        break;
      case '--data-port': {
        const v = next();
        if (v === 'off') {
          o.dataPort = null;
          break;
        }
        o.dataPort = positive(flag, v, true);
        if (o.dataPort > 65535) throw new Error(`--data-port: ${o.dataPort} is not a port`);
        break;
      }
      case '--metrics-host':
        metricsHost = next() ?? '';
        if (!metricsHost) throw new Error('--metrics-host: missing value');
        break;
      default:
        throw new Error(`unknown option ${JSON.stringify(flag)} (see --help)`);
    }
  }
  if (tls.cert || tls.key || tls.clientCa) {
    if (!tls.cert || !tls.key) throw new Error('TLS needs both --tls-cert and --tls-key');
    o.tls = { cert: tls.cert, key: tls.key, clientCa: tls.clientCa };
  }
  if (metricsHost !== undefined && metricsPort === undefined) throw new Error('--metrics-host: needs --metrics-port');
  if (o.fsync && !o.stateDir) throw new Error('--fsync: needs --state-dir');
  // A streamed chunk travels in one message with its framing: keep it within half the message limit.
  const chunkCap = Math.floor(o.maxMessageBytes / 2);
  if (o.chunkBytes > chunkCap) {
    if (argv.includes('--chunk-kb'))
      throw new Error(
        `--chunk-kb: ${o.chunkBytes / 1024} KiB chunks do not fit in --max-message-mb ${o.maxMessageBytes / (1 << 20)} (at most half of it: ${chunkCap >> 10} KiB)`,
      );
    o.chunkBytes = chunkCap;
  }
  if (metricsPort !== undefined) o.metrics = { port: metricsPort, host: metricsHost ?? '127.0.0.1' };
  return o;
}

/** Removes `dir` if it is empty (anything else in it: left alone). */
function removeEmptyDir(dir: string): void {
  try {
    fs.rmdirSync(dir);
  } catch {
    // not empty, or gone already
  }
}

async function main(): Promise<void> {
  let opts: CliOptions | 'help' | 'version';
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`mur-server: ${(e as Error).message}\n`);
    process.exit(2);
  }
  if (opts === 'help') {
    process.stdout.write(HELP + '\n');
    return;
  }
  if (opts === 'version') {
    // dist/src/cli.js -> the package's own package.json (a path an import could not name from src/ and dist/ alike).
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '../../package.json'), 'utf8')) as { version: string };
    process.stdout.write(`mur-server ${pkg.version}\n`);
    return;
  }
  // Signals are handled from the start: a SIGTERM that arrives while the
  // server starts, or right after it says it listens, shuts it down cleanly.
  let server: Awaited<ReturnType<typeof startServer>> | null = null;
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log('info', 'shutdown', { signal });
    (server ? server.close() : Promise.resolve())
      .then(() => {
        if (opts.socket) {
          fs.rmSync(opts.socket, { force: true });
          if (opts.removeSocketDir) removeEmptyDir(path.dirname(opts.socket));
        }
        log('info', 'stopped', {});
        process.exit(0);
      })
      .catch((e: unknown) => {
        log('error', 'shutdown_failed', { message: String((e as Error)?.message ?? e) });
        process.exit(1);
      });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  if (opts.exitWithStdin) {
    process.stdin.on('end', () => stop('stdin closed'));
    process.stdin.on('error', () => stop('stdin closed'));
    process.stdin.resume();
  }
  const backend = await initBackend(opts.backend, opts.threads);
  const engine = currentEngine();
  const detail = engine instanceof NativeEngine ? { simd: engine.target, threads: engine.threads() } : {};
  server = await startServer({
    limits: opts.limits,
    maxStreams: opts.maxStreams,
    stateDir: opts.stateDir,
    fsync: opts.fsync,
    port: opts.port,
    host: opts.host,
    socket: opts.socket,
    maxMessageBytes: opts.maxMessageBytes,
    chunkBytes: opts.chunkBytes,
    defaultSpec: opts.config,
    backend,
    tls: opts.tls,
    metrics: opts.metrics,
    dataPort: opts.dataPort,
  });
  const where = opts.socket ? { socket: opts.socket } : { host: opts.host };
  const port = opts.socket ? 0 : server.port;
  if (stopping) {
    await server.close(); // a signal came while starting
    return;
  }
  const extra = {
    ...(opts.tls ? { tls: opts.tls.clientCa ? 'mutual' : 'server' } : {}),
    ...(server.metricsPort !== undefined ? { metrics_port: server.metricsPort } : {}),
    ...(server.context.dataPort ? { data_port: server.context.dataPort } : {}),
  };
  process.stdout.write(JSON.stringify({ event: 'listening', port, ...where, backend, ...detail, ...extra }) + '\n');
  log('info', 'listening', { port, ...where, backend, ...detail, ...extra });
}

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`mur-server: ${(e as Error).message}\n`);
    process.exit(1);
  });
}
