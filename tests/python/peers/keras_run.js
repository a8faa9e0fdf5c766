// keras_run.js - runs TensorFlow.js's Keras-style BatchNormalization layer
// (tf.layers.batchNormalization of @tensorflow/tfjs, on its CPU backend, float32), for
// tests/python/test_keras.py, which compares bnorm.keras with what it prints.
//
//   node tests/python/peers/keras_run.js < cases.json > results.json
//
// stdin is a JSON list of cases, each
//   {"args": {"axis": A, "momentum": M, "epsilon": E, "center": B, "scale": B},
//    "shape": [...], "weights": [[...], ...], "steps": [{"x": [...], "training": B}, ...]}
// where shape is the input shape the layer is built for, weights its weights in the layer's
// order (gamma if scale, beta if center, moving_mean, moving_variance), and each step an input
// of that shape (flat, C order) applied with layer.apply(x, {training}). All the cases run in
// this one process. stdout is a JSON list with one entry per case: {"steps": [{"y": [...],
// "moving_mean": [...], "moving_variance": [...]}, ...]}, the output and the moving statistics
// after each step, or {"error": MESSAGE} when TF.js threw. Float32 values travel as JSON
// numbers, which hold them exactly. Loading TF.js failing is exit status 1, with the reason on
// stderr.
'use strict';

const fs = require('fs');
const path = require('path');

let tf;
try {
    // tests/peers/node_modules, which tests/prerequisites.sh fills with npm ci
    tf = require(path.join(__dirname, '..', '..', 'peers', 'node_modules', '@tensorflow', 'tfjs'));
} catch (err) {
    process.stderr.write('keras_run.js: cannot load @tensorflow/tfjs from ' +
                         'tests/peers/node_modules (make test installs it: ' +
                         'tests/prerequisites.sh): ' + err.message + '\n');
    process.exit(1);
}

function runCase(c) {
    return tf.tidy(() => {
        const layer = tf.layers.batchNormalization(c.args);
        layer.build(c.shape);
        layer.setWeights(c.weights.map(w => tf.tensor1d(w, 'float32')));
        const steps = [];
        for (const step of c.steps) {
            const x = tf.tensor(step.x, c.shape, 'float32');
            const y = layer.apply(x, {training: step.training});
            const [mean, variance] = layer.getWeights().slice(-2);
            steps.push({y: Array.from(y.dataSync()), moving_mean: Array.from(mean.dataSync()),
                        moving_variance: Array.from(variance.dataSync())});
        }
        return {steps: steps};
    });
}

async function main() {
    // the CPU backend's banner suggesting tfjs-node (console.warn when it starts) is not ours
    const warn = console.warn;
    console.warn = () => {};
    try {
        await tf.setBackend('cpu');
    } finally {
        console.warn = warn;
    }
    const cases = JSON.parse(fs.readFileSync(0, 'utf8'));
    const results = cases.map(c => {
        try {
            return runCase(c);
        } catch (err) {
            return {error: String(err.message || err)};
        }
    });
    process.stdout.write(JSON.stringify(results) + '\n');
}

main().catch(err => {
    process.stderr.write('keras_run.js: ' + (err.stack || err) + '\n');
    process.exit(1);
});
