// onnx_run.js - runs ONNX models with ONNX Runtime (onnxruntime-node, its CPU build), for
// tests/python/test_onnx.py, which compares bnorm.onnx with the outputs.
//
//   node tests/python/peers/onnx_run.js DIR
//
// DIR/cases.json is a list of cases, each {"model": FILE, "inputs": {NAME: TENSOR, ...}}, where
// a TENSOR is {"dtype": "float32" | "float64" | "float16", "shape": [...], "file": FILE} and FILE
// (relative to DIR) holds the values as raw bytes in the machine's byte order, C order. All the
// cases run in this one process, one session each, on one thread. DIR/results.json receives one
// entry per case, in order: {"outputs": {NAME: TENSOR, ...}} with the output values written to
// DIR as result<case>_<output>.bin, or {"error": MESSAGE} when ONNX Runtime refused the model or
// the run. Loading onnxruntime-node itself failing is exit status 1, with the reason on stderr.
'use strict';

const fs = require('fs');
const path = require('path');

let ort;
try {
    // tests/peers/node_modules, which tests/prerequisites.sh fills with npm ci
    ort = require(path.join(__dirname, '..', '..', 'peers', 'node_modules', 'onnxruntime-node'));
} catch (err) {
    process.stderr.write('onnx_run.js: cannot load onnxruntime-node from tests/peers/node_modules' +
                         ' (make test installs it: tests/prerequisites.sh): ' + err.message + '\n');
    process.exit(1);
}

// float16 travels as its bit patterns (node has no Float16Array)
const ARRAYS = {float32: Float32Array, float64: Float64Array, float16: Uint16Array};

function readTensor(dir, spec) {
    const Array = ARRAYS[spec.dtype];
    if (!Array) throw new Error('unsupported dtype ' + spec.dtype);
    const bytes = fs.readFileSync(path.join(dir, spec.file));
    // a copy into a fresh ArrayBuffer: a Buffer's offset need not be aligned for the element type
    const data = new Array(bytes.byteLength / Array.BYTES_PER_ELEMENT);
    new Uint8Array(data.buffer).set(bytes);
    return new ort.Tensor(spec.dtype, data, spec.shape);
}

async function runCase(dir, index, c) {
    const options = {intraOpNumThreads: 1, interOpNumThreads: 1, executionProviders: ['cpu']};
    const session = await ort.InferenceSession.create(path.join(dir, c.model), options);
    const feeds = {};
    for (const [name, spec] of Object.entries(c.inputs)) feeds[name] = readTensor(dir, spec);
    const results = await session.run(feeds);
    const outputs = {};
    for (const [name, tensor] of Object.entries(results)) {
        const file = 'result' + index + '_' + name + '.bin';
        const data = tensor.data;
        fs.writeFileSync(path.join(dir, file),
                         Buffer.from(data.buffer, data.byteOffset, data.byteLength));
        outputs[name] = {dtype: tensor.type, shape: Array.from(tensor.dims), file: file};
    }
    await session.release();
    return {outputs: outputs};
}

async function main() {
    const dir = process.argv[2];
    if (!dir) {
        process.stderr.write('usage: node onnx_run.js DIR\n');
        process.exit(2);
    }
    const cases = JSON.parse(fs.readFileSync(path.join(dir, 'cases.json'), 'utf8'));
    const entries = [];
    for (let i = 0; i < cases.length; i++) {
        try {
            entries.push(await runCase(dir, i, cases[i]));
        } catch (err) {
            entries.push({error: String(err && err.message ? err.message : err)});
        }
    }
    fs.writeFileSync(path.join(dir, 'results.json'), JSON.stringify(entries));
}

main().catch((err) => {
    process.stderr.write('onnx_run.js: ' + (err && err.stack ? err.stack : err) + '\n');
    process.exit(1);
});
