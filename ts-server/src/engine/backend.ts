// Chooses the engine at start-up: the fused native engine when its addon
// loads, else a tfjs backend: native TensorFlow (tfjs-node), the embedded
// wasm backend, the pure-JS cpu one. `--backend` picks one by name.
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { OPTIMIZERS } from '../optimizers';
import { RULES } from '../rules';
import { setEngine } from './engine';
import { loadNative, NativeEngine, nativeLoadError } from './native';
import { TfjsEngine } from './tfjs';

export type BackendName = 'native' | 'tensorflow' | 'tensorflow-gpu' | 'wasm' | 'cpu';
export const BACKEND_NAMES: BackendName[] = ['native', 'tensorflow', 'tensorflow-gpu', 'wasm', 'cpu'];

/** Why a backend could not be loaded, by name (filled as backends are tried). */
export const backendErrors: Partial<Record<BackendName, string>> = {};

/** tfjs-node switches the active backend when imported; probing must not. */
function keepingBackend(load: () => unknown): void {
  const active = tf.engine().backendName;
  load();
  // setBackend of a backend that is already initialized settles at once; a rejection has nobody to tell.
  if (active && tf.engine().backendName !== active) void tf.setBackend(active);
}

function tryRegister(name: BackendName): boolean {
  try {
    switch (name) {
      case 'native':
        if (loadNative()) return true;
        backendErrors.native = nativeLoadError() ?? 'not built';
        return false;
      case 'tensorflow':
        // The addon registers the 'tensorflow' backend on import. Its build
        // comes from `make native` (scripts/native-backend.sh).
        process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
        // Optional backends are required only when chosen (an import would load them all).
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        keepingBackend(() => require('@tensorflow/tfjs-node'));
        return true;
      case 'tensorflow-gpu':
        process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        keepingBackend(() => require('@tensorflow/tfjs-node-gpu'));
        return true;
      case 'wasm': {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const wasm = require('@tensorflow/tfjs-backend-wasm') as typeof import('@tensorflow/tfjs-backend-wasm');
        const dir = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm'));
        wasm.setWasmPaths(dir + path.sep);
        return true;
      }
      case 'cpu':
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        require('@tensorflow/tfjs-backend-cpu');
        return true;
    }
  } catch (e) {
    backendErrors[name] = (e as Error).message.split('\n')[0];
    return false;
  }
}

/** Backends whose module loads on this machine (the native addons included). */
export function availableBackends(): BackendName[] {
  return BACKEND_NAMES.filter((n) => tryRegister(n) && (n === 'native' || tf.findBackendFactory(tfName(n)) !== null));
}

function tfName(n: BackendName): string {
  return n === 'tensorflow-gpu' ? 'tensorflow' : n;
}

/**
 * Backends this machine could run, found without loading them: loading
 * tfjs-node maps libtensorflow (~300 MB of RSS) into a server that runs the
 * native engine, just to list it in GetCapabilities.
 */
export function installedBackends(): BackendName[] {
  return BACKEND_NAMES.filter((n) => {
    try {
      switch (n) {
        case 'native':
          return loadNative() !== null;
        case 'tensorflow':
        case 'tensorflow-gpu': {
          const pkg = require.resolve(`@tensorflow/${n === 'tensorflow' ? 'tfjs-node' : 'tfjs-node-gpu'}/package.json`);
          // eslint-disable-next-line @typescript-eslint/no-require-imports
          const preGyp = require('@mapbox/node-pre-gyp') as { find(packageJson: string): string };
          return fs.existsSync(preGyp.find(pkg));
        }
        case 'wasm':
          return !!require.resolve('@tensorflow/tfjs-backend-wasm');
        case 'cpu':
          return !!require.resolve('@tensorflow/tfjs-backend-cpu');
      }
    } catch {
      return false;
    }
  });
}

/** Native engine threads: MUR_THREADS, else every core. */
function threadsFromEnv(): number {
  const n = Number(process.env.MUR_THREADS ?? 0);
  return Number.isInteger(n) && n >= 0 ? n : 0;
}

/**
 * tfjs's cpu backend prints a "Hi, looks like you are running TensorFlow.js in
 * Node.js ... install our node backend" banner on its first tensor write
 * (`firstUse`). Here the cpu backend is a deliberate choice (asked for, or
 * the last resort after native, tensorflow and wasm), so the advice is noise
 * in the server's output. tfjs has no switch for this one message (PROD would
 * silence every tfjs warning), hence its own flag, set as if already used.
 */
function quietCpuBackend(): void {
  const backend = tf.backend() as unknown as { firstUse?: boolean };
  if ('firstUse' in backend) backend.firstUse = false;
}

/**
 * Activates `requested`, or the best available (native, then tensorflow,
 * then wasm, then cpu) when undefined, and makes it the engine sessions use.
 * Throws with the loader's reason when a requested backend cannot be used.
 */
export async function initBackend(requested?: BackendName, threads?: number): Promise<BackendName> {
  const order: BackendName[] = requested ? [requested] : ['native', 'tensorflow', 'wasm', 'cpu'];
  for (const name of order) {
    if (!tryRegister(name)) continue;
    if (name === 'native') {
      const engine = new NativeEngine(loadNative()!, OPTIMIZERS, RULES);
      engine.setThreads(threads ?? threadsFromEnv());
      setEngine(engine);
      return name;
    }
    if (await tf.setBackend(tfName(name))) {
      await tf.ready();
      if (name === 'cpu') quietCpuBackend();
      setEngine(new TfjsEngine(name));
      return name;
    }
    backendErrors[name] = backendErrors[name] ?? 'tf.setBackend failed';
  }
  const why = order.map((n) => `${n}: ${backendErrors[n] ?? 'unavailable'}`).join('; ');
  throw new Error(`no usable tensor backend (${why})`);
}
