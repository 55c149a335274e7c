// The tfjs adapter: model.compile({ optimizer: murOptimizer(...) }) and
// model.fit train through the server; the same model with tf.train.sgd gives
// the same weights (mur's additive SGD is tfjs's SGD).
import { strict as assert } from 'assert';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { initBackend, startServer, type RunningServer } from '@mur/server';
import { MurClient } from '../src';
import { MurOptimizer, murOptimizer } from '../src/tfjs';
import { startServerThread, type ThreadServer } from './server-thread';

const LR = 0.1;
const sgd = { optimizer: 'sgd', rule: 'additive', defaults: { lr: LR } };

function model(seed: number): tfl.LayersModel {
  const m = tfl.sequential();
  m.add(tfl.layers.dense({ units: 5, activation: 'tanh', inputShape: [3], kernelInitializer: tfl.initializers.glorotUniform({ seed }) }));
  m.add(tfl.layers.dense({ units: 1, kernelInitializer: tfl.initializers.glorotUniform({ seed: seed + 1 }) }));
  return m;
}

function data(): { x: tf.Tensor; y: tf.Tensor } {
  const x = tf.tensor2d(
    Array.from({ length: 16 * 3 }, (_, i) => Math.sin(i * 0.7)),
    [16, 3],
  );
  const y = tf.tensor2d(
    Array.from({ length: 16 }, (_, i) => Math.cos(i * 0.3)),
    [16, 1],
  );
  return { x, y };
}

function maxDiff(a: tfl.LayersModel, b: tfl.LayersModel): number {
  let d = 0;
  const wa = a.getWeights();
  const wb = b.getWeights();
  wa.forEach((w, i) => {
    const x = w.dataSync();
    const y = wb[i].dataSync();
    for (let j = 0; j < x.length; j++) d = Math.max(d, Math.abs(x[j] - y[j]));
  });
  return d;
}

describe('tfjs adapter (murOptimizer)', () => {
  let thread: ThreadServer;
  let client: MurClient;
  before(async function () {
    this.timeout(60_000);
    await initBackend('cpu'); // this thread's tfjs backend (the models)
    thread = await startServerThread('cpu');
    client = new MurClient(`127.0.0.1:${thread.port}`);
  });
  after(async () => {
    client?.close();
    await thread?.close();
  });

  it('model.fit trains through the server: 20 steps equal tf.train.sgd to 1e-5', async () => {
    const { x, y } = data();
    const viaMur = model(7);
    const local = model(7);
    assert.equal(maxDiff(viaMur, local), 0);
    const opt = murOptimizer(client, sgd);
    assert.ok(opt instanceof tf.Optimizer);
    viaMur.compile({ optimizer: opt, loss: 'meanSquaredError' });
    local.compile({ optimizer: tf.train.sgd(LR), loss: 'meanSquaredError' });
    const h1 = await viaMur.fit(x, y, { epochs: 20, batchSize: 16, shuffle: false, verbose: 0 });
    const h2 = await local.fit(x, y, { epochs: 20, batchSize: 16, shuffle: false, verbose: 0 });
    assert.ok(opt.sessionId, 'the first step created a session');
    assert.equal(opt.transport, 'tcp', '"auto": a server with a data port and no shm engine');
    assert.equal(opt.iterations, 20);
    const diff = maxDiff(viaMur, local);
    assert.ok(diff < 1e-5, `max |w_mur - w_tfjs| = ${diff}`);
    const l1 = h1.history.loss as number[];
    assert.ok(l1[19] < l1[0], `the loss fell: ${l1[0]} -> ${l1[19]}`);
    assert.ok(Math.abs(l1[19] - (h2.history.loss as number[])[19]) < 1e-5);
    // The server's state is the model's: one parameter per variable, each stepped 20 times.
    const cp = await opt.checkpoint();
    assert.equal(cp.lastStep, 20);
    assert.deepEqual(Object.values(cp.stepCounts), [20, 20, 20, 20]);
    assert.deepEqual(Object.keys(cp.stepCounts).sort(), viaMur.trainableWeights.map((w) => w.name).sort());
    await opt.close();
    tf.dispose([x, y]);
  });

  it('several batches per epoch, and a hybrid-rule Adam: fit runs and the loss falls', async () => {
    const { x, y } = data();
    const m = model(11);
    const opt = murOptimizer(
      client,
      { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.02, lr_out: 0.02, gamma: 0.5 } },
      { transport: 'grpc' },
    );
    m.compile({ optimizer: opt, loss: 'meanSquaredError' });
    const h = await m.fit(x, y, { epochs: 10, batchSize: 4, shuffle: false, verbose: 0 });
    assert.equal(opt.transport, 'grpc', 'the transport option reaches the session');
    const loss = h.history.loss as number[];
    assert.equal(opt.iterations, 40);
    assert.ok(loss[9] < loss[0], `${loss[0]} -> ${loss[9]}`);
    await opt.close();
    tf.dispose([x, y]);
  });

  describe('with the server on this thread', () => {
    let server: RunningServer;
    let near: MurClient;
    before(async () => {
      server = await startServer({ port: 0 });
      near = new MurClient(`127.0.0.1:${server.port}`);
    });
    after(async () => {
      near?.close();
      await server?.close();
    });

    it('a custom loop with minimizeAsync equals tf.train.sgd (20 steps)', async () => {
      const { x, y } = data();
      const a = model(3);
      const b = model(3);
      const opt = murOptimizer(near, sgd);
      const ref = tf.train.sgd(LR);
      const loss = (m: tfl.LayersModel) => () => tf.losses.meanSquaredError<tf.Tensor, tf.Scalar>(y, m.predict(x) as tf.Tensor);
      for (let k = 0; k < 20; k++) {
        const cost = await opt.minimizeAsync(loss(a), true);
        cost!.dispose();
        ref.minimize(loss(b));
      }
      const diff = maxDiff(a, b);
      assert.ok(diff < 1e-5, `max diff ${diff}`);
      await opt.close();
      tf.dispose([x, y]);
    });

    it('a synchronous step against a server on the blocked thread fails with a timeout that says why', async () => {
      const opt = new MurOptimizer(near, sgd, { timeoutMs: 500 });
      const v = tf.variable(tf.tensor1d([1, 2]), true, 'mur_sync_blocked');
      assert.throws(
        () => opt.applyGradients({ mur_sync_blocked: tf.tensor1d([1, 1]) }),
        /no answer from the server in 500 ms.*in-process startServer/s,
      );
      // That step may still land on the server: the optimizer refuses to go on.
      await assert.rejects(opt.applyGradientsAsync({ mur_sync_blocked: tf.tensor1d([1, 1]) }), /out of step with its session/);
      await opt.close().catch(() => undefined);
      v.dispose();
    });
  });
});
