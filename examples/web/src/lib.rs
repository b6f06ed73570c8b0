//! rwkv-burn in the browser: a wasm-bindgen wrapper around the generation pipeline of
//! `rwkv-burn-infer`, on WebGPU (Burn's wgpu backend compiled for the web) or, where the
//! browser has no `navigator.gpu`, on the flex CPU backend. `index.html` is the page that uses
//! it; `test.sh` drives that page in headless Chromium.
//!
//! Every read-back from the GPU is asynchronous in a browser, so the methods that run the
//! model return promises and use the pipeline's `*_async` paths.
#![cfg(target_arch = "wasm32")]

use burn::tensor::Device;
use rwkv_burn::load::Checkpoint;
use rwkv_burn::tokenizer::Tokenizer;
use rwkv_burn::{Rwkv, State};
use rwkv_burn_infer::generate::{GenerateOptions, Pipeline};
use rwkv_burn_infer::logits::{RunMode, run_logits_async};
use rwkv_burn_infer::sampler::SamplerConfig;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// A model, its tokenizer and the device it lives on.
#[wasm_bindgen]
pub struct Session {
    inner: Rc<Inner>,
}

struct Inner {
    model: Rwkv,
    tokenizer: Box<dyn Tokenizer>,
    device: Device,
    backend: &'static str,
    about: String,
}

thread_local! {
    /// Burn's WebGPU runtime can be initialised once per page; later sessions share it.
    static WEBGPU: std::cell::RefCell<Option<Device>> = const { std::cell::RefCell::new(None) };
}

/// Opens the device for `backend` (`"webgpu"` or `"cpu"`).
async fn open_device(backend: &str) -> Result<(Device, &'static str), JsError> {
    match backend {
        "webgpu" => {
            if let Some(device) = WEBGPU.with_borrow(Clone::clone) {
                return Ok((device, "webgpu"));
            }
            let device = Device::wgpu_options()
                .init_async()
                .await
                .map_err(|e| JsError::new(&format!("WebGPU initialisation failed: {e}")))?;
            WEBGPU.set(Some(device.clone()));
            Ok((device, "webgpu"))
        }
        "cpu" => Ok((Device::flex(), "cpu")),
        other => Err(JsError::new(&format!(
            "unknown backend '{other}' (known: webgpu, cpu)"
        ))),
    }
}

/// The most bytes one piece of a file may have: a Rust allocation is at most `isize::MAX`
/// bytes, 2 GiB - 1 on wasm32. (Measured 2026-12-04: the RWKV-7 1.5B shape in q8, 2.02 GiB,
/// could not be reserved in one piece.)
const MAX_PIECE_BYTES: u64 = (1 << 31) - 1;

/// The most bytes a model file may have in the page: its 4 GiB of wasm memory holds the file
/// while it loads, beside the runtime and the largest tensor's f32 copy (a World model's
/// 65536-row head: 512 MiB at 2048 channels). Only a safetensors file of known length can be
/// over [`MAX_PIECE_BYTES`]: it is held in parts cut at tensor boundaries ([`PART_BYTES`]).
const MAX_MODEL_BYTES: u64 = (4 << 30) - (640 << 20);

/// The most bytes a model file may have on the CPU fallback, where the weights are packed
/// into the same 4 GiB beside the file (about as many bytes again) while it builds. Measured
/// 2026-12-04: the RWKV-7 1.5B shape in 4-bit (1.46 GiB) builds and runs; in 8-bit (2.02 GiB)
/// the wasm instance ran out of memory while building.
const MAX_CPU_MODEL_BYTES: u64 = 7 << 28;

/// A safetensors file is held in parts of about this many bytes, cut between tensors (a
/// tensor larger than this is a part of its own).
const PART_BYTES: u64 = 256 << 20;

/// A model file arriving in pieces (a download, a cached file, a picked file), gathered in
/// the page's wasm memory as it comes: JavaScript hands each chunk over and keeps none, so
/// the file is never held whole twice (once in JavaScript, once here).
#[wasm_bindgen]
pub struct ModelBytes {
    name: String,
    /// The file so far, in consecutive parts: one, until the header of a safetensors file of
    /// known length has arrived; then the rest goes into parts that end where `ends` says.
    parts: Vec<Vec<u8>>,
    /// Where each planned part ends in the file; empty while the file is one piece.
    ends: Vec<u64>,
    /// Whether the file's first bytes have been looked at to choose one piece or parts.
    settled: bool,
    /// Bytes received.
    received: u64,
    /// The length announced (a download's `Content-Length`, a file's size), if any.
    expected: Option<u64>,
}

