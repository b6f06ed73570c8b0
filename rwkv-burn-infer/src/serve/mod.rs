//! `rwkv serve`: an OpenAI-compatible HTTP server over one model.
//!
//! The HTTP side runs on axum (hyper and tokio underneath): the most used Rust HTTP stack,
//! kept by the tokio project, with server-sent events, body limits and graceful shutdown built
//! in, and tokio was already in the build through Burn. It checks requests ([`api`]),
//! tokenizes, and hands [`worker::Job`]s to the model worker, which runs on the thread that
//! called [`serve`] (the model stays where it was loaded) and answers each job through a
//! channel of [`worker::Event`]s. A client that goes away drops its channel, and the worker
//! frees the sequence's place at its next token.

pub mod api;
pub mod metrics;
pub mod worker;

use crate::chat_template::ThinkSplit;
use crate::generate::Pipeline;
use api::{ApiError, Limits, Parsed, Prompt};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rwkv_burn::tokenizer::Tokenizer;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedReceiver;
use worker::{End, Event, Job, Outcome, Shared, WorkerConfig};

/// Everything `rwkv serve` is told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// The name `/v1/models` gives the model (requests may name any model).
    pub model_id: String,
    /// Request limits.
    pub limits: Limits,
    /// The worker's batch, chunk and cache settings.
    pub worker: WorkerConfig,
    /// Most requests waiting for the batch before new ones get 429.
    pub max_queue: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long one request may take, queue included.
    pub request_timeout: Duration,
    /// Required `Authorization: Bearer` key, if any.
    pub api_key: Option<String>,
    /// Origins allowed to call from a browser (CORS); empty: none.
    pub cors_origins: Vec<String>,
    /// Folder of saved states (`NAME.safetensors`) that requests may start from by name
    /// (`rwkv_state`).
    pub state_dir: Option<std::path::PathBuf>,
}

/// What the server could not do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or running the listener failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A CORS origin that is not a valid header value.
    #[error("--cors-origin {0:?} is not a valid origin")]
    Origin(String),
}

/// The HTTP side's shared state.
struct App {
    jobs: std::sync::mpsc::Sender<Job>,
    shared: Arc<Shared>,
    tokenizer: Arc<dyn Tokenizer>,
    options: ServeOptions,
    created: u64,
    next_id: AtomicU64,
}

/// A handle that stops a running server: [`Shutdown::trigger`] is what SIGTERM does.
#[derive(Clone)]
pub struct Shutdown {
    shared: Arc<Shared>,
    signal: tokio::sync::watch::Sender<bool>,
}

impl Shutdown {
    /// Stops accepting connections and ends every request in flight (streams get a last
    /// event); [`serve`] then returns.
    pub fn trigger(&self) {
        self.shared.shutdown.store(true, Relaxed);
        self.signal.send_replace(true);
    }
}

