// The page's user interface. The model runs in a Web Worker (`worker.js`): this thread only
// sends it calls and shows what comes back, so the page stays responsive while a model loads
// or generates; plus `window.rwkvTest`, the hooks `test.sh` calls.
//
// Query parameters: `backend=webgpu|cpu`, `model=URL` (a safetensors file, downloaded once
// and then read from the Origin Private File System), `weights=f32|f16|bf16|q8|q4` (default:
// the file's own precision), `max_buffer=BYTES` (pretend the adapter binds no more than this).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// --- the main thread's own pulse -----------------------------------------------------------
// A timer that should fire every 10 ms; the longest gap between two of its ticks is how long
// the page was frozen. `rwkvTest.timer()` reads it, `rwkvTest.resetTimer()` starts over.
const pulse = { ticks: 0, last: performance.now(), maxGapMs: 0 };
setInterval(() => {
  const now = performance.now();
  pulse.maxGapMs = Math.max(pulse.maxGapMs, now - pulse.last);
  pulse.last = now;
  pulse.ticks += 1;
}, 10);

// --- the worker --------------------------------------------------------------------------------

let worker = null;
let nextId = 1;
// Calls in flight: id -> { resolve, reject, onEvent }.
const pending = new Map();

function startWorker() {
  worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  worker.onmessage = ({ data }) => {
    if (data.event) {
      if (data.event === "progress") showProgress(data);
      else if (data.event === "status") $("status").textContent = data.text;
      else pending.get(data.id)?.onEvent?.(data);
      return;
    }
    const call = pending.get(data.id);
    if (!call) return;
    pending.delete(data.id);
    if (data.error === undefined) {
      call.resolve(data.result);
    } else {
      call.reject(new Error(data.error));
      if (data.fatal) restartWorker(data.error);
    }
  };
  // The worker script failed to load or threw outside a call.
  worker.onerror = (event) => {
    event.preventDefault();
    restartWorker(event.message || "the model's worker stopped");
  };
}

// Calls `method` in the worker; `onEvent` receives the call's prompt and token events.
function call(method, args = {}, onEvent = undefined) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onEvent });
    worker.postMessage({ id, method, args });
  });
}

// A trapped wasm instance cannot be trusted again: every call in flight fails with `why`,
// and a new worker starts with the embedded model, so the page keeps working.
function restartWorker(why) {
  worker.terminate();
  for (const { reject } of pending.values()) reject(new Error(why));
  pending.clear();
  showError(new Error(`${why} (the model was unloaded; starting again with the embedded model)`));
  startWorker();
  ready = startModel(null);
  ready.catch(showError);
}

// --- what the page shows -------------------------------------------------------------------

let backend = null;
let model = null;  // { about, chat, backend, load_s, ... } of the loaded model

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

// A progress event from the worker (label null: done).
function showProgress({ label, done, total, rate }) {
  const bar = $("progress");
  if (label === null) {
    bar.hidden = true;
    $("progress-text").textContent = "";
    return;
  }
  bar.hidden = false;
  if (total) bar.max = total; else bar.removeAttribute("max");
  bar.value = done;
  $("progress-text").textContent = `${label}: ${size(done)}${total ? ` of ${size(total)}` : ""}` +
    (rate ? `, ${size(rate)}/s` : "");
}

// Runs a load in the worker (`method` with `args`) and makes its model the page's; a failure
// leaves the previous model in place.
async function load(method, args) {
  $("go").disabled = true;
  try {
    const loaded = await call(method, args);
    model = loaded;
    backend = loaded.backend;
    history = [];
    showMode();
    $("status").textContent = `${loaded.about} (loaded in ${loaded.load_s.toFixed(1)} s)`;
    return loaded;
  } finally {
    $("go").disabled = !model;
  }
}

// Loads the model at `url` (cache first); resolves to where it came from and how long it took.
const loadUrl = (url) => load("loadUrl", { url });

// The conversation so far when the model is a World model (the page is a chat box then; a
// completion box for byte-level models): [{ role, text }].
let history = [];

