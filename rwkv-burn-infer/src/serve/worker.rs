//! The model worker: one thread that owns the model and runs a continuous batch.
//!
//! Every turn of its loop it takes new requests off the queue, reads one chunk of the prompt
//! of the request at the head (so a long prompt never stalls the others for more than a
//! chunk), moves a request whose prompt is read into the batch, and advances every sequence of
//! the batch by one token with the decode step `generate` uses ([`Batch`]). Each sequence has
//! its own state row, sampler and seed, so a request gives the same text alone or in company.
//! A sequence leaves the batch when it ends, its client goes away, its deadline passes or the
//! server shuts down.

use super::metrics::Metrics;
use crate::generate::{
    Batch, Decoding, GenerateError, GenerateOptions, Generation, Pipeline, StopReason, read_logits,
};
use crate::prefix_cache::PrefixCache;
use rwkv_burn::State;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// A request for the worker.
pub struct Job {
    /// Prompt token ids (not empty).
    pub prompt: Vec<u32>,
    /// Generation settings, checked.
    pub options: GenerateOptions,
    /// Where the worker sends the request's text and end.
    pub events: UnboundedSender<Event>,
    /// When the request arrived.
    pub arrived: Instant,
    /// When it must end.
    pub deadline: Instant,
    /// A state file to start from instead of a fresh state (not cached by prefix).
    pub initial_state: Option<std::path::PathBuf>,
}

/// What the worker tells a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Generated text that is final.
    Text(String),
    /// The request has ended.
    End(Outcome),
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Prompt tokens (cached ones included).
    pub prompt_tokens: usize,
    /// Of them, how many came from the prefix cache.
    pub cached_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Why it ended.
    pub end: End,
}

/// Why a request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Its deadline (`--request-timeout`) passed.
    TimedOut,
    /// The server is shutting down.
    Shutdown,
    /// The client went away.
    Disconnected,
    /// The state file the request named does not fit this model: the message.
    BadState(String),
    /// The model failed (a bug): the message.
    Failed(String),
}

/// The worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Most sequences decoding together.
    pub max_batch: usize,
    /// Prompt tokens read per loop turn.
    pub prefill_chunk: usize,
    /// Bytes of prefix states kept (0: no cache).
    pub cache_bytes: usize,
}

/// What the HTTP side and the worker share.
#[derive(Debug, Default)]
pub struct Shared {
    /// The counters of `/metrics`.
    pub metrics: Metrics,
    /// Set on SIGTERM/SIGINT: the worker ends every request.
    pub shutdown: AtomicBool,
}

/// A request in the batch: where its events go and what is known of it.
struct Lane {
    events: UnboundedSender<Event>,
    arrived: Instant,
    deadline: Instant,
    prompt_tokens: usize,
    cached_tokens: usize,
    first_token: bool,
    /// Set when the worker ends it early (the decoding then stops as cancelled).
    cut: Option<End>,
}

impl Lane {
    /// Streams `text`; says whether the sequence goes on.
    fn on_text(&mut self, text: &str, metrics: &Metrics, shutdown: bool) -> bool {
        if self.first_token {
            self.first_token = false;
            metrics.observe_ttft(self.arrived.elapsed().as_secs_f64());
        }
        let sent = text.is_empty() || self.events.send(Event::Text(text.to_string())).is_ok();
        if !sent || self.events.is_closed() {
            self.cut = Some(End::Disconnected);
        } else if shutdown {
            self.cut = Some(End::Shutdown);
        } else if Instant::now() >= self.deadline {
            self.cut = Some(End::TimedOut);
        }
        self.cut.is_none()
    }

    fn end(self, generation: &Generation, metrics: &Metrics) {
        metrics.active.fetch_sub(1, Relaxed);
        let end = self.cut.unwrap_or(match generation.stop {
            StopReason::MaxTokens => End::Length,
            _ => End::Stop,
        });
        let _ = self.events.send(Event::End(Outcome {
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            completion_tokens: generation.tokens.len(),
            end,
        }));
    }

    fn fail(self, end: End, metrics: &Metrics) {
        metrics.active.fetch_sub(1, Relaxed);
        let _ = self.events.send(Event::End(Outcome {
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            completion_tokens: 0,
            end,
        }));
    }
}

/// A request whose prompt is being read.
struct Reading {
    job: Job,
    state: State,
    logits: Vec<f32>,
    done: usize,
    cached: usize,
}

/// The worker's loop state.
struct Worker<'p, 'a> {
    pipeline: &'p Pipeline<'a>,
    shared: &'p Shared,
    config: WorkerConfig,
    waiting: VecDeque<Job>,
    /// Requests whose prompts are being read (at most the batch's free places).
    reading: Vec<Reading>,
    batch: Batch,
    state: State,
    lanes: Vec<Option<Lane>>,
    cache: Option<PrefixCache>,
    /// Tokens generated since `window_start`, for the tokens/s gauge.
    window_tokens: u64,
    window_start: Instant,
}

