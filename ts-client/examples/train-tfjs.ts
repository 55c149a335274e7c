// Trains a small tfjs MLP in Node with its optimizer on a mur server:
// tfjs computes the gradients, mur the hybrid-rule Adam step (murOptimizer).
//   npm run example -w ts-client [-- host:port]
import * as tf from '@tensorflow/tfjs-core';
// tfjs-core's CommonJS bundle registers no gradients; tfjs-layers (or @tensorflow/tfjs) does.
import '@tensorflow/tfjs-layers';
import { initBackend, startServer } from '@mur/server';
import { MurClient } from '../src';
import { murOptimizer } from '../src/tfjs';

async function main() {
  await initBackend('cpu'); // the in-process server's engine and this script's tfjs backend
  const local = process.argv[2] ? null : await startServer({ port: 0 });
  const client = new MurClient(process.argv[2] ?? `127.0.0.1:${local!.port}`);
  // y = sin(3x) on [-1, 1]: a 1-32-1 tanh network.
  const x = tf.reshape(tf.linspace(-1, 1, 256), [256, 1]);
  const y = tf.sin(tf.mul(x, 3));
  const vars: Record<string, tf.Variable> = {
    w1: tf.variable(tf.randomNormal([1, 32], 0, 1, 'float32', 1)),
    b1: tf.variable(tf.zeros([32])),
    w2: tf.variable(tf.randomNormal([32, 1], 0, 0.3, 'float32', 2)),
    b2: tf.variable(tf.fill([1], 0.01)),
  };
  // A tf.Optimizer whose steps run on the server. With the server in this
  // process (the default here) the loop awaits each step (minimizeAsync); with a
  // server elsewhere, model.compile({ optimizer }) + model.fit work too.
  const optimizer = murOptimizer(client, { optimizer: 'adam', rule: 'hybrid', defaults: { lr: 0.02, lr_out: 0.02, gamma: 0.5 } });
  const loss = () =>
    tf.losses.meanSquaredError<tf.Tensor, tf.Scalar>(
      y,
      tf.add(tf.matMul(tf.tanh(tf.add(tf.matMul(x, vars.w1), vars.b1)), vars.w2), vars.b2),
    );
  for (let step = 1; step <= 300; step++) {
    const value = (await optimizer.minimizeAsync(loss, true, Object.values(vars)))!;
    if (step === 1 || step % 50 === 0) console.log(`step ${String(step).padStart(3)}  loss ${value.dataSync()[0].toFixed(5)}`);
    value.dispose();
  }
  await optimizer.close();
  client.close();
  await local?.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
