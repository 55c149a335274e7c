// A mur server on its own thread, for tests whose main thread blocks on a
// synchronous step (the tfjs adapter under model.fit).
import { Worker, isMainThread, parentPort, workerData } from 'worker_threads';
import type { BackendName } from '@mur/server';

export interface ThreadServer {
  port: number;
  close(): Promise<void>;
}

export function startServerThread(backend = 'cpu'): Promise<ThreadServer> {
  const worker = new Worker(__filename, { workerData: { backend } });
  return new Promise((resolve, reject) => {
    worker.once('error', reject);
    worker.once('message', (m: { port?: number; error?: string }) => {
      if (m.error) return reject(new Error(m.error));
      resolve({
        port: m.port!,
        close: async () => {
          worker.postMessage('close');
          await new Promise((r) => worker.once('exit', r));
        },
      });
    });
  });
}

const backend = (workerData as { backend?: BackendName } | null)?.backend;
if (!isMainThread && backend) {
  (async () => {
    const { initBackend, startServer } = await import('@mur/server');
    await initBackend(backend);
    const server = await startServer({ port: 0 });
    parentPort!.on('message', () => {
      void server.close().then(() => process.exit(0));
    });
    parentPort!.postMessage({ port: server.port });
  })().catch((e) => parentPort!.postMessage({ error: String(e) }));
}