/// Why a file of `bytes` cannot be loaded in this page, and what would fit.
fn too_large(name: &str, bytes: u64) -> JsError {
    const GIB: f64 = (1u64 << 30) as f64;
    JsError::new(&format!(
        "{name} is {:.2} GiB, more than a page can load: WebAssembly gives a page 4 GiB of \
         memory, and the file is held there while it loads ({:.2} GiB at most for a \
         safetensors file, 2 GiB for other formats). What fits: on WebGPU, a World model of \
         1.5 billion parameters in 8-bit (`rwkv quantize --to q8`: 2.02 GiB), about 2.9 \
         billion in 4-bit (`--to q4`: about 2.7 GB). The CPU fallback also keeps the weights \
         in those 4 GiB: 1.5 billion in 4-bit (1.46 GiB)",
        bytes as f64 / GIB,
        MAX_MODEL_BYTES as f64 / GIB,
    ))
}

/// The browser would not give the page `bytes` more memory for `name`.
fn no_memory(name: &str, bytes: u64) -> JsError {
    JsError::new(&format!(
        "{name}: the browser did not give the page {:.2} GiB of memory for it; close other \
         tabs, reload the page, or load a smaller file (`rwkv quantize --to q4`)",
        bytes as f64 / (1u64 << 30) as f64
    ))
}

#[wasm_bindgen]
impl ModelBytes {
    /// An empty file named `name`; `expected` is its announced length, if known.
    #[wasm_bindgen(constructor)]
    pub fn new(name: String, expected: Option<f64>) -> Result<ModelBytes, JsError> {
        let expected = match expected {
            None => None,
            Some(n) if n.is_finite() && n >= 0.0 && n.fract() == 0.0 => Some(n as u64),
            Some(n) => return Err(JsError::new(&format!("{name}: invalid length {n}"))),
        };
        if let Some(n) = expected
            && n > MAX_MODEL_BYTES
        {
            return Err(too_large(&name, n));
        }
        Ok(ModelBytes {
            name,
            parts: vec![Vec::new()],
            ends: Vec::new(),
            settled: expected.is_none(),
            received: 0,
            expected,
        })
    }

    /// Appends the next piece of the file.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsError> {
        let len = self.received + chunk.len() as u64;
        if let Some(expected) = self.expected
            && len > expected
        {
            return Err(JsError::new(&format!(
                "{}: more bytes arrived than the {expected} announced",
                self.name
            )));
        }
        if len > MAX_MODEL_BYTES {
            return Err(too_large(&self.name, len));
        }
        if self.ends.is_empty() {
            if len > MAX_PIECE_BYTES {
                return Err(too_large(&self.name, len));
            }
            let piece = &mut self.parts[0];
            if piece.try_reserve(chunk.len()).is_err() {
                return Err(no_memory(&self.name, len));
            }
            piece.extend_from_slice(chunk);
            self.received = len;
            if !self.settled {
                self.settle()?;
            }
            return Ok(());
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            let k = self.parts.len() - 1;
            let room = self.ends[k] - self.received;
            if room == 0 {
                // `expected` bounds `len`, and the last part ends at `expected`.
                let size = self.ends[k + 1] - self.ends[k];
                let mut part = Vec::new();
                part.try_reserve_exact(size as usize)
                    .map_err(|_| no_memory(&self.name, size))?;
                self.parts.push(part);
                continue;
            }
            let take = room.min(rest.len() as u64) as usize;
            self.parts[k].extend_from_slice(&rest[..take]);
            self.received += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }

    /// Bytes received so far.
    #[wasm_bindgen(getter)]
    pub fn length(&self) -> f64 {
        self.received as f64
    }
}