/// Serves `pipeline` until [`Shutdown::trigger`]; `on_ready` hears the bound address (the
/// port may have been 0) and gets the shutdown handle. The model runs on this thread.
pub fn serve(
    pipeline: &Pipeline<'_>,
    tokenizer: Arc<dyn Tokenizer>,
    options: ServeOptions,
    on_ready: impl FnOnce(SocketAddr, Shutdown),
) -> Result<(), ServeError> {
    let addr = options.addr;
    let listen = |source| ServeError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    let bound = listener.local_addr().map_err(listen)?;
    let cors = cors_layer(&options.cors_origins)?;
    let shared = Arc::new(Shared::default());
    let (signal, mut stopped) = tokio::sync::watch::channel(false);
    let shutdown = Shutdown {
        shared: shared.clone(),
        signal,
    };
    let (jobs, job_queue) = std::sync::mpsc::channel();
    let worker_config = options.worker.clone();
    let body_limit = options.max_body_bytes;
    let app = Arc::new(App {
        jobs,
        shared: shared.clone(),
        tokenizer,
        options,
        created: unix_now(),
        next_id: AtomicU64::new(0),
    });
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions::<false>))
        .route("/v1/chat/completions", post(completions::<true>))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app);
    if let Some(cors) = cors {
        router = router.layer(cors);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rwkv-serve-http")
        .enable_all()
        .build()
        .map_err(listen)?;
    let server = std::thread::spawn(move || {
        runtime.block_on(async move {
            use axum::serve::ListenerExt as _;
            // Every token goes out as a small write: without TCP_NODELAY, Nagle's algorithm
            // can hold one until the client's delayed ACK. Side by side (`benches/serve.py`,
            // builds with and without, three pairs): the embedded model's cached
            // conversation turn 43/43/42 ms -> 10/8/9 ms.
            let listener = tokio::net::TcpListener::from_std(listener)?.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|&stop| stop).await;
                })
                .await
        })
    });
    on_ready(bound, shutdown.clone());
    worker::run(pipeline, job_queue, &shared, worker_config);
    match server.join() {
        Ok(result) => result.map_err(listen),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn cors_layer(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>, ServeError> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let layer = CorsLayer::new().allow_methods(Any).allow_headers(Any);
    if origins.iter().any(|o| o == "*") {
        return Ok(Some(layer.allow_origin(Any)));
    }
    let values = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).map_err(|_| ServeError::Origin(o.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(layer.allow_origin(AllowOrigin::list(values))))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (status, axum::Json(self.body())).into_response();
        if self.status == 429 || self.status == 503 {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Checks the bearer key when the server has one. Compares in time independent of where the
/// keys differ.
fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &app.options.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            401,
            "authentication_error",
            "a valid API key is required: Authorization: Bearer KEY",
        ))
    }
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&app, &headers) {
        return e.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.shared.metrics.render(),
    )
        .into_response()
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&app, &headers) {
        return e.into_response();
    }
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": app.options.model_id,
            "object": "model",
            "created": app.created,
            "owned_by": "rwkv-burn",
        }],
    }))
    .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(404, "invalid_request_error", "no such endpoint")
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Endpoint {
    Completions,
    Chat,
}

/// `POST /v1/completions` (`CHAT` false) and `POST /v1/chat/completions` (`CHAT` true).
async fn completions<const CHAT: bool>(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let endpoint = if CHAT {
        Endpoint::Chat
    } else {
        Endpoint::Completions
    };
    generate(app, headers, body, endpoint).await
}

async fn generate(
    app: Arc<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    match start(&app, &headers, body, endpoint) {
        Ok((parsed, events)) => {
            let reply = Reply::new(&app, endpoint, &parsed, events.len());
            if parsed.stream {
                stream(reply, events).into_response()
            } else {
                whole(reply, events).await
            }
        }
        Err(e) => e.into_response(),
    }
}