function showMode() {
  const chat = Boolean(model && model.chat);
  $("prompt-label").textContent = chat ? "Message" : "Prompt";
  $("go").textContent = chat ? "Send" : "Generate";
  $("new-chat").hidden = !chat;
}

// Generates into the page (a reply to the message, for a World model); resolves to the
// result and timings.
async function generate() {
  $("go").disabled = true;
  $("stop").disabled = false;
  const out = $("output");
  out.textContent = "";
  const chat = model.chat;
  const text = $("prompt").value;
  if (chat) history.push({ role: "user", text });
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  const textNode = document.createTextNode("");
  out.append(promptSpan, textNode);
  const start = performance.now();
  let first = null, last = null, count = 0;
  try {
    const result = await call("generate", {
      prompt: chat ? undefined : text,
      messages: chat ? history : undefined,
      max: Number($("max").value), temperature: Number($("temperature").value),
      top_p: Number($("top_p").value), seed: Number($("seed").value),
    }, (event) => {
      if (event.event === "prompt") {
        promptSpan.textContent = event.text;
        return;
      }
      last = performance.now();
      if (first === null) first = last;
      count += 1;
      textNode.appendData(event.text);
    });
    if (chat) {
      history.push({ role: "assistant", text: result.text.trim() });
      $("prompt").value = "";
    }
    // The first token arrives after the prompt is read and one token sampled: prompt speed
    // counts the prompt's tokens up to it, decode speed the tokens after it.
    const prefillMs = first === null ? 0 : first - start;
    const decodeRate = count > 1 ? (count - 1) / ((last - first) / 1000) : 0;
    const stats = {
      backend,
      prefill_ms: prefillMs,
      prompt_tokens_per_s: prefillMs > 0 ? result.prompt_tokens / (prefillMs / 1000) : 0,
      decode_tokens_per_s: decodeRate,
      total_s: (performance.now() - start) / 1000,
    };
    $("stats").textContent = `${result.tokens} tokens on ${backend}: prompt ${result.prompt_tokens} tokens ` +
      `at ${stats.prompt_tokens_per_s.toFixed(1)} tokens/s, decode ${decodeRate.toFixed(1)} tokens/s ` +
      `(stopped: ${result.stop})`;
    return { ...result, ...stats };
  } catch (e) {
    if (chat) history.pop();
    throw e;
  } finally {
    $("go").disabled = !model;
    $("stop").disabled = true;
  }
}

// --- fixture checks (used by test.sh) --------------------------------------------------------

// The Stop button: a long generation, stopped as a reader would once its first text shows,
// ends early ("Cancelled") and the page generates again after it.
async function stopCheck(maxTokens = 4000) {
  $("max").value = maxTokens;
  const running = generate();
  const started = performance.now();
  // The generated text is the output's second node (the first is the prompt).
  const shown = () => ($("output").childNodes[1]?.length ?? 0) > 0;
  while (!shown() && performance.now() - started < 600_000) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  $("stop").click();
  const stopped = await running;
  $("max").value = 2;
  const after = await generate();
  const ok = stopped.stop === "Cancelled" && stopped.tokens < maxTokens && after.tokens === 2;
  return { ok, stop: stopped.stop, tokens: stopped.tokens, after: after.tokens };
}