impl ModelBytes {
    /// Chooses, once the first bytes are in, how the file is held: a safetensors file of
    /// known length (once its header is in) in parts cut between tensors, so no allocation
    /// passes wasm32's 2 GiB; anything else in one piece, reserved whole.
    fn settle(&mut self) -> Result<(), JsError> {
        let Some(expected) = self.expected else {
            self.settled = true;
            return Ok(());
        };
        let head = &self.parts[0];
        if head.len() < 9 && (head.len() as u64) < expected {
            return Ok(());
        }
        if rwkv_burn::load::sniff(head, Some(expected))
            == Some(rwkv_burn::load::Format::Safetensors)
        {
            let header_end = 8 + u64::from_le_bytes(head[..8].try_into().expect("9 bytes"));
            // safetensors allows headers of up to 100 MB; a longer one fails when read.
            if (head.len() as u64) < header_end && header_end <= expected.min(100_000_008) {
                return Ok(()); // the rest of the header is on its way
            }
            if let Some(ends) = rwkv_burn::load::safetensors_part_ends(head, expected, PART_BYTES) {
                let largest = ends
                    .iter()
                    .scan(0, |start, &end| Some(end - std::mem::replace(start, end)))
                    .max()
                    .unwrap_or(0);
                if largest > MAX_PIECE_BYTES {
                    return Err(too_large(&self.name, expected));
                }
                let first = (ends[0] - head.len() as u64) as usize;
                self.parts[0]
                    .try_reserve_exact(first)
                    .map_err(|_| no_memory(&self.name, ends[0]))?;
                self.ends = ends;
                self.settled = true;
                return Ok(());
            }
        }
        self.settled = true;
        if expected > MAX_PIECE_BYTES {
            return Err(too_large(&self.name, expected));
        }
        let rest = (expected - self.received) as usize;
        self.parts[0]
            .try_reserve_exact(rest)
            .map_err(|_| no_memory(&self.name, expected))
    }
}

/// The checkpoint in `file`, refusing what the page cannot read with a message that says
/// what to do instead.
fn open_checkpoint(file: ModelBytes) -> Result<Checkpoint, JsError> {
    let ModelBytes {
        name,
        mut parts,
        received,
        expected,
        ..
    } = file;
    if let Some(expected) = expected
        && received != expected
    {
        return Err(JsError::new(&format!(
            "{name}: the file ended after {received} of its {expected} bytes (a download that \
             broke off?); load it again"
        )));
    }
    if parts.len() > 1 {
        return Checkpoint::from_safetensors_parts(parts, &name)
            .map_err(|e| JsError::new(&e.to_string()));
    }
    let bytes = parts.pop().unwrap_or_default();
    let len = Some(bytes.len() as u64);
    let checkpoint = match rwkv_burn::load::sniff(&bytes, len) {
        Some(rwkv_burn::load::Format::Pth) => Checkpoint::from_pth_bytes(bytes, &name),
        Some(rwkv_burn::load::Format::Gguf) => Checkpoint::from_gguf_bytes(bytes, &name),
        Some(_) => Checkpoint::from_safetensors_bytes(bytes, &name),
        None => {
            return Err(JsError::new(&format!(
                "{name} is not a model file: it is neither safetensors nor a PyTorch or GGUF \
                 checkpoint (its first bytes: {:?})",
                String::from_utf8_lossy(&bytes[..bytes.len().min(16)])
            )));
        }
    };
    checkpoint.map_err(|e| JsError::new(&e.to_string()))
}