/// Checks a request and queues it, one job per choice (`n`); returns its settings and the
/// worker's answer channel for each choice.
fn start(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<(Parsed, Vec<UnboundedReceiver<Event>>), ApiError> {
    authorize(app, headers)?;
    let body = body
        .map_err(|e| ApiError::new(e.status().as_u16(), "invalid_request_error", e.body_text()))?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            400,
            "invalid_request_error",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let limits = &app.options.limits;
    let mut parsed = match endpoint {
        Endpoint::Completions => api::completion(&value, limits)?,
        Endpoint::Chat => api::chat(&value, limits)?,
    };
    let param = match endpoint {
        Endpoint::Completions => "prompt",
        Endpoint::Chat => "messages",
    };
    let tokens = match &parsed.prompt {
        Prompt::Tokens(ids) => ids.clone(),
        Prompt::Text(text) => app
            .tokenizer
            .encode(text.as_bytes())
            .map_err(|e| ApiError::invalid(param, e.to_string()))?,
    };
    if tokens.is_empty() {
        return Err(ApiError::invalid(param, "the prompt has no tokens"));
    }
    if tokens.len() > limits.max_prompt_tokens {
        return Err(ApiError::invalid(
            param,
            format!(
                "the prompt has {} tokens; this server takes at most {} (--max-prompt-tokens)",
                tokens.len(),
                limits.max_prompt_tokens
            ),
        ));
    }
    if !parsed.seeded {
        // No seed asked for: a different one per request, as OpenAI samples.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        parsed.options.sampler.seed = nanos ^ app.next_id.load(Relaxed).rotate_left(32);
    }
    parsed
        .options
        .validate(limits.vocab)
        .map_err(|e| ApiError::invalid(e.name.replace('-', "_"), e.to_string()))?;
    let shared = &app.shared;
    if shared.shutdown.load(Relaxed) {
        return Err(ApiError::new(
            503,
            "server_error",
            "the server is shutting down",
        ));
    }
    if shared.metrics.queued.load(Relaxed) + parsed.n > app.options.max_queue {
        shared.metrics.rejected.fetch_add(1, Relaxed);
        return Err(ApiError::new(
            429,
            "rate_limit_error",
            format!(
                "{} requests are waiting already (--max-queue); retry later",
                app.options.max_queue
            ),
        ));
    }
    let initial_state = match (&parsed.state, &app.options.state_dir) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "rwkv_state",
                "this server has no saved states (start it with --state-dir)",
            ));
        }
        (Some(name), Some(dir)) => {
            // Our state files, or RWKV-PEFT's state-tuning `.pth` files (`time_state`).
            let path = ["safetensors", "pth"]
                .iter()
                .map(|ext| dir.join(format!("{name}.{ext}")))
                .find(|path| path.is_file());
            let Some(path) = path else {
                return Err(ApiError::invalid(
                    "rwkv_state",
                    format!("no saved state named {name:?}"),
                ));
            };
            Some(path)
        }
    };
    let now = Instant::now();
    let mut receivers = Vec::with_capacity(parsed.n);
    for choice in 0..parsed.n {
        // Choice i samples with seed + i, as `generate_batch` does for its sequences.
        let mut options = parsed.options.clone();
        options.sampler.seed = options.sampler.seed.wrapping_add(choice as u64);
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            prompt: tokens.clone(),
            options,
            events,
            arrived: now,
            deadline: now + app.options.request_timeout,
            initial_state: initial_state.clone(),
        };
        shared.metrics.queued.fetch_add(1, Relaxed);
        if app.jobs.send(job).is_err() {
            shared.metrics.queued.fetch_sub(1, Relaxed);
            return Err(ApiError::new(
                503,
                "server_error",
                "the model worker has stopped",
            ));
        }
        receivers.push(receiver);
    }
    shared.metrics.requests.fetch_add(1, Relaxed);
    Ok((parsed, receivers))
}

/// Turns a request's events into OpenAI response objects.
struct Reply {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Per choice: the reasoning/answer splitter of a chat reply.
    splits: Vec<Option<ThinkSplit>>,
}

impl Reply {
    fn new(app: &App, endpoint: Endpoint, parsed: &Parsed, choices: usize) -> Self {
        let n = app.next_id.fetch_add(1, Relaxed);
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        Self {
            endpoint,
            id: format!("{prefix}-{:x}{n:06x}", app.created),
            created: unix_now(),
            model: app.options.model_id.clone(),
            include_usage: parsed.include_usage,
            splits: (0..choices)
                .map(|_| (endpoint == Endpoint::Chat).then(|| ThinkSplit::new(parsed.think)))
                .collect(),
        }
    }

    /// `(reasoning, answer)` of a piece of choice `index`'s generated text.
    fn shape(&mut self, index: usize, text: &str) -> (String, String) {
        match &mut self.splits[index] {
            Some(split) => split.push(text),
            None => (String::new(), text.to_string()),
        }
    }

