// The page's logic: pick a backend, load a model (embedded, by URL with a cache, or picked),
// stream generated text; plus `window.rwkvTest`, the hooks `test.sh` calls to check the page
// against the reference fixtures.
//
// Query parameters: `backend=webgpu|cpu`, `model=URL` (a safetensors file, downloaded once
// and then read from the Origin Private File System), `weights=f32|f16|bf16|q8|q4` (default:
// the file's own precision), `max_buffer=BYTES` (pretend the adapter binds no more than this).
import init, { createSession, ModelBytes, Session } from "./pkg/rwkv_burn_web.js";

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
  if (adapter) {
    maxBufferBytes = adapter.limits.maxStorageBufferBindingSize;
    const forced = Number(params.get("max_buffer"));
    if (Number.isSafeInteger(forced) && forced > 0) maxBufferBytes = Math.min(maxBufferBytes, forced);
    shaderF16 = adapter.features.has("shader-f16");
  }
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
let loadSeconds = 0;
let maxBufferBytes = undefined;  // the WebGPU adapter's maxStorageBufferBindingSize
let shaderF16 = false;  // whether the adapter has `shader-f16`
const weightsParam = params.get("weights") || undefined;

function showError(e) {
  $("status").innerHTML = "";
  const span = document.createElement("span");
  span.className = "error";
  span.textContent = String(e && e.message ? e.message : e);
  $("status").append(span);
}