/// Loads a model on `backend`: a safetensors file ([`ModelBytes`]), or the embedded default
/// model when `model` is `undefined`.
///
/// `max_buffer_bytes` is the WebGPU adapter's `maxStorageBufferBindingSize`: the embedding and
/// projections larger than that are held in blocks of rows that fit (a World model's
/// 65536-row embedding and head exceed WebGPU's default 128 MiB); any other tensor that does
/// not fit is refused with a message instead of failing inside the GPU.
///
/// `weights` is the precision of the projections (`f32`, `f16`, `bf16`, `q8`, `q4`); by
/// default the file's own. On WebGPU f16 is held as f16 where the adapter has `shader-f16`
/// (each product widens it to f32); q8 and q4 as 8-bit blocks that the product kernel
/// dequantizes (`rwkv_burn::gpu`, 1.125 bytes a weight); bf16, which WGSL has no type for,
/// as f32 tensors of its exact values. On the CPU every format stays packed.
#[wasm_bindgen(js_name = createSession)]
pub async fn create_session(
    backend: String,
    model: Option<ModelBytes>,
    max_buffer_bytes: Option<f64>,
    weights: Option<String>,
) -> Result<Session, JsError> {
    let file_bytes = model.as_ref().map_or(0, |m| m.received);
    let (checkpoint, label) = match model {
        None => (
            rwkv_burn_infer::embedded::default_checkpoint()
                .map_err(|e| JsError::new(&e.to_string()))?,
            "<embedded default model>".to_string(),
        ),
        Some(file) => {
            let name = file.name.clone();
            (open_checkpoint(file)?, name)
        }
    };
    let format = match weights.as_deref() {
        None | Some("") | Some("stored") => rwkv_burn::load::stored_format(&checkpoint),
        Some(name) => name
            .parse::<rwkv_burn::WeightFormat>()
            .map_err(|e| JsError::new(&e.to_string()))?,
    };
    let (device, backend) = open_device(&backend).await?;
    if backend == "cpu" && file_bytes > MAX_CPU_MODEL_BYTES {
        return Err(JsError::new(&format!(
            "{label} is {:.2} GiB: on the CPU (no WebGPU here) the page holds the file and the \
             model's weights, about as much again, in WebAssembly's 4 GiB, so it takes files \
             up to {:.2} GiB. Load a smaller format (`rwkv quantize --to q4`) or use a \
             browser with WebGPU",
            file_bytes as f64 / (1u64 << 30) as f64,
            MAX_CPU_MODEL_BYTES as f64 / (1u64 << 30) as f64,
        )));
    }
    let limit = max_buffer_bytes
        .filter(|_| backend == "webgpu")
        .filter(|l| l.is_finite() && *l >= 1.0)
        .map(|l| l as u64);
    let config =
        rwkv_burn::load::detect_config(&checkpoint).map_err(|e| JsError::new(&e.to_string()))?;
    let (model, _) = rwkv_burn::model::build_limited(&checkpoint, &config, &device, format, limit)
        .map_err(|e| JsError::new(&e.to_string()))?;
    drop(checkpoint);
    let tokenizer = rwkv_burn::tokenizer::choose(None, model.vocab_size())
        .map_err(|e| JsError::new(&e.to_string()))?;
    let held = if !rwkv_burn::load::holds_format(&device, format) {
        format!("{format} values in f32")
    } else if backend == "webgpu" && format == rwkv_burn::WeightFormat::Q4 {
        // The GPU's block kernel reads 8-bit levels; q4's are widened (exactly) at load.
        "q4 values in 8-bit blocks".to_string()
    } else {
        format.name().to_string()
    };
    let about = format!(
        "{label}: {}, {} layers, {} channels, vocabulary {}, {held} weights, on {backend}",
        config.version,
        config.n_layer,
        config.n_embd,
        model.vocab_size()
    );
    Ok(Session {
        inner: Rc::new(Inner {
            model,
            tokenizer,
            device,
            backend,
            about,
        }),
    })
}

/// How long generation may hold its thread (the page's worker) between two returns to the
/// event loop, where a Stop message from the page is read.
const FRAME_MS: f64 = 30.0;