    /// What choice `index`'s splitter still holds.
    fn finish_text(&mut self, index: usize) -> (String, String) {
        match &mut self.splits[index] {
            Some(split) => split.finish(),
            None => Default::default(),
        }
    }

    fn object(&self, streamed: bool) -> &'static str {
        match (self.endpoint, streamed) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, streamed: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(streamed),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// A stream chunk of choice `index` with `reasoning`/`answer` text (none if both are
    /// empty), and the finish reason when it is the choice's last.
    fn chunk(
        &self,
        index: usize,
        reasoning: &str,
        answer: &str,
        finish: Option<&str>,
    ) -> Option<Value> {
        if reasoning.is_empty() && answer.is_empty() && finish.is_none() {
            return None;
        }
        let choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": index, "text": answer, "logprobs": Value::Null, "finish_reason": finish,
            }),
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if !answer.is_empty() {
                    delta.insert("content".into(), answer.into());
                }
                if !reasoning.is_empty() {
                    delta.insert("reasoning_content".into(), reasoning.into());
                }
                json!({"index": index, "delta": delta, "logprobs": Value::Null, "finish_reason": finish})
            }
        };
        Some(self.envelope(true, json!([choice])))
    }
}

/// The `usage` of a request's choices: the prompt counted once (the first choice's), the
/// completions summed.
fn usage(outcomes: &[Outcome]) -> Value {
    let prompt = outcomes.first().map_or(0, |o| o.prompt_tokens);
    let cached = outcomes.first().map_or(0, |o| o.cached_tokens);
    let completion: usize = outcomes.iter().map(|o| o.completion_tokens).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// The finish reason of an outcome, or the error it is.
fn finish_reason(end: &End) -> Result<&'static str, ApiError> {
    match end {
        End::Stop => Ok("stop"),
        End::Length => Ok("length"),
        End::TimedOut => Err(ApiError::new(
            504,
            "timeout_error",
            "the request took longer than the server allows (--request-timeout)",
        )),
        End::Shutdown => Err(ApiError::new(
            503,
            "server_error",
            "the server is shutting down",
        )),
        End::Disconnected => Err(ApiError::new(499, "server_error", "the client went away")),
        End::BadState(message) => Err(ApiError::invalid("rwkv_state", message.clone())),
        End::Failed(message) => Err(ApiError::new(500, "server_error", message.clone())),
    }
}

/// A whole (unstreamed) response.
async fn whole(mut reply: Reply, receivers: Vec<UnboundedReceiver<Event>>) -> Response {
    let mut choices = Vec::with_capacity(receivers.len());
    let mut outcomes = Vec::with_capacity(receivers.len());
    // The worker runs every choice at once; reading them in turn only orders the answers.
    for (index, mut events) in receivers.into_iter().enumerate() {
        let (mut reasoning, mut answer) = (String::new(), String::new());
        let outcome = loop {
            match events.recv().await {
                Some(Event::Text(text)) => {
                    let (r, a) = reply.shape(index, &text);
                    reasoning += &r;
                    answer += &a;
                }
                Some(Event::End(outcome)) => break outcome,
                None => {
                    return ApiError::new(500, "server_error", "the model worker stopped")
                        .into_response();
                }
            }
        };
        let (r, a) = reply.finish_text(index);
        reasoning += &r;
        answer += &a;
        let finish = match finish_reason(&outcome.end) {
            Ok(finish) => finish,
            Err(e) => return e.into_response(),
        };
        choices.push(match reply.endpoint {
            Endpoint::Completions => json!({
                "index": index, "text": answer, "logprobs": Value::Null, "finish_reason": finish,
            }),
            Endpoint::Chat => {
                let mut message = json!({"role": "assistant", "content": answer});
                if !reasoning.is_empty() {
                    message["reasoning_content"] = reasoning.into();
                }
                json!({"index": index, "message": message, "logprobs": Value::Null, "finish_reason": finish})
            }
        });
        outcomes.push(outcome);
    }
    let mut body = reply.envelope(false, Value::Array(choices));
    body["usage"] = usage(&outcomes);
    axum::Json(body).into_response()
}

