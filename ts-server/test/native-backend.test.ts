// Says in the test report whether the native TensorFlow addon built and loads.
// With MUR_EXPECT_NATIVE=1 (set by `make test` where `make native` succeeded)
// a missing or broken addon fails the suite instead of silently using wasm.
import { strict as assert } from 'assert';
import * as tf from '@tensorflow/tfjs-core';
import { availableBackends, backendErrors, installedBackends } from '../src/engine/backend';

describe('native tensorflow backend', () => {
  const expected = process.env.MUR_EXPECT_NATIVE === '1';

  it('loads the tfjs-node addon and computes on libtensorflow', async function () {
    const loaded = availableBackends().includes('tensorflow');
    if (!loaded && !expected) {
      this.skip(); // reason: backendErrors.tensorflow, printed by the next test
    }
    assert.ok(loaded, `tfjs-node did not load: ${backendErrors.tensorflow}`);
    const previous = tf.getBackend();
    try {
      assert.ok(await tf.setBackend('tensorflow'));
      const y = tf.tidy(() =>
        tf
          .matMul(
            tf.tensor2d([
              [1, 2],
              [3, 4],
            ]),
            tf.tensor2d([[5], [6]]),
          )
          .dataSync(),
      );
      assert.deepEqual(Array.from(y), [17, 39]);
    } finally {
      await tf.setBackend(previous);
    }
  });

  it('reports why when it is unavailable', function () {
    if (availableBackends().includes('tensorflow')) this.skip();
    console.log(`    native backend unavailable: ${backendErrors.tensorflow}`);
    assert.ok(backendErrors.tensorflow);
  });

  it("GetCapabilities' cheap probe (no libtensorflow loaded) finds the same backends as loading them", () => {
    assert.deepEqual(installedBackends(), availableBackends());
  });
});
