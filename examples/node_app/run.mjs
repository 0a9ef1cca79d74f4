// Run a dslc-exported ONNX model with onnxruntime-node and print its outputs as JSON.
//
//   npm install --ignore-scripts        # CPU build, no download scripts
//   node run.mjs ../models/iris/iris.onnx input.json
//
// input.json: {"features": {"dtype": "float32", "shape": [2, 4], "data": [...]}}
// output:     {"logits": {"dtype": "float32", "shape": [2, 3], "data": [...]}}
// The dslc.* metadata (labels, signature) is printed to stderr when present.
import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-node";

const ARRAYS = {
  float32: Float32Array,
  float64: Float64Array,
  int32: Int32Array,
  int64: BigInt64Array,
  uint8: Uint8Array,
  int8: Int8Array,
  bool: Uint8Array,
};

function toTensor({ dtype, shape, data }) {
  const Ctor = ARRAYS[dtype];
  if (!Ctor) throw new Error(`unsupported dtype ${dtype}`);
  const values = dtype === "int64" ? data.map((v) => BigInt(v)) : data;
  return new ort.Tensor(dtype, Ctor.from(values), shape);
}

function fromTensor(tensor) {
  const data = Array.from(tensor.data, (v) => (typeof v === "bigint" ? Number(v) : v));
  return { dtype: tensor.type, shape: tensor.dims, data };
}

async function main() {
  const [modelPath, inputPath] = process.argv.slice(2);
  if (!modelPath || !inputPath) {
    console.error("usage: node run.mjs MODEL.onnx INPUT.json");
    process.exit(2);
  }
  const session = await ort.InferenceSession.create(modelPath, {
    executionProviders: ["cpu"],
    graphOptimizationLevel: "all",
  });
  const raw = JSON.parse(readFileSync(inputPath, "utf8"));
  const feeds = {};
  for (const name of session.inputNames) {
    if (!(name in raw)) throw new Error(`missing input ${name}; expected ${session.inputNames}`);
    feeds[name] = toTensor(raw[name]);
  }
  const results = await session.run(feeds);
  const out = {};
  for (const name of session.outputNames) out[name] = fromTensor(results[name]);
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  console.error(err.message ?? err);
  process.exit(1);
});