/// Runs the worker until every sender of `jobs` is gone (the HTTP side has shut down).
pub fn run(pipeline: &Pipeline<'_>, jobs: Receiver<Job>, shared: &Shared, config: WorkerConfig) {
    let model_config = pipeline.model.config();
    let state = State::zeros(&model_config, 1, &pipeline.device);
    let cache = (config.cache_bytes > 0).then(|| {
        let state_bytes = state
            .to_official()
            .iter()
            .map(|t| t.data.num_elements() * 4)
            .sum();
        PrefixCache::with_budget(config.cache_bytes, state_bytes)
    });
    let mut worker = Worker {
        pipeline,
        shared,
        config,
        waiting: VecDeque::new(),
        reading: Vec::new(),
        batch: Batch::empty(),
        state,
        lanes: Vec::new(),
        cache,
        window_tokens: 0,
        window_start: Instant::now(),
    };
    loop {
        let idle =
            worker.batch.running() == 0 && worker.reading.is_empty() && worker.waiting.is_empty();
        if idle {
            shared.metrics.set_tokens_per_second(0.0);
            match jobs.recv_timeout(Duration::from_millis(100)) {
                Ok(job) => worker.waiting.push_back(job),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            worker.waiting.push_back(job);
        }
        // A panic here is a bug; it ends the requests in flight, not the server.
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| worker.turn())) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            worker.fail_all(format!("internal error: {message}"));
        }
    }
}

impl Worker<'_, '_> {
    /// One turn: drop abandoned requests, read a chunk of a prompt, advance the batch.
    fn turn(&mut self) {
        let metrics = &self.shared.metrics;
        let shutdown = self.shared.shutdown.load(Relaxed);
        let now = Instant::now();
        self.waiting.retain(|job| {
            let end = if job.events.is_closed() {
                Some(End::Disconnected)
            } else if shutdown {
                Some(End::Shutdown)
            } else if now >= job.deadline {
                Some(End::TimedOut)
            } else {
                None
            };
            let keep = end.is_none();
            if let Some(end) = end {
                metrics.queued.fetch_sub(1, Relaxed);
                let _ = job.events.send(Event::End(Outcome {
                    prompt_tokens: job.prompt.len(),
                    cached_tokens: 0,
                    completion_tokens: 0,
                    end,
                }));
            }
            keep
        });
        self.read_prompts();
        if let Err(e) = self.step() {
            self.fail_all(e.to_string());
        }
        let elapsed = self.window_start.elapsed();
        if elapsed >= Duration::from_secs(2) {
            metrics.set_tokens_per_second(self.window_tokens as f64 / elapsed.as_secs_f64());
            self.window_tokens = 0;
            self.window_start = Instant::now();
        }
    }

    fn lane_of(&self, reading: &Reading) -> Lane {
        Lane {
            events: reading.job.events.clone(),
            arrived: reading.job.arrived,
            deadline: reading.job.deadline,
            prompt_tokens: reading.job.prompt.len(),
            cached_tokens: reading.cached,
            first_token: true,
            cut: None,
        }
    }

    /// Starts reading the waiting prompts the batch has room for, and reads one chunk of the
    /// one with the least left to read (so a long document does not hold back the short
    /// prompts that arrive while it is read; each prompt's own chunks stay the same, so its
    /// logits do not depend on the others). A prompt read to the end joins the batch.
    fn read_prompts(&mut self) {
        let metrics = &self.shared.metrics;
        while self.batch.running() + self.reading.len() < self.config.max_batch {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            metrics.queued.fetch_sub(1, Relaxed);
            metrics.active.fetch_add(1, Relaxed);
            if let Some(reading) = self.start_reading(job) {
                metrics
                    .cached_tokens
                    .fetch_add(reading.cached as u64, Relaxed);
                self.reading.push(reading);
            }
        }
        let now = Instant::now();
        let mut kept = Vec::with_capacity(self.reading.len());
        for reading in std::mem::take(&mut self.reading) {
            if reading.job.events.is_closed() {
                self.lane_of(&reading).fail(End::Disconnected, metrics);
            } else if now >= reading.job.deadline {
                self.lane_of(&reading).fail(End::TimedOut, metrics);
            } else {
                kept.push(reading);
            }
        }
        self.reading = kept;
        let Some(next) = (0..self.reading.len())
            .min_by_key(|&i| self.reading[i].job.prompt.len() - self.reading[i].done)
        else {
            return;
        };
        let reading = &mut self.reading[next];
        let prompt = &reading.job.prompt;
        if reading.done < prompt.len() {
            let end = (reading.done + self.config.prefill_chunk).min(prompt.len());
            let part = &prompt[reading.done..end];
            match self
                .pipeline
                .prefill(part, &mut reading.state, part.len(), &mut |_| {})
            {
                Ok(logits) => reading.logits = logits,
                Err(e) => {
                    let reading = self.reading.swap_remove(next);
                    self.lane_of(&reading)
                        .fail(End::Failed(e.to_string()), metrics);
                    return;
                }
            }
            metrics.prompt_tokens.fetch_add(part.len() as u64, Relaxed);
            reading.done = end;
        }
        if reading.done == prompt.len() {
            let reading = self.reading.swap_remove(next);
            self.join(reading);
        }
    }

