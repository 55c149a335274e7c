// Mocha root hooks: every test file runs on the backend named by MUR_BACKEND
// (tensorflow | wasm | cpu; default: the best available).
import { initBackend, type BackendName } from '../src/engine/backend';

export const mochaHooks = {
  async beforeAll(this: Mocha.Context) {
    this.timeout(60000);
    const name = await initBackend((process.env.MUR_BACKEND || undefined) as BackendName | undefined);
    if (!process.env.MUR_QUIET) console.log(`  [tensor backend: ${name}]`);
  },
};
