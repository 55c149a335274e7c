// The wire's ceiling, for mur_lab.bench_e2e: a server that does nothing but
// answer every request with a reply of a given size, over
//   grpc  grpc-js with mur's server settings (16 MiB HTTP/2 windows, the
//         largest frames, no message limit): what any gRPC Step pays before
//         mur does anything;
//   raw   a plain Node socket, framed as the tcp data plane frames
//         (u32 length + bytes), the reply written from a reused buffer.
// Usage: node dist/bench/echo.js grpc|raw REPLY_BYTES; prints the port, then
// serves until stdin closes.
import * as net from 'net';
import * as grpc from '@grpc/grpc-js';
import { raiseFlowControlWindow, raiseSessionWindows } from '../src/grpc/server';

const [mode, size] = [process.argv[2], Number(process.argv[3] ?? 16_000_000)];
const reply = Buffer.alloc(size, 1);
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();

if (mode === 'grpc') {
  const server = new grpc.Server({ 'grpc.max_receive_message_length': -1, 'grpc.max_send_message_length': -1 });
  const tuned = raiseFlowControlWindow(server, 16 << 20); // the server's own settings
  const id = (x: Buffer) => x;
  server.addService(
    {
      echo: {
        path: '/bench.Echo/Echo',
        requestStream: false,
        responseStream: false,
        requestSerialize: id,
        requestDeserialize: id,
        responseSerialize: id,
        responseDeserialize: id,
      },
    },
    { echo: (_call: unknown, cb: (e: null, r: Buffer) => void) => cb(null, reply) },
  );
  server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, port) => {
    if (e) throw e;
    if (tuned) raiseSessionWindows(server, 16 << 20);
    process.stdout.write(`${port}\n`);
  });
} else if (mode === 'raw') {
  const server = net.createServer((sock) => {
    sock.setNoDelay(true);
    let need = -1;
    let got = 0;
    let recv = Buffer.allocUnsafe(0);
    const head = Buffer.alloc(4);
    head.writeUInt32LE(size, 0);
    let pending: Buffer[] = [];
    sock.on('data', (c: Buffer) => {
      pending.push(c);
      for (;;) {
        const all = pending.length === 1 ? pending[0] : Buffer.concat(pending);
        pending = [all];
        if (need < 0) {
          if (all.length < 4) return;
          need = all.readUInt32LE(0);
          if (recv.length < need) recv = Buffer.allocUnsafe(need);
          got = 0;
          pending = [all.subarray(4)];
          continue;
        }
        const n = Math.min(all.length, need - got);
        all.copy(recv, got, 0, n); // as the data plane copies into its receive buffer
        got += n;
        pending = n < all.length ? [all.subarray(n)] : [];
        if (got < need) return;
        need = -1;
        sock.write(head);
        sock.write(reply);
        if (pending.length === 0) return;
      }
    });
    sock.on('error', () => undefined);
  });
  server.listen(0, '127.0.0.1', () => process.stdout.write(`${(server.address() as net.AddressInfo).port}\n`));
} else {
  process.stderr.write('usage: echo.js grpc|raw REPLY_BYTES\n');
  process.exit(2);
}