const MiB = 1 << 20;
function size(n) {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  return n >= MiB ? `${(n / MiB).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

function progress(label, done, total, rate) {
  const bar = $("progress");
  bar.hidden = false;
  if (total) bar.max = total; else bar.removeAttribute("max");
  bar.value = done;
  $("progress-text").textContent = `${label}: ${size(done)}${total ? ` of ${size(total)}` : ""}` +
    (rate ? `, ${size(rate)}/s` : "");
}

function progressDone() {
  $("progress").hidden = true;
  $("progress-text").textContent = "";
}

// Pours a stream of byte chunks into `file` (a ModelBytes: wasm memory, so JavaScript never
// holds the whole file) and into `cache` (or null), showing progress. Resolves to the bytes.
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
        progress(label, got, total, got / Math.max((now - start) / 1000, 1e-3));
      }
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    // A push that refused (too large, more than announced) says so itself.
    if (/more bytes arrived|more than a page can load/.test(e && e.message)) throw e;
    throw new Error(`${label} broke off after ${size(got)}${total ? ` of ${size(total)}` : ""}: ${e.message || e}`);
  } finally {
    progressDone();
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

// Forgets every cached model.
async function clearCache() {
  const root = await navigator.storage.getDirectory();
  await root.removeEntry("rwkv-models", { recursive: true }).catch(() => {});
}

// Builds a model from `file` (a ModelBytes, consumed; undefined: the embedded model) and makes
// it the page's. A failure leaves the previous model in place.
async function load(file, label) {
  $("go").disabled = true;
  $("status").textContent = `Loading ${label || "the embedded model"} on ${backend}…`;
  const t0 = performance.now();
  try {
    const next = await createSession(backend, file, maxBufferBytes, weightsParam);
    if (session) session.free();
    session = next;
    history = [];
    showMode();
    loadSeconds = (performance.now() - t0) / 1000;
    $("status").textContent = `${session.about} (loaded in ${loadSeconds.toFixed(1)} s)`;
    return session;
  } finally {
    $("go").disabled = !session;
  }
}

// Loads the model at `url` (cache first); resolves to where it came from and how long it took.
async function loadUrl(url) {
  const t0 = performance.now();
  $("status").textContent = `Fetching ${url}…`;
  const { file, source } = await fetchModel(url);
  const bytes = file.length;
  const fetchSeconds = (performance.now() - t0) / 1000;
  await load(file, url);
  return { source, bytes, fetch_s: fetchSeconds, load_s: loadSeconds, about: session.about };
}

async function loadPicked(picked) {
  const file = new ModelBytes(picked.name, picked.size);
  try {
    await pour(picked.stream(), file, picked.size, `reading ${picked.name}`, null);
  } catch (e) {
    file.free();
    throw e;
  }
  return load(file, picked.name);
}

// The conversation so far when the model is a World model (the page is a chat box then; a
// completion box for byte-level models): [{ role, text }].
let history = [];
// Set by the Stop button; the token callback returns false on seeing it.
let stopRequested = false;

function showMode() {
  const chat = Boolean(session && session.chat);
  $("prompt-label").textContent = chat ? "Message" : "Prompt";
  $("go").textContent = chat ? "Send" : "Generate";
  $("new-chat").hidden = !chat;
}

// Generates into the page (a reply to the message, for a World model); resolves to the
// result and timings.
async function generate() {
  $("go").disabled = true;
  $("stop").disabled = false;
  stopRequested = false;
  const out = $("output");
  out.textContent = "";
  const chat = session.chat;
  let prompt = $("prompt").value;
  if (chat) {
    history.push({ role: "user", text: prompt });
    prompt = Session.chatPrompt(history.map((m) => m.role), history.map((m) => m.text));
  }
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = prompt;
  const textNode = document.createTextNode("");
  out.append(promptSpan, textNode);
  const start = performance.now();
  let first = null, last = null, count = 0;
  try {
    const result = await session.generate(
      prompt, Number($("max").value), Number($("temperature").value),
      Number($("top_p").value), Number($("seed").value),
      (text) => {
        last = performance.now();
        if (first === null) first = last;
        count += 1;
        textNode.appendData(text);
        return !stopRequested;
      },
      chat ? ["\n\n"] : []);
    if (chat) {
      history.push({ role: "assistant", text: result.text.trim() });
      $("prompt").value = "";
    }
    // The first callback comes after the prompt is read and one token sampled: prompt speed
    // counts the prompt's tokens up to it, decode speed the tokens after it.
    const promptTokens = session.encode(prompt).length;
    const prefillMs = first === null ? 0 : first - start;
    const decodeRate = count > 1 ? (count - 1) / ((last - first) / 1000) : 0;
    const stats = {
      tokens: result.tokens, stop: result.stop, backend,
      prompt_tokens: promptTokens,
      prefill_ms: prefillMs,
      prompt_tokens_per_s: prefillMs > 0 ? promptTokens / (prefillMs / 1000) : 0,
      decode_tokens_per_s: decodeRate,
      total_s: (performance.now() - start) / 1000,
    };
    $("stats").textContent = `${stats.tokens} tokens on ${backend}: prompt ${promptTokens} tokens ` +
      `at ${stats.prompt_tokens_per_s.toFixed(1)} tokens/s, decode ${decodeRate.toFixed(1)} tokens/s ` +
      `(stopped: ${stats.stop})`;
    return { ...result, ...stats };
  } catch (e) {
    if (chat) history.pop();
    throw e;
  } finally {
    $("go").disabled = false;
    $("stop").disabled = true;
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

// Logits of one fixture model, full / step / chunked, against the official package's;
// `limit` is the largest buffer to hold a tensor in (the adapter's by default).
async function checkFixture(version, limit = maxBufferBytes) {
  const dir = `fixtures/${version}`;
  const [weights, expectedBytes, meta] = await Promise.all([
    fetchBytes(`${dir}/weights.safetensors`), fetchBytes(`${dir}/expected.safetensors`),
    fetch(`${dir}/meta.json`).then((r) => r.json()),
  ]);
  const expected = readSafetensors(expectedBytes);
  const model = await createSession(backend, modelBytes(weights, `${version}/weights.safetensors`), limit);
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
      oversized = await createSession(backend, modelBytes(weights, "big.safetensors"), 128)
        .then((s) => { s.free(); return "not refused"; }, (e) => String(e.message || e));
    }
    // GPU dispatches of one decode step of the embedded model (null on the CPU).
    const dispatches = await session.decodeDispatches();
    const refused = backend !== "webgpu" || /big\.safetensors: tensor 'emb\.weight' needs a buffer of 256 bytes, more than the device allows in one \(128 bytes\)/.test(oversized);
    const ok = fixtures.every((f) => f.ok) && split.ok && generation.text.length > 0 &&
      warm.text === generation.text && refused;
    return { ok, backend, fixtures, split, generation, warm, oversized, dispatches };
  },

  // A model by URL (through the cache, as the page loads one) in the precision `weights`, at
  // the page's binding limit (`?max_buffer=` forces one): its logits for `tokens` in one
  // sequence call against `referenceUrl`'s `logits` [T, V] (native flex on the same file and
  // precision) within 1e-3 + 1e-3·|x|; then prompt and decode speed of a short generation.
  async bigModel(modelUrl, referenceUrl, tokens, weights, decodeTokens = 4) {
    await ready;
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
      console.log(`${tokens.length} tokens' logits in ${((performance.now() - t1) / 1000).toFixed(1)} s`);
      let worst = 0, bad = 0;
      if (got.length !== want.length) throw new Error(`${got.length} logits, expected ${want.length}`);
      for (let i = 0; i < want.length; i++) {
        const err = Math.abs(got[i] - want[i]);
        const allowed = 1e-3 + 1e-3 * Math.abs(want[i]);
        worst = Math.max(worst, err / allowed);
        if (!(err <= allowed)) bad += 1;
      }
      Object.assign(report, { worst_error_over_tolerance: worst, failures: bad, ok: bad === 0 });
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
  },

  // A generation in the page with its own settings (what a reader sees).
  async generatePage() {
    await ready;
    return generate();
  },

  // Loads `url` as the page's model (`?model=` does this at start); says whether the bytes
  // came from the network or the cache.
  async loadUrl(url) {
    await ready;
    return { ok: true, ...(await loadUrl(url)) };
  },

  // What the page says for a URL that fails, a download cut short (`cut/` makes the test
  // server send half of the file it announces), and a file that is not a model; then that
  // `goodUrl` still loads and generates on the same device.
  async badInputs(goodUrl) {
    await ready;
    const attempt = async (url) => {
      try {
        await loadUrl(url);
        return "loaded";
      } catch (e) {
        showError(e);
        return String(e.message || e);
      }
    };
    const missing = await attempt("missing/none.safetensors");
    const cut = await attempt(`cut/${goodUrl}`);
    const notModel = await attempt("index.html");
    const shown = $("status").textContent;
    const after = await loadUrl(goodUrl);
    $("max").value = 4;
    const generation = await generate();
    const checks = {
      missing: /could not download .*missing\/none\.safetensors: HTTP 404/.test(missing),
      cut: /downloading .* broke off after/.test(cut),
      not_model: /index\.html is not a model file/.test(notModel),
      shown: shown === notModel,
      after: generation.tokens > 0,
    };
    return { ok: Object.values(checks).every(Boolean), checks, missing, cut, not_model: notModel, after };
  },
};

// The model the page starts with: `?model=URL`, or the embedded one. What the start did is
// kept for the test (`rwkvTest.start`).
let start = null;
const ready = (async () => {
  await init();
  backend = await chooseBackend();
  const url = params.get("model");
  if (url) {
    start = await loadUrl(url);
  } else {
    await load(undefined, undefined);
  }
})();
ready.catch(showError);
window.rwkvTest.ready = ready.then(() => ({ ok: true, backend, start }), (e) => ({ ok: false, error: String(e) }));

$("go").addEventListener("click", () => generate().catch(showError));
$("stop").addEventListener("click", () => { stopRequested = true; });
$("new-chat").addEventListener("click", () => {
  history = [];
  $("output").textContent = "";
});
$("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  try {
    await loadPicked(file);
  } catch (e) {
    showError(e);
  }
});
$("load-url").addEventListener("click", () => {
  const url = $("url").value.trim();
  if (url) loadUrl(url).catch(showError);
});
$("clear-cache").addEventListener("click", () => {
  clearCache().then(() => { $("status").textContent = "Cached models forgotten."; }, showError);
});
