// The page's logic: pick a backend, load a model, stream generated text; plus `window.rwkvTest`,
// the hooks `test.sh` calls to check the page against the reference fixtures.
import init, { createSession } from "./pkg/rwkv_burn_web.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// `?backend=webgpu` insists on WebGPU (an error if the browser has none), `?backend=cpu` uses
// the CPU; the default takes WebGPU when the browser offers an adapter.
async function chooseBackend() {
  const wanted = params.get("backend") || "auto";
  const adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  if (wanted === "webgpu" && !adapter) {
    throw new Error(navigator.gpu ? "WebGPU: the browser offers no adapter" : "WebGPU: navigator.gpu is missing");
  }
  if (wanted === "cpu") return "cpu";
  if (adapter) maxBufferBytes = adapter.limits.maxStorageBufferBindingSize;
  return adapter ? "webgpu" : "cpu";
}

// CubeCL's WGSL compiler writes `enable subgroups;` into every kernel that reads the subgroup
// size (Burn's matmuls do), but wgpu 30 cannot ask the browser for the `subgroups` feature, so
// those shaders would be rejected. Ask for it here whenever the adapter has it.
if (globalThis.GPUAdapter) {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = function (descriptor = {}) {
    const features = new Set(descriptor.requiredFeatures || []);
    if (this.features.has("subgroups")) features.add("subgroups");
    return requestDevice.call(this, { ...descriptor, requiredFeatures: [...features] });
  };
  // Some of Burn's matmul kernels shuffle within a subgroup inside loops that Tint cannot
  // prove subgroup-uniform (naga, on native, does not check); WGSL lets a shader switch that
  // diagnostic off, which CubeCL does not do.
  const createShaderModule = GPUDevice.prototype.createShaderModule;
  GPUDevice.prototype.createShaderModule = function (descriptor) {
    if (/\bsubgroup[A-Z]/.test(descriptor.code)) {
      descriptor = { ...descriptor, code: "diagnostic(off, subgroup_uniformity);\n" + descriptor.code };
    }
    return createShaderModule.call(this, descriptor);
  };
}

let backend = null;
let session = null;
let maxBufferBytes = undefined;  // the WebGPU adapter's maxStorageBufferBindingSize

function showError(e) {
  $("status").innerHTML = "";
  const span = document.createElement("span");
  span.className = "error";
  span.textContent = String(e && e.message ? e.message : e);
  $("status").append(span);
}

async function load(bytes, name) {
  $("go").disabled = true;
  $("status").textContent = `Loading ${name || "the embedded model"} on ${backend}…`;
  const t0 = performance.now();
  session = await createSession(backend, bytes, name, maxBufferBytes);
  $("status").textContent = `${session.about} (loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s)`;
  $("go").disabled = false;
  return session;
}

// Generates into the page; resolves to the result and timings.
async function generate() {
  $("go").disabled = true;
  const out = $("output");
  out.textContent = "";
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = $("prompt").value;
  const textNode = document.createTextNode("");
  out.append(promptSpan, textNode);
  const start = performance.now();
  let first = null, last = null, count = 0;
  try {
    const result = await session.generate(
      $("prompt").value, Number($("max").value), Number($("temperature").value),
      Number($("top_p").value), Number($("seed").value),
      (text) => {
        last = performance.now();
        if (first === null) first = last;
        count += 1;
        textNode.appendData(text);
        return true;
      });
    // The first callback comes after the prompt is read and one token sampled; decode speed
    // counts the tokens after it.
    const decodeRate = count > 1 ? (count - 1) / ((last - first) / 1000) : 0;
    const stats = {
      tokens: result.tokens, stop: result.stop, backend,
      prefill_ms: first === null ? 0 : first - start,
      decode_tokens_per_s: decodeRate,
      total_s: (performance.now() - start) / 1000,
    };
    $("stats").textContent = `${stats.tokens} tokens on ${backend}: ${decodeRate.toFixed(1)} tokens/s ` +
      `(prompt read in ${stats.prefill_ms.toFixed(0)} ms; stopped: ${stats.stop})`;
    return { ...result, ...stats };
  } finally {
    $("go").disabled = false;
  }
}

// --- fixture checks (used by test.sh) --------------------------------------------------------

