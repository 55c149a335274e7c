// Chooses the tfjs backend at start-up: native TensorFlow (tfjs-node) when
// its addon loads, else the embedded wasm backend, else the pure-JS cpu one.
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';

export type BackendName = 'tensorflow' | 'tensorflow-gpu' | 'wasm' | 'cpu';
export const BACKEND_NAMES: BackendName[] = ['tensorflow', 'tensorflow-gpu', 'wasm', 'cpu'];

/** Why a backend could not be loaded, by name (filled as backends are tried). */
export const backendErrors: Partial<Record<BackendName, string>> = {};

/** tfjs-node switches the active backend when imported; probing must not. */
function keepingBackend(load: () => unknown): void {
  const active = tf.engine().backendName;
  load();
  if (active && tf.engine().backendName !== active) tf.setBackend(active);
}

function tryRegister(name: BackendName): boolean {
  try {
    switch (name) {
      case 'tensorflow':
        // The addon registers the 'tensorflow' backend on import. Its build
        // comes from `make native` (scripts/native-backend.sh).
        process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
        keepingBackend(() => require('@tensorflow/tfjs-node'));
        return true;
      case 'tensorflow-gpu':
        process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
        keepingBackend(() => require('@tensorflow/tfjs-node-gpu'));
        return true;
      case 'wasm': {
        const wasm = require('@tensorflow/tfjs-backend-wasm');
        const dir = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm'));
        wasm.setWasmPaths(dir + path.sep);
        return true;
      }
      case 'cpu':
        require('@tensorflow/tfjs-backend-cpu');
        return true;
    }
  } catch (e) {
    backendErrors[name] = (e as Error).message.split('\n')[0];
    return false;
  }
}

/** Backends whose module loads on this machine (tfjs-node's addon included). */
export function availableBackends(): BackendName[] {
  return BACKEND_NAMES.filter((n) => tryRegister(n) && tf.findBackendFactory(tfName(n)) !== null);
}

function tfName(n: BackendName): string {
  return n === 'tensorflow-gpu' ? 'tensorflow' : n;
}

/**
 * Activates `requested`, or the best available (tensorflow, then wasm, then
 * cpu) when undefined. Throws with the loader's reason when a requested
 * backend cannot be used.
 */
export async function initBackend(requested?: BackendName): Promise<BackendName> {
  const order: BackendName[] = requested ? [requested] : ['tensorflow', 'wasm', 'cpu'];
  for (const name of order) {
    if (!tryRegister(name)) continue;
    if (await tf.setBackend(tfName(name))) {
      await tf.ready();
      return name;
    }
    backendErrors[name] = backendErrors[name] ?? 'tf.setBackend failed';
  }
  const why = order.map((n) => `${n}: ${backendErrors[n] ?? 'unavailable'}`).join('; ');
  throw new Error(`no usable tensor backend (${why})`);
}