    /// A waiting request's reading, from its saved state, the longest cached prefix of its
    /// prompt, or a fresh state; `None` if its saved state does not fit (it is answered).
    fn start_reading(&mut self, job: Job) -> Option<Reading> {
        let fresh = || State::zeros(&self.pipeline.model.config(), 1, &self.pipeline.device);
        let reading = |job, state, logits, done| Reading {
            job,
            state,
            logits,
            done,
            cached: done,
        };
        if let Some(path) = &job.initial_state {
            return match self.load_state(path) {
                Ok(state) => Some(reading(job, state, Vec::new(), 0)),
                Err(message) => {
                    let failed = reading(job, fresh(), Vec::new(), 0);
                    self.lane_of(&failed)
                        .fail(End::BadState(message), &self.shared.metrics);
                    None
                }
            };
        }
        Some(
            match self.cache.as_mut().and_then(|c| c.lookup(&job.prompt)) {
                Some(hit) => reading(job, hit.state, hit.logits, hit.len),
                None => reading(job, fresh(), Vec::new(), 0),
            },
        )
    }

    /// Moves a request whose prompt is read into the batch (caching its prompt's state).
    fn join(&mut self, reading: Reading) {
        if let Some(cache) = &mut self.cache
            && reading.job.initial_state.is_none()
            && reading.cached < reading.job.prompt.len()
        {
            cache.insert(
                reading.job.prompt.clone(),
                reading.state.clone(),
                reading.logits.clone(),
            );
        }
        let lane = self.lane_of(&reading);
        let number = self.batch.join(
            &mut self.state,
            Decoding::new(reading.job.options),
            reading.state,
            reading.logits,
        );
        if self.lanes.len() <= number {
            self.lanes.resize_with(number + 1, || None);
        }
        self.lanes[number] = Some(lane);
    }

    /// A state file of one sequence for this model, or why not.
    fn load_state(&self, path: &std::path::Path) -> Result<State, String> {
        let config = self.pipeline.model.config();
        let state = State::load(path, &config, &self.pipeline.device).map_err(|e| e.to_string())?;
        if state.batch_size() != 1 {
            return Err(format!(
                "{}: the state holds {} sequences; a request continues one",
                path.display(),
                state.batch_size()
            ));
        }
        Ok(state)
    }

    /// Advances every sequence of the batch by one token and ends those that finished.
    fn step(&mut self) -> Result<(), GenerateError> {
        if self.batch.running() == 0 {
            return Ok(());
        }
        let metrics = &self.shared.metrics;
        let shutdown = self.shared.shutdown.load(Relaxed);
        let lanes = &mut self.lanes;
        let mut on_text = |lane: usize, text: &str| {
            lanes[lane]
                .as_mut()
                .is_some_and(|l| l.on_text(text, metrics, shutdown))
        };
        let before = self.batch.running();
        if let Some(fed) = self
            .batch
            .advance(self.pipeline, &mut self.state, &mut on_text)?
        {
            let fed_rows = self.batch.running();
            metrics.generated_tokens.fetch_add(fed_rows as u64, Relaxed);
            self.window_tokens += fed_rows as u64;
            if self.batch.wants_logits() {
                self.batch.receive(read_logits(fed)?);
            }
        }
        if self.batch.running() < before {
            for (number, generation) in self.batch.take_finished(&mut on_text) {
                if let Some(lane) = lanes[number].take() {
                    lane.end(&generation, metrics);
                }
            }
        }
        Ok(())
    }

    /// Ends every request in flight with `message` and starts over with an empty batch.
    fn fail_all(&mut self, message: String) {
        let metrics = &self.shared.metrics;
        for reading in std::mem::take(&mut self.reading) {
            self.lane_of(&reading)
                .fail(End::Failed(message.clone()), metrics);
        }
        for lane in self.lanes.drain(..).flatten() {
            lane.fail(End::Failed(message.clone()), metrics);
        }
        self.batch = Batch::empty();
        self.state = State::zeros(&self.pipeline.model.config(), 1, &self.pipeline.device);
    }
}