window.rwkvTest = {
  // Every fixture version in the worker, then a generation with the embedded model in the page.
  async run(versions = ["rwkv4", "rwkv5", "rwkv6", "rwkv7"], maxTokens = 64,
    ggufChecks = [["gguf_rwkv7", "q8_0"], ["gguf_rwkv6", "q4_0"]], pthChecks = ["rwkv7"],
    hfChecks = ["hf_rwkv7_fla"]) {
    // How the page started: the embedded model's load time (`load_s`), the backend.
    const start = await ready;
    const fixtures = [];
    console.log(`backend: ${backend}`);
    // llama.cpp's GGUF files too, read from memory and dequantized to f32, against the
    // package on the file's dequantized weights (the fixtures README's GGUF section).
    // And the official `.pth` (the file the package itself loaded), read from memory, and a
    // Hugging Face RWKV-7 folder's `model.safetensors` on its own.
    const checks = [...versions.map((version) => ({ version })),
      ...ggufChecks.map(([version, kind]) => ({
        version, file: `model-${kind}.gguf`, expected: `expected-${kind}.safetensors`, weights: "f32",
      })),
      ...pthChecks.map((version) => ({ version, file: "weights.pth" })),
      ...hfChecks.map((version) => ({ version, file: "model.safetensors" }))];
    for (const check of checks) {
      fixtures.push(await call("checkFixture", check));
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
      split = await call("checkFixture", { version: "rwkv7", limit: 24576 });
      console.log(JSON.stringify(split));
      oversized = await call("refusal", { limit: 128 });
    }
    // GPU dispatches of one decode step of the embedded model (null on the CPU).
    const dispatches = await call("decodeDispatches");
    const stopped = await stopCheck();
    console.log(JSON.stringify(stopped));
    const refused = backend !== "webgpu" || /big\.safetensors: tensor 'emb\.weight' needs a buffer of 256 bytes, more than the device allows in one \(128 bytes\)/.test(oversized);
    const ok = fixtures.every((f) => f.ok) && split.ok && generation.text.length > 0 &&
      warm.text === generation.text && refused && stopped.ok;
    return { ok, backend, start, fixtures, split, generation, warm, oversized, dispatches, stopped };
  },

  // A model by URL (through the cache) in the precision `weights` against native logits;
  // see `bigModel` in worker.js.
  async bigModel(modelUrl, referenceUrl, tokens, weights, decodeTokens = 4) {
    await ready;
    return call("bigModel", { modelUrl, referenceUrl, tokens, weights, decodeTokens });
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
    await loadUrl(goodUrl);
    $("max").value = 4;
    const generation = await generate();
    const checks = {
      missing: /could not download .*missing\/none\.safetensors: HTTP 404/.test(missing),
      cut: /downloading .* broke off after/.test(cut),
      not_model: /index\.html is not a model file/.test(notModel),
      shown: shown === notModel,
      after: generation.tokens > 0,
    };
    return { ok: Object.values(checks).every(Boolean), checks, missing, cut, not_model: notModel };
  },

  // The main thread's timer since the page opened (or the last reset): how many ticks and
  // the longest gap between two, in milliseconds.
  timer: () => ({ ticks: pulse.ticks, max_gap_ms: pulse.maxGapMs }),
  resetTimer() {
    pulse.ticks = 0;
    pulse.maxGapMs = 0;
    pulse.last = performance.now();
  },
};

// Starts the worker's device and loads `url` or the embedded model.
async function startModel(url) {
  const forced = Number(params.get("max_buffer"));
  const loaded = await load("start", {
    wanted: params.get("backend") || "auto",
    pageHasGpu: Boolean(navigator.gpu),
    maxBuffer: Number.isSafeInteger(forced) && forced > 0 ? forced : undefined,
    weights: params.get("weights") || undefined,
    model: url || undefined,
  });
  // Seconds from the page's navigation until its model is ready: the page load time a reader
  // waits (the worker's wasm download and compile, the device, the model).
  return { ...loaded, page_ready_s: performance.now() / 1000 };
}

// The model the page starts with: `?model=URL`, or the embedded one. What the start did is
// kept for the test (`rwkvTest.ready`).
startWorker();
let ready = startModel(params.get("model"));
ready.catch(showError);
window.rwkvTest.ready = ready.then(
  (start) => ({ ok: true, backend, start: { ...start, source: start.source ?? "embedded" } }),
  (e) => ({ ok: false, error: String(e) }));

$("go").addEventListener("click", () => generate().catch(showError));
$("stop").addEventListener("click", () => worker.postMessage({ method: "stop" }));
$("new-chat").addEventListener("click", () => {
  history = [];
  $("output").textContent = "";
});
$("file").addEventListener("change", (event) => {
  const picked = event.target.files[0];
  if (picked) load("loadFile", { file: picked }).catch(showError);
});
$("load-url").addEventListener("click", () => {
  const url = $("url").value.trim();
  if (url) loadUrl(url).catch(showError);
});
$("clear-cache").addEventListener("click", () => {
  call("forgetCache").then(() => { $("status").textContent = "Cached models forgotten."; }, showError);
});
