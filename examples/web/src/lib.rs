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

/// Loads a model on `backend`: the bytes of a safetensors file, or the embedded default
/// model when `model` is `undefined`. `name` labels the file in error messages.
/// `max_buffer_bytes` is the WebGPU adapter's `maxStorageBufferBindingSize`: the embedding and
/// projections larger than that are held in blocks of rows that fit (a World model's
/// 65536-row embedding and head exceed WebGPU's default 128 MiB); any other tensor that does
/// not fit is refused with a message instead of failing inside the GPU.
#[wasm_bindgen(js_name = createSession)]
pub async fn create_session(
    backend: String,
    model: Option<Vec<u8>>,
    name: Option<String>,
    max_buffer_bytes: Option<f64>,
) -> Result<Session, JsError> {
    let label = name.unwrap_or_else(|| "<embedded default model>".into());
    let checkpoint = match model {
        None => rwkv_burn_infer::embedded::default_checkpoint(),
        Some(bytes) => {
            let len = Some(bytes.len() as u64);
            if rwkv_burn::load::sniff(&bytes, len) == Some(rwkv_burn::load::Format::Pth) {
                return Err(JsError::new(&format!(
                    "{label} is a PyTorch .pth file; in the browser only safetensors can be \
                     read: save the weights as safetensors first"
                )));
            }
            Checkpoint::from_safetensors_bytes(bytes, &label)
        }
    }
    .map_err(|e| JsError::new(&e.to_string()))?;
    let (device, backend) = open_device(&backend).await?;
    let limit = max_buffer_bytes
        .filter(|_| backend == "webgpu")
        .filter(|l| l.is_finite() && *l >= 1.0)
        .map(|l| l as u64);
    let config =
        rwkv_burn::load::detect_config(&checkpoint).map_err(|e| JsError::new(&e.to_string()))?;
    let (model, _) = rwkv_burn::model::build_limited(
        &checkpoint,
        &config,
        &device,
        rwkv_burn::WeightFormat::F32,
        limit,
    )
    .map_err(|e| JsError::new(&e.to_string()))?;
    let tokenizer = rwkv_burn::tokenizer::choose(None, model.vocab_size())
        .map_err(|e| JsError::new(&e.to_string()))?;
    let about = format!(
        "{label}: {}, {} layers, {} channels, vocabulary {}, on {backend}",
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

/// How long generation may hold the page's main thread between two yields.
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

    /// Generates up to `max_tokens` after `prompt`, calling `on_token(text)` once per
    /// generated token with the text that became final (often empty mid-character). Resolves to
    /// `{ text, tokens, stop }`.
    pub fn generate(
        &self,
        prompt: String,
        max_tokens: u32,
        temperature: f32,
        top_p: f32,
        seed: u32,
        on_token: js_sys::Function,
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
            // Let the page paint about every frame: on the CPU nothing else returns to the
            // event loop while tokens are generated.
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