/// Every choice's events, tagged with the choice's index, as they come.
type Merged = futures_util::stream::SelectAll<
    std::pin::Pin<Box<dyn futures_util::Stream<Item = (usize, Event)> + Send>>,
>;

/// Where a streamed response is.
struct Streaming {
    reply: Reply,
    events: Merged,
    /// Choices not ended yet.
    open: usize,
    outcomes: Vec<Outcome>,
    /// Server-sent events ready to go out.
    ready: VecDeque<String>,
    ended: bool,
}

impl Streaming {
    /// Queues what `event` of choice `index` shows.
    fn take(&mut self, index: usize, event: Event) {
        match event {
            Event::Text(text) => {
                let (r, a) = self.reply.shape(index, &text);
                if let Some(chunk) = self.reply.chunk(index, &r, &a, None) {
                    self.ready.push_back(chunk.to_string());
                }
            }
            Event::End(outcome) => {
                let (r, a) = self.reply.finish_text(index);
                if let Some(chunk) = self.reply.chunk(index, &r, &a, None) {
                    self.ready.push_back(chunk.to_string());
                }
                match finish_reason(&outcome.end) {
                    Ok(finish) => {
                        let last = self.reply.chunk(index, "", "", Some(finish));
                        self.ready.extend(last.map(|c| c.to_string()));
                        self.outcomes.push(outcome);
                        self.open -= 1;
                        if self.open == 0 {
                            if self.reply.include_usage {
                                let mut tail = self.reply.envelope(true, json!([]));
                                tail["usage"] = usage(&self.outcomes);
                                self.ready.push_back(tail.to_string());
                            }
                            self.end();
                        }
                    }
                    Err(e) => {
                        // One choice failing ends the response; dropping the other choices'
                        // channels frees their sequences.
                        self.ready.push_back(e.body().to_string());
                        self.end();
                    }
                }
            }
        }
    }

    fn end(&mut self) {
        self.ready.push_back("[DONE]".into());
        self.ended = true;
        self.events = Merged::default();
    }
}

/// A streamed response: OpenAI's chunks as server-sent events, then `data: [DONE]`. An
/// error after the stream began (timeout, shutdown) is sent as an `{"error": ...}` event
/// before `[DONE]`, as OpenAI does.
fn stream(reply: Reply, receivers: Vec<UnboundedReceiver<Event>>) -> impl IntoResponse {
    let mut ready = VecDeque::new();
    if reply.endpoint == Endpoint::Chat {
        for index in 0..receivers.len() {
            let first = json!([{
                "index": index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": Value::Null,
                "finish_reason": Value::Null,
            }]);
            ready.push_back(reply.envelope(true, first).to_string());
        }
    }
    let open = receivers.len();
    let events: Merged = futures_util::stream::select_all(receivers.into_iter().enumerate().map(
        |(index, receiver)| {
            let events = futures_util::stream::unfold(receiver, move |mut receiver| async move {
                let event = receiver.recv().await?;
                Some(((index, event), receiver))
            });
            Box::pin(events) as std::pin::Pin<Box<dyn futures_util::Stream<Item = _> + Send>>
        },
    ));
    let state = Streaming {
        reply,
        events,
        open,
        outcomes: Vec::new(),
        ready,
        ended: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        use futures_util::StreamExt as _;
        loop {
            if let Some(data) = s.ready.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s));
            }
            if s.ended {
                return None;
            }
            match s.events.next().await {
                Some((index, event)) => s.take(index, event),
                None => {
                    let e = ApiError::new(500, "server_error", "the model worker stopped");
                    s.ready.push_back(e.body().to_string());
                    s.end();
                }
            }
        }
    });
    Sse::new(events)
}
