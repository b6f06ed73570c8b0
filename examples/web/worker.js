// The page's model side, in a dedicated Web Worker: the wasm module, the WebGPU device or the
// CPU fallback, the model, downloads and the model cache. Prefill on the CPU is one long wasm
// call and building a 0.1B model another (seconds each): on the page's main thread they froze
// the page; here they do not (`main.js` keeps the UI, `rwkvTest.timer` measures it).
//
// Protocol (structured-cloned messages): the page sends `{ id, method, args }` and gets back
// `{ id, result }` or `{ id, error, fatal }` (fatal: the wasm instance trapped and this worker
// must be replaced); while a call runs the worker also sends `{ event: "progress" | "status" |
// "prompt" | "token", ... }`. `{ method: "stop" }` ends the running generation after its
// current token.
import init, { createSession, ModelBytes, Session } from "./pkg/rwkv_burn_web.js";

// CubeCL's WGSL compiler writes `enable subgroups;` into every kernel that reads the subgroup
// size (Burn's matmuls do), but wgpu 30 cannot ask the browser for the `subgroups` feature, so
// those shaders would be rejected. Ask for it here whenever the adapter has it.
if (globalThis.GPUAdapter) {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = function (descriptor = {}) {
    const features = new Set(descriptor.requiredFeatures || []);
    if (this.features.has("subgroups")) features.add("subgroups");
    // f16 weights are held as f16 only where the device was created with it.
    if (this.features.has("shader-f16")) features.add("shader-f16");
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
let shaderF16 = false;  // whether the adapter has `shader-f16`
let weightsParam = undefined;
let stopRequested = false;

const post = (message) => postMessage(message);
const status = (text) => post({ event: "status", text });

const MiB = 1 << 20;
function size(n) {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  return n >= MiB ? `${(n / MiB).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

// `wanted`: "webgpu" insists on WebGPU (an error if the browser has none), "cpu" uses the
// CPU, "auto" takes WebGPU when the browser offers an adapter. `pageHasGpu`: whether the page
// itself sees `navigator.gpu` (a page without it gets the CPU, as its user would expect).
async function chooseBackend(wanted, pageHasGpu, forcedLimit) {
  const gpu = pageHasGpu ? navigator.gpu : undefined;
  const adapter = gpu ? await gpu.requestAdapter().catch(() => null) : null;
  if (wanted === "webgpu" && !adapter) {
    throw new Error(gpu ? "WebGPU: the browser offers no adapter" : "WebGPU: navigator.gpu is missing");
  }
  if (wanted === "cpu") return "cpu";
  if (adapter) {
    maxBufferBytes = adapter.limits.maxStorageBufferBindingSize;
    if (Number.isSafeInteger(forcedLimit) && forcedLimit > 0) maxBufferBytes = Math.min(maxBufferBytes, forcedLimit);
    shaderF16 = adapter.features.has("shader-f16");
  }
  return adapter ? "webgpu" : "cpu";
}

// Pours a stream of byte chunks into `file` (a ModelBytes: wasm memory, so JavaScript never
// holds the whole file) and into `cache` (or null), reporting progress. Resolves to the count.
async function pour(stream, file, total, label, cache) {
  const reader = stream.getReader();
  const start = performance.now();
  let got = 0, shown = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      file.push(value);
      if (cache) await cache.write(value);
      got += value.length;
      const now = performance.now();
      if (now - shown > 100) {
        shown = now;
        post({ event: "progress", label, done: got, total, rate: got / Math.max((now - start) / 1000, 1e-3) });
      }
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    // A push that refused (too large, more than announced) says so itself.
    if (/more bytes arrived|more than a page can load/.test(e && e.message)) throw e;
    throw new Error(`${label} broke off after ${size(got)}${total ? ` of ${size(total)}` : ""}: ${e.message || e}`);
  } finally {
    post({ event: "progress", label: null });
  }
  return got;
}

// The Origin Private File System folder that caches downloaded models, or null where the
// browser has none (or refuses it, as in private windows).
async function modelCache() {
  try {
    const root = await navigator.storage.getDirectory();
    return await root.getDirectoryHandle("rwkv-models", { create: true });
  } catch {
    return null;
  }
}

async function cacheKey(url) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(url));
  return Array.from(new Uint8Array(digest).slice(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
}

// A cache entry being written: `KEY.bin` holds the bytes, `KEY.json` (written last) says the
// file is whole, so a download cut off or a tab closed midway leaves no entry that is read.
// A full disk or a refused write only stops caching, never the load.
async function cacheWriter(dir, key) {
  if (!dir) return null;
  try {
    await dir.removeEntry(`${key}.json`).catch(() => {});
    const writable = await (await dir.getFileHandle(`${key}.bin`, { create: true })).createWritable();
    let failed = false;
    return {
      async write(chunk) {
        if (failed) return;
        try { await writable.write(chunk); } catch (e) {
          failed = true;
          console.warn(`model cache: ${e.message || e}; not cached`);
          await writable.abort().catch(() => {});
        }
      },
      async close(meta) {
        if (failed) return;
        await writable.close();
        const marker = await (await dir.getFileHandle(`${key}.json`, { create: true })).createWritable();
        await marker.write(JSON.stringify(meta));
        await marker.close();
      },
      async abort() {
        if (!failed) await writable.abort().catch(() => {});
        await dir.removeEntry(`${key}.bin`).catch(() => {});
      },
    };
  } catch (e) {
    console.warn(`model cache: ${e.message || e}; not cached`);
    return null;
  }
}

// The cached file of `url` as a ModelBytes, or null when there is no whole one.
async function readCached(dir, key, url, name) {
  let blob;
  try {
    const meta = JSON.parse(await (await (await dir.getFileHandle(`${key}.json`)).getFile()).text());
    blob = await (await dir.getFileHandle(`${key}.bin`)).getFile();
    if (meta.url !== url || meta.bytes !== blob.size) return null;
  } catch {
    return null;
  }
  const file = new ModelBytes(name, blob.size);
  try {
    await pour(blob.stream(), file, blob.size, `reading ${name} from the cache`, null);
  } catch (e) {
    file.free();
    throw e;
  }
  return file;
}

// Downloads `url` into a ModelBytes, or reads it from the cache where a whole copy is.
// Resolves to { file, source: "cache" | "network" }.
async function fetchModel(url) {
  const absolute = new URL(url, location.href).href;
  const name = decodeURIComponent(new URL(absolute).pathname.split("/").pop()) || "model";
  const dir = await modelCache();
  const key = dir && await cacheKey(absolute);
  if (dir) {
    const cached = await readCached(dir, key, absolute, name);
    if (cached) return { file: cached, source: "cache" };
  }
  let response;
  try {
    response = await fetch(absolute);
  } catch (e) {
    throw new Error(`could not download ${absolute}: ${e.message || e}`);
  }
  if (!response.ok) {
    throw new Error(`could not download ${absolute}: HTTP ${response.status} ${response.statusText}`.trim());
  }
  // A compressed response's Content-Length counts the compressed bytes.
  const length = response.headers.get("Content-Length");
  const total = length !== null && !response.headers.get("Content-Encoding") ? Number(length) : undefined;
  const file = new ModelBytes(name, total);
  const cache = await cacheWriter(dir, key);
  try {
    const got = await pour(response.body, file, total, `downloading ${name}`, cache);
    if (total !== undefined && got !== total) {
      throw new Error(`downloading ${name} broke off after ${size(got)} of ${size(total)}`);
    }
    if (cache) await cache.close({ url: absolute, bytes: got });
  } catch (e) {
    file.free();
    if (cache) await cache.abort();
    throw e;
  }
  return { file, source: "network" };
}

// Builds a model from `file` (a ModelBytes, consumed; undefined: the embedded model) and makes
// it the worker's. A failure leaves the previous model in place. Resolves to what the page
// shows of it.
async function load(file, label) {
  status(`Loading ${label || "the embedded model"} on ${backend}…`);
  const t0 = performance.now();
  const next = await createSession(backend, file, maxBufferBytes, weightsParam);
  if (session) session.free();
  session = next;
  const loadSeconds = (performance.now() - t0) / 1000;
  return { about: session.about, chat: session.chat, backend, load_s: loadSeconds };
}

// The model at `url` (cache first), with where it came from and how long the fetch took.
async function loadUrl(url) {
  const t0 = performance.now();
  status(`Fetching ${url}…`);
  const { file, source } = await fetchModel(url);
  const bytes = file.length;
  const fetchSeconds = (performance.now() - t0) / 1000;
  return { source, bytes, fetch_s: fetchSeconds, ...(await load(file, url)) };
}

async function readPicked(picked) {
  const file = new ModelBytes(picked.name, picked.size);
  try {
    await pour(picked.stream(), file, picked.size, `reading ${picked.name}`, null);
  } catch (e) {
    file.free();
    throw e;
  }
  return file;
}

// --- fixture checks (used by test.sh through the page's `rwkvTest`) -------------------------

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

// An ArrayBuffer as a ModelBytes.
function modelBytes(buffer, name) {
  const file = new ModelBytes(name, buffer.byteLength);
  file.push(new Uint8Array(buffer));
  return file;
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.arrayBuffer();
}

// The worst error of `got` against `want` over `atol + rtol·|want|` and how many exceed it
// (NaN counts as one).
function compare(got, want, atol, rtol, what) {
  if (got.length !== want.length) throw new Error(`${what}: ${got.length} logits, expected ${want.length}`);
  let worst = 0, bad = 0;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    const allowed = atol + rtol * Math.abs(want[i]);
    worst = Math.max(worst, err / allowed);
    if (!(err <= allowed)) bad += 1;
  }
  return { worst_error_over_tolerance: worst, failures: bad };
}

// Logits of one fixture model (`file` of the fixture folder `version`), full / step /
// chunked, against the official package's (`expected`); `limit` is the largest buffer to hold
// a tensor in (the adapter's by default), `weights` the precision to load in.
async function checkFixture({
  version, limit = maxBufferBytes, file = "weights.safetensors",
  expected: expectedFile = "expected.safetensors", weights = undefined,
}) {
  const dir = `fixtures/${version}`;
  const [bytes, expectedBytes, meta] = await Promise.all([
    fetchBytes(`${dir}/${file}`), fetchBytes(`${dir}/${expectedFile}`),
    fetch(`${dir}/meta.json`).then((r) => r.json()),
  ]);
  const expected = readSafetensors(expectedBytes);
  const model = await createSession(backend, modelBytes(bytes, `${version}/${file}`), limit, weights);
  const tokens = Uint32Array.from(expected.tokens.values);
  const modes = {
    full: [tokens.length],
    step: Array(tokens.length).fill(1),
    chunked: meta.chunks,
  };
  const report = { version, file, ok: true, limit: limit ?? null, about: model.about };
  try {
    for (const [mode, chunks] of Object.entries(modes)) {
      const got = await model.logits(tokens, Uint32Array.from(chunks));
      report[mode] = compare(got, expected[`logits_${mode}`].values, 1e-4, 1e-4, `${version} ${mode}`);
      if (report[mode].failures > 0) report.ok = false;
    }
  } finally {
    model.free();
  }
  return report;
}

// What building the fixture's RWKV-7 says when not one row of its embedding fits `limit`.
async function refusal({ limit }) {
  const weights = await fetchBytes("fixtures/rwkv7/weights.safetensors");
  return createSession(backend, modelBytes(weights, "big.safetensors"), limit)
    .then((s) => { s.free(); return "not refused"; }, (e) => String(e.message || e));
}

// A model by URL (through the cache) in the precision `weights`, at the worker's binding
// limit: its logits for `tokens` in one sequence call against `referenceUrl`'s `logits`
// [T, V] within 1e-3 + 1e-3·|x|; then prompt and decode speed of a short generation.
async function bigModel({ modelUrl, referenceUrl, tokens, weights, decodeTokens = 4 }) {
  const t0 = performance.now();
  const { file, source } = await fetchModel(modelUrl);
  const bytes = file.length;
  const fetchSeconds = (performance.now() - t0) / 1000;
  console.log(`${modelUrl}: ${size(bytes)} from the ${source} in ${fetchSeconds.toFixed(1)} s`);
  const model = await createSession(backend, file, maxBufferBytes, weights);
  const loadSeconds = (performance.now() - t0) / 1000 - fetchSeconds;
  console.log(`${model.about}: built in ${loadSeconds.toFixed(1)} s`);
  const report = {
    ok: true, backend, about: model.about, source, bytes, limit: maxBufferBytes ?? null,
    shader_f16: shaderF16, fetch_s: fetchSeconds, load_s: loadSeconds,
  };
  try {
    const want = readSafetensors(await fetchBytes(referenceUrl)).logits.values;
    const t1 = performance.now();
    const got = await model.logits(Uint32Array.from(tokens), Uint32Array.from([tokens.length]));
    report.prompt_tokens_per_s = tokens.length / ((performance.now() - t1) / 1000);
    const result = compare(got, want, 1e-3, 1e-3, modelUrl);
    Object.assign(report, result, { ok: result.failures === 0 });
    let first = null, last = null, count = 0;
    await model.generate("\n", decodeTokens, 1.0, 0.85, 1, () => {
      last = performance.now();
      if (first === null) first = last;
      count += 1;
      return true;
    });
    report.decode_tokens_per_s = count > 1 ? (count - 1) / ((last - first) / 1000) : null;
    const dispatches = await model.decodeDispatches();
    report.decode_step_dispatches = dispatches ? dispatches.total : null;
  } finally {
    model.free();
  }
  return report;
}

// --- the calls the page makes ------------------------------------------------------------------

const methods = {
  // Starts the wasm module and the device, then loads `model` (a URL) or the embedded model.
  async start({ wanted, pageHasGpu, maxBuffer, weights, model }) {
    await init();
    weightsParam = weights || undefined;
    backend = await chooseBackend(wanted, pageHasGpu, maxBuffer);
    const loaded = model ? await loadUrl(model) : await load(undefined, undefined);
    return { ...loaded, max_buffer: maxBufferBytes ?? null, shader_f16: shaderF16 };
  },
  loadUrl: ({ url }) => loadUrl(url),
  async loadFile({ file }) {
    return load(await readPicked(file), file.name);
  },
  async loadEmbedded() {
    return load(undefined, undefined);
  },
  async forgetCache() {
    const root = await navigator.storage.getDirectory();
    await root.removeEntry("rwkv-models", { recursive: true }).catch(() => {});
  },

  // Generates after `prompt`, or, given `messages` ([{ role, text }]) for a World model, the
  // assistant's next turn in the chat format (stopping at the turn's end). Sends the prompt
  // as rendered, then one `token` event per token; resolves to the result with the prompt's
  // length in tokens.
  async generate({ prompt, messages, max, temperature, top_p, seed }, id) {
    if (!session) throw new Error("no model is loaded");
    const chat = Boolean(messages);
    if (chat) prompt = Session.chatPrompt(messages.map((m) => m.role), messages.map((m) => m.text));
    post({ event: "prompt", id, text: prompt });
    stopRequested = false;
    const result = await session.generate(prompt, max, temperature, top_p, seed, (text) => {
      post({ event: "token", id, text });
      return !stopRequested;
    }, chat ? ["\n\n"] : []);
    return { ...result, prompt_tokens: session.encode(prompt).length, backend };
  },
  // The GPU dispatches of one decode step of the worker's model (null on the CPU).
  decodeDispatches: () => session.decodeDispatches(),
  checkFixture,
  refusal,
  bigModel,
};

onmessage = async ({ data }) => {
  const { id, method, args } = data;
  if (method === "stop") {
    stopRequested = true;
    return;
  }
  try {
    const call = methods[method];
    if (!call) throw new Error(`the worker has no method '${method}'`);
    post({ id, result: await call(args || {}, id) });
  } catch (e) {
    // A trap (a Rust panic, running out of memory) leaves the wasm instance unusable.
    const fatal = e instanceof WebAssembly.RuntimeError;
    post({ id, error: String(e && e.message ? e.message : e), fatal });
  }
};