/// Resolves in the event loop's next task (after the page has had a chance to paint) when
/// `now`, immediately otherwise.
async fn next_task(now: bool) {
    if !now {
        return;
    }
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let set_timeout = js_sys::Reflect::get(&js_sys::global(), &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(set_timeout) => {
                let _ = set_timeout.call2(&JsValue::NULL, &resolve, &JsValue::from(0));
            }
            None => {
                let _ = resolve.call0(&JsValue::NULL);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

#[wasm_bindgen]
impl Session {
    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.inner.backend.into()
    }

    /// One line describing the model.
    #[wasm_bindgen(getter)]
    pub fn about(&self) -> String {
        self.inner.about.clone()
    }

    /// The GPU dispatches of one decode step (a token fed to a state that has seen one, its
    /// logits read back): `{ total, by_kernel: { name: count } }`, or `null` on the CPU.
    #[wasm_bindgen(js_name = decodeDispatches)]
    pub fn decode_dispatches(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let device = &inner.device;
            let mut state = State::zeros(&inner.model.config(), 1, device);
            let mut step = async |id: u32| {
                let ids = rwkv_burn::model::token_tensor(&[id], 1, device);
                inner
                    .model
                    .forward_last(ids, &mut state)
                    .into_data_async()
                    .await
                    .map(drop)
                    .map_err(|e| JsError::new(&format!("{e:?}")))
            };
            step(0).await?;
            let counting = rwkv_burn::dispatches::Counting::start(device);
            step(1).await?;
            let Some(counting) = counting else {
                return Ok(JsValue::NULL);
            };
            let dispatches = counting.finish();
            let by_kernel = js_sys::Object::new();
            for (name, n) in &dispatches.by_kernel {
                js_sys::Reflect::set(&by_kernel, &name.into(), &(*n as f64).into())?;
            }
            let out = js_sys::Object::new();
            js_sys::Reflect::set(&out, &"total".into(), &(dispatches.total as f64).into())?;
            js_sys::Reflect::set(&out, &"by_kernel".into(), &by_kernel)?;
            Ok(out.into())
        })
    }

    /// The token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsError> {
        self.inner
            .tokenizer
            .encode(text.as_bytes())
            .map_err(|e| JsError::new(&e.to_string()))
    }

    /// Logits at every position of `tokens` from a fresh state, fed in sequence-mode calls
    /// of the lengths in `chunks` (which add up to `tokens.length`; all ones = step mode).
    /// Resolves to a `Float32Array` of `tokens.length × vocabulary` values.
    pub fn logits(&self, tokens: Vec<u32>, chunks: Vec<u32>) -> js_sys::Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let mode = RunMode::Chunks(chunks.iter().map(|&c| c as usize).collect());
            let config = inner.model.config();
            let run = run_logits_async(&inner.model, &config, &tokens, &mode, &inner.device)
                .await
                .map_err(|e| JsError::new(&e.to_string()))?;
            let values = run
                .logits
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| JsError::new(&format!("{e:?}")))?;
            Ok(js_sys::Float32Array::from(values.as_slice()).into())
        })
    }

    /// Whether the model is a World model (its vocabulary is the World tokenizer's): the
    /// page then offers a chat in the World models' format ([`Session::chat_prompt`]).
    #[wasm_bindgen(getter)]
    pub fn chat(&self) -> bool {
        self.inner.model.vocab_size() == rwkv_burn::tokenizer::WORLD_MODEL_VOCAB
    }

    /// The prompt of a conversation in the World chat format (`User: ...`, blank line,
    /// `Assistant:`), from parallel lists of roles (`system`, `user`, `assistant`) and texts;
    /// generate with `"\n\n"` as a stop string to end at the turn's end.
    #[wasm_bindgen(js_name = chatPrompt)]
    pub fn chat_prompt(roles: Vec<String>, texts: Vec<String>) -> Result<String, JsError> {
        use rwkv_burn_infer::chat_template::{Message, Role, Think, render};
        if roles.len() != texts.len() {
            return Err(JsError::new(
                "chatPrompt: as many roles as texts are needed",
            ));
        }
        let messages = roles
            .iter()
            .zip(texts)
            .map(|(role, content)| {
                let role = Role::parse(role).ok_or_else(|| {
                    JsError::new(&format!(
                        "chatPrompt: unknown role '{role}' (known: system, user, assistant)"
                    ))
                })?;
                Ok(Message { role, content })
            })
            .collect::<Result<Vec<_>, JsError>>()?;
        render(&messages, Think::Off).map_err(|e| JsError::new(&e.to_string()))
    }

    /// Generates up to `max_tokens` after `prompt`, calling `on_token(text)` once per
    /// generated token with the text that became final (often empty mid-character); returning
    /// `false` from it stops. Generation also stops before any of `stop` (strings). Resolves
    /// to `{ text, tokens, stop }`.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        prompt: String,
        max_tokens: u32,
        temperature: f32,
        top_p: f32,
        seed: u32,
        on_token: js_sys::Function,
        stop: Option<Vec<String>>,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let ids = inner
                .tokenizer
                .encode(prompt.as_bytes())
                .map_err(|e| JsError::new(&e.to_string()))?;
            let pipeline =
                Pipeline::new(&inner.model, inner.tokenizer.as_ref(), inner.device.clone());
            let options = GenerateOptions {
                max_tokens: max_tokens as usize,
                sampler: SamplerConfig {
                    temperature,
                    top_p,
                    seed: u64::from(seed),
                    ..SamplerConfig::default()
                },
                stop_strings: stop.unwrap_or_default(),
                ..GenerateOptions::default()
            };
            let mut state = State::zeros(&inner.model.config(), 1, &inner.device);
            let mut callback_error = None;
            let mut on_text = |text: &str| match on_token.call1(&JsValue::NULL, &text.into()) {
                Ok(keep) => keep.as_bool() != Some(false),
                Err(e) => {
                    callback_error = Some(e);
                    false
                }
            };
            let mut last_yield = js_sys::Date::now();
            // Return to the event loop about every frame: on the CPU nothing else does while
            // tokens are generated, and a Stop from the page arrives there.
            let pause = || {
                let due = js_sys::Date::now() - last_yield > FRAME_MS;
                if due {
                    last_yield = js_sys::Date::now();
                }
                next_task(due)
            };
            let result = pipeline
                .generate_async(&ids, &mut state, &options, &mut on_text, pause)
                .await
                .map_err(|e| JsError::new(&e.to_string()))?;
            if let Some(e) = callback_error {
                return Err(e);
            }
            let out = js_sys::Object::new();
            let set = |k: &str, v: JsValue| js_sys::Reflect::set(&out, &k.into(), &v);
            set("text", result.text.as_str().into())?;
            set("tokens", result.tokens.len().into())?;
            set("stop", format!("{:?}", result.stop).into())?;
            Ok(out.into())
        })
    }
}