function readSafetensors(buffer) {
  const view = new DataView(buffer);
  const headerLen = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, headerLen)));
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [begin, end] = info.data_offsets;
    const bytes = buffer.slice(8 + headerLen + begin, 8 + headerLen + end);
    const values = info.dtype === "F32" ? new Float32Array(bytes)
      : info.dtype === "I64" ? Array.from(new BigInt64Array(bytes), Number)
      : null;
    tensors[name] = { shape: info.shape, values };
  }
  return tensors;
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.arrayBuffer();
}

// Logits of one fixture model, full / step / chunked, against the official package's;
// `limit` is the largest buffer to hold a tensor in (the adapter's by default).
async function checkFixture(version, limit = maxBufferBytes) {
  const dir = `fixtures/${version}`;
  const [weights, expectedBytes, meta] = await Promise.all([
    fetchBytes(`${dir}/weights.safetensors`), fetchBytes(`${dir}/expected.safetensors`),
    fetch(`${dir}/meta.json`).then((r) => r.json()),
  ]);
  const expected = readSafetensors(expectedBytes);
  const model = await createSession(backend, new Uint8Array(weights), `${version}/weights.safetensors`, limit);
  const tokens = Uint32Array.from(expected.tokens.values);
  const modes = {
    full: [tokens.length],
    step: Array(tokens.length).fill(1),
    chunked: meta.chunks,
  };
  const report = { version, ok: true, limit: limit ?? null };
  for (const [mode, chunks] of Object.entries(modes)) {
    const got = await model.logits(tokens, Uint32Array.from(chunks));
    const want = expected[`logits_${mode}`].values;
    let worst = 0, bad = 0;
    if (got.length !== want.length) throw new Error(`${version} ${mode}: ${got.length} logits, expected ${want.length}`);
    for (let i = 0; i < want.length; i++) {
      const err = Math.abs(got[i] - want[i]);
      const allowed = 1e-4 + 1e-4 * Math.abs(want[i]);
      worst = Math.max(worst, err / allowed);
      if (!(err <= allowed)) bad += 1;  // NaN counts as bad
    }
    report[mode] = { worst_error_over_tolerance: worst, failures: bad };
    if (bad > 0) report.ok = false;
  }
  model.free();
  return report;
}

window.rwkvTest = {
  // Every fixture version, then a generation with the embedded model in the page.
  async run(versions = ["rwkv4", "rwkv5", "rwkv6", "rwkv7"], maxTokens = 64) {
    await ready;
    const fixtures = [];
    console.log(`backend: ${backend}`);
    for (const v of versions) {
      fixtures.push(await checkFixture(v));
      console.log(JSON.stringify(fixtures[fixtures.length - 1]));
    }
    $("max").value = maxTokens;
    const generation = await generate();
    // Again, now that every kernel is compiled (and autotuned): the speed a reader sees.
    const warm = await generate();
    // Tensors larger than one storage buffer: with a pretend limit of 24 KiB the fixture's
    // embedding, head and channel-mix matrices (64 KiB each) are held in blocks of rows and
    // still match the package; with 128 bytes not even one row fits, and the model is refused
    // with a message.
    let split = { ok: true }, oversized = "not refused";
    if (backend === "webgpu") {
      split = await checkFixture("rwkv7", 24576);
      console.log(JSON.stringify(split));
      const weights = await fetchBytes("fixtures/rwkv7/weights.safetensors");
      oversized = await createSession(backend, new Uint8Array(weights), "big.safetensors", 128)
        .then((s) => { s.free(); return "not refused"; }, (e) => String(e.message || e));
    }
    const refused = backend !== "webgpu" || /big\.safetensors: tensor 'emb\.weight' needs a buffer of 256 bytes, more than the device allows in one \(128 bytes\)/.test(oversized);
    const ok = fixtures.every((f) => f.ok) && split.ok && generation.text.length > 0 &&
      warm.text === generation.text && refused;
    return { ok, backend, fixtures, split, generation, warm, oversized };
  },
};

const ready = (async () => {
  await init();
  backend = await chooseBackend();
  await load(undefined, undefined);
})();
ready.catch(showError);
window.rwkvTest.ready = ready.then(() => ({ ok: true, backend }), (e) => ({ ok: false, error: String(e) }));

$("go").addEventListener("click", () => generate().catch(showError));
$("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  try {
    await load(new Uint8Array(await file.arrayBuffer()), file.name);
  } catch (e) {
    showError(e);
  }
});
