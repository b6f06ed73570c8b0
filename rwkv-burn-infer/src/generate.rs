//! Generation: prompt -> chunked prefill (sequence mode) -> decode (step mode) -> sampler ->
//! streamed text, for one sequence or a batch with a state each.

use crate::sampler::{Sampler, SamplerConfig};
use burn::tensor::{Device, Tensor, TensorData};
use rwkv_burn::model::{TokenError, token_tensor};
pub use rwkv_burn::tokenizer::END_OF_TEXT;
use rwkv_burn::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};
use rwkv_burn::{Rwkv, State};

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampler: SamplerConfig,
    /// Generation stops before any of these strings; they are not part of the output.
    pub stop_strings: Vec<String>,
    /// Generation stops at these tokens (not emitted).
    pub stop_tokens: Vec<u32>,
    /// Longest sequence-mode call while reading the prompt: bounds memory for long prompts.
    pub prefill_chunk: usize,
}

/// The longest sequence-mode call [`GenerateOptions::prefill_chunk`] may ask for: longer
/// calls only cost memory (the WKV kernels work in chunks of their own).
pub const MAX_PREFILL_CHUNK: usize = 65536;

/// A generation option out of range; says which and what the range is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{name} is {value}; it must be {range}")]
pub struct OptionsError {
    /// The option (its command-line spelling).
    pub name: &'static str,
    /// The value given.
    pub value: String,
    /// What it must be.
    pub range: String,
}

impl OptionsError {
    /// An option `name` whose `value` is outside `range`.
    pub fn new(
        name: &'static str,
        value: impl std::fmt::Display,
        range: impl Into<String>,
    ) -> Self {
        Self {
            name,
            value: value.to_string(),
            range: range.into(),
        }
    }
}

fn check_chunk(chunk: usize) -> Result<(), OptionsError> {
    if (1..=MAX_PREFILL_CHUNK).contains(&chunk) {
        Ok(())
    } else {
        Err(OptionsError::new(
            "prefill-chunk",
            chunk,
            format!("1 to {MAX_PREFILL_CHUNK}"),
        ))
    }
}

impl GenerateOptions {
    /// Checks every option for a model of `vocab` tokens: at least one token to generate,
    /// a prefill chunk of 1 to [`MAX_PREFILL_CHUNK`], and the sampler's ranges
    /// ([`SamplerConfig::validate`]). Generation runs it first, so out-of-range values are
    /// refused instead of silently giving greedy text or no tokens.
    pub fn validate(&self, vocab: usize) -> Result<(), OptionsError> {
        if self.max_tokens == 0 {
            return Err(OptionsError::new("max-tokens", 0, "at least 1"));
        }
        check_chunk(self.prefill_chunk)?;
        self.sampler.validate(vocab)
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 200,
            sampler: SamplerConfig::default(),
            stop_strings: Vec::new(),
            stop_tokens: vec![END_OF_TEXT],
            prefill_chunk: 256,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `max_tokens` were generated.
    MaxTokens,
    /// A stop token was sampled.
    StopToken(u32),
    /// A stop string appeared.
    StopString(String),
    /// The text callback asked to stop.
    Cancelled,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Every sampled token that was fed to the model (stop tokens excluded).
    pub tokens: Vec<u32>,
    /// The text, without any stop string.
    pub text: String,
    /// Why it ended.
    pub stop: StopReason,
}

/// What can go wrong while generating.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Bad prompt tokens.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Options out of range (see [`GenerateOptions::validate`]).
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// A state that does not fit the call: another batch size, or another model's layers.
    #[error(
        "the state holds {got} sequences in {layers} layers; this call needs {want} in {model_layers}"
    )]
    State {
        /// Sequences in the state.
        got: usize,
        /// Sequences the call needs.
        want: usize,
        /// Layers in the state.
        layers: usize,
        /// Layers in the model.
        model_layers: usize,
    },
    /// Reading results back from the device failed.
    #[error("reading results back from the device failed: {0}")]
    Device(String),
    /// The model produced tokens the tokenizer does not know: they do not belong together.
    #[error(
        "the model (vocabulary {model}) and the tokenizer (vocabulary {tokenizer}) do not match"
    )]
    VocabMismatch {
        /// Model vocabulary size.
        model: usize,
        /// Tokenizer vocabulary size.
        tokenizer: usize,
    },
}

/// Turns sampled tokens into text, holding back incomplete characters and anything that may be
/// the start of a stop string.
#[derive(Debug, Clone)]
pub struct TextStream {
    utf8: StreamDecoder,
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl TextStream {
    /// A stream that ends at any of `stops`.
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            utf8: StreamDecoder::new(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            emitted: 0,
        }
    }

    /// Adds a token's bytes. Returns the text that can be shown now and, if a stop string
    /// completed, which one (the text then ends just before it).
    pub fn push(&mut self, bytes: &[u8]) -> (String, Option<String>) {
        let search_from = self.emitted;
        self.text.push_str(&self.utf8.push(bytes));
        let hit = self
            .stops
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| (search_from + i, s))
            })
            .min_by_key(|(i, _)| *i);
        if let Some((at, stop)) = hit {
            let stop = stop.clone();
            self.text.truncate(at);
            return (self.take(at), Some(stop));
        }
        let safe = self.text.len() - self.held_back();
        (self.take(safe), None)
    }

    /// Ends the stream, releasing whatever was held back.
    pub fn finish(&mut self) -> String {
        self.text.push_str(&self.utf8.finish());
        self.take(self.text.len())
    }

    /// The whole text so far (without stop strings).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn take(&mut self, end: usize) -> String {
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

    /// Length of the longest tail of the unshown text that begins some stop string.
    fn held_back(&self) -> usize {
        let pending = &self.text[self.emitted..];
        pending
            .char_indices()
            .map(|(i, _)| &pending[i..])
            .find(|tail| self.stops.iter().any(|s| s.starts_with(tail)))
            .map_or(0, str::len)
    }
}

/// A model with its tokenizer, ready to generate.
pub struct Pipeline<'a> {
    /// The model.
    pub model: &'a Rwkv,
    /// Its tokenizer.
    pub tokenizer: &'a dyn Tokenizer,
    /// The device the model lives on.
    pub device: Device,
}

impl<'a> Pipeline<'a> {
    /// Pairs a model with a tokenizer.
    pub fn new(model: &'a Rwkv, tokenizer: &'a dyn Tokenizer, device: Device) -> Self {
        Self {
            model,
            tokenizer,
            device,
        }
    }

    /// Checks that `state` has `batch` sequences and the model's layers: what
    /// [`Rwkv::forward`] would otherwise panic on.
    pub fn check_state(&self, state: &State, batch: usize) -> Result<(), GenerateError> {
        let model_layers = self.model.blocks.len();
        if state.batch_size() != batch || state.layers.len() != model_layers {
            return Err(GenerateError::State {
                got: state.batch_size(),
                want: batch,
                layers: state.layers.len(),
                model_layers,
            });
        }
        Ok(())
    }

    /// Reads `tokens` into `state` in sequence-mode chunks of at most `chunk` tokens; returns
    /// the logits after the last token. `progress` hears the number of tokens read so far.
    pub fn prefill(
        &self,
        tokens: &[u32],
        state: &mut State,
        chunk: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>, GenerateError> {
        to_vec(self.prefill_tensor(tokens, state, chunk, progress)?)
    }

    /// [`Pipeline::prefill`] for targets that cannot block on the device (the browser): the
    /// logits are read back asynchronously.
    pub async fn prefill_async(
        &self,
        tokens: &[u32],
        state: &mut State,
        chunk: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>, GenerateError> {
        to_vec_async(self.prefill_tensor(tokens, state, chunk, progress)?).await
    }

    /// The model work of a prefill; the caller reads the returned last-position logits.
    fn prefill_tensor(
        &self,
        tokens: &[u32],
        state: &mut State,
        chunk: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Tensor<2>, GenerateError> {
        self.model.check_tokens(tokens)?;
        self.check_state(state, 1)?;
        check_chunk(chunk)?;
        let mut done = 0;
        let parts = tokens.len().div_ceil(chunk);
        for (i, part) in tokens.chunks(chunk).enumerate() {
            let input = token_tensor(part, 1, &self.device);
            done += part.len();
            if i + 1 == parts {
                let logits = self.model.forward_last(input, state);
                progress(done);
                return Ok(logits);
            }
            // Only the state matters here. The head of one position is cheap next to a chunk;
            // dropping the hidden states unread instead trips an index panic in Burn 0.22.1's
            // fusion code generator on wgpu (RWKV-4, chunks of 5).
            let _ = self.model.forward_last(input, state);
            progress(done);
        }
        unreachable!("check_tokens rejects empty prompts")
    }

    /// Like [`Pipeline::prefill`] from a fresh state, but starts from the longest prefix of
    /// `tokens` that `cache` holds, and caches the state after `tokens` for later prompts.
    pub fn prefill_cached(
        &self,
        tokens: &[u32],
        cache: &mut crate::prefix_cache::PrefixCache,
        chunk: usize,
    ) -> Result<(State, Vec<f32>), GenerateError> {
        let (mut state, mut logits, done) = match cache.lookup(tokens) {
            Some(hit) => (hit.state, hit.logits, hit.len),
            None => (
                State::zeros(&self.model.config(), 1, &self.device),
                Vec::new(),
                0,
            ),
        };
        if done < tokens.len() {
            logits = self.prefill(&tokens[done..], &mut state, chunk, &mut |_| {})?;
            cache.insert(tokens.to_vec(), state.clone(), logits.clone());
        }
        Ok((state, logits))
    }

    /// Generates after `prompt`, continuing from `state` (which ends up after the last token
    /// fed to the model). `on_text` receives text as it becomes final and returns `false` to
    /// stop early.
    pub fn generate(
        &self,
        prompt: &[u32],
        state: &mut State,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, GenerateError> {
        let logits = self.prefill(prompt, state, options.prefill_chunk, &mut |_| {})?;
        self.decode(logits, state, options, on_text)
    }

    /// [`Pipeline::generate`] with asynchronous read-back, for the browser. `pause` is
    /// awaited after each token is fed: a page passes one that yields to its event loop now
    /// and then, so text shows as it streams even when read-backs complete at once (CPU
    /// backends); elsewhere `|| std::future::ready(())`.
    pub async fn generate_async<P: Future<Output = ()>>(
        &self,
        prompt: &[u32],
        state: &mut State,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
        pause: impl FnMut() -> P,
    ) -> Result<Generation, GenerateError> {
        let logits = self
            .prefill_async(prompt, state, options.prefill_chunk, &mut |_| {})
            .await?;
        self.decode_async(logits, state, options, on_text, pause)
            .await
    }

    /// Samples and feeds tokens one at a time, starting from the logits of the last input:
    /// a batch of one for [`Batch`].
    pub fn decode(
        &self,
        logits: Vec<f32>,
        state: &mut State,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, GenerateError> {
        options.validate(self.model.vocab_size())?;
        self.check_state(state, 1)?;
        let mut batch = Batch::new(vec![Decoding::new(options.clone())], vec![logits]);
        while let Some(fed) = batch.advance(self, state, &mut |_, text| on_text(text))? {
            if batch.wants_logits() {
                batch.receive(to_vec(fed)?);
            }
        }
        Ok(batch.finish(&mut |_, text| on_text(text)).remove(0))
    }

    /// [`Pipeline::decode`] with asynchronous read-back, for the browser; `pause` as in
    /// [`Pipeline::generate_async`].
    pub async fn decode_async<P: Future<Output = ()>>(
        &self,
        logits: Vec<f32>,
        state: &mut State,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
        mut pause: impl FnMut() -> P,
    ) -> Result<Generation, GenerateError> {
        options.validate(self.model.vocab_size())?;
        self.check_state(state, 1)?;
        let mut batch = Batch::new(vec![Decoding::new(options.clone())], vec![logits]);
        while let Some(fed) = batch.advance(self, state, &mut |_, text| on_text(text))? {
            pause().await;
            if batch.wants_logits() {
                batch.receive(to_vec_async(fed).await?);
            }
        }
        Ok(batch.finish(&mut |_, text| on_text(text)).remove(0))
    }

    /// Generates for several prompts at once: each is read into its own state, then all decode
    /// together in one batch. Sequence `i` samples with seed `seed + i`.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
    ) -> Result<Vec<Generation>, GenerateError> {
        self.generate_batch_streaming(prompts, options, &mut |_, _| true)
    }

    /// [`Pipeline::generate_batch`], streaming: `on_text(i, text)` receives sequence `i`'s
    /// text as it becomes final, and returning `false` stops that sequence alone
    /// ([`StopReason::Cancelled`]) while the others go on.
    pub fn generate_batch_streaming(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Result<Vec<Generation>, GenerateError> {
        options.validate(self.model.vocab_size())?;
        let config = self.model.config();
        let mut states = Vec::with_capacity(prompts.len());
        let mut logits = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let mut state = State::zeros(&config, 1, &self.device);
            logits.push(self.prefill(prompt, &mut state, options.prefill_chunk, &mut |_| {})?);
            states.push(state);
        }
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = State::stack(states);
        let lanes = (0..prompts.len())
            .map(|i| {
                let mut options = options.clone();
                options.sampler.seed = options.sampler.seed.wrapping_add(i as u64);
                Decoding::new(options)
            })
            .collect();
        let mut batch = Batch::new(lanes, logits);
        while let Some(fed) = batch.advance(self, &mut state, on_text)? {
            if batch.wants_logits() {
                batch.receive(to_vec(fed)?);
            }
        }
        Ok(batch.finish(on_text))
    }
}

/// What decoding a sequence does after a sample.
enum Next {
    /// Feed this token to the model.
    Feed(u32),
    /// The sequence has ended.
    Done,
}

/// One sequence's decoding: its sampler, stops and streamed text. A [`Batch`] steps any
/// number of them together; single-sequence generation is a batch of one, so the two cannot
/// drift apart.
#[derive(Debug, Clone)]
pub struct Decoding {
    options: GenerateOptions,
    sampler: Sampler,
    stream: TextStream,
    tokens: Vec<u32>,
    stop: Option<StopReason>,
}

impl Decoding {
    /// A sequence decoding with `options`.
    pub fn new(options: GenerateOptions) -> Self {
        Self {
            sampler: Sampler::new(options.sampler.clone()),
            stream: TextStream::new(options.stop_strings.clone()),
            tokens: Vec::new(),
            stop: None,
            options,
        }
    }

    /// Samples the next token from `logits` (ids from `known` on excluded), or `None` if the
    /// sequence has ended. The part of a step that batched sequences run in parallel.
    fn pick(&mut self, logits: &[f32], known: usize) -> Option<u32> {
        if self.stop.is_some() {
            return None;
        }
        if self.tokens.len() >= self.options.max_tokens {
            self.stop = Some(StopReason::MaxTokens);
            return None;
        }
        self.sampler.limit_to(known);
        Some(self.sampler.sample(logits))
    }

    /// Takes a picked token: streams its text through `on_text` and says whether to feed it.
    /// A token that ends the sequence (a stop token, one completing a stop string, one after
    /// which `on_text` asked to stop) is not fed; the last of `max_tokens` is, so the state
    /// is ready for a follow-up turn.
    fn accept(
        &mut self,
        token: Option<u32>,
        pipeline: &Pipeline<'_>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Next, GenerateError> {
        let Some(token) = token else {
            return Ok(Next::Done);
        };
        if self.options.stop_tokens.contains(&token) {
            self.stop = Some(StopReason::StopToken(token));
            return Ok(Next::Done);
        }
        let bytes =
            pipeline
                .tokenizer
                .token_bytes(token)
                .map_err(|_| GenerateError::VocabMismatch {
                    model: pipeline.model.vocab_size(),
                    tokenizer: pipeline.tokenizer.vocab_size(),
                })?;
        self.tokens.push(token);
        let (shown, hit) = self.stream.push(&bytes);
        let keep_going = on_text(&shown);
        if let Some(stop) = hit {
            self.stop = Some(StopReason::StopString(stop));
        } else if !keep_going {
            self.stop = Some(StopReason::Cancelled);
        }
        Ok(match self.stop {
            Some(_) => Next::Done,
            None => Next::Feed(token),
        })
    }

    /// Whether the next step samples (and so needs the logits of the token just fed).
    fn wants_logits(&self) -> bool {
        self.stop.is_none() && self.tokens.len() < self.options.max_tokens
    }

    /// The result, releasing held-back text through `on_text` unless a stop string ended it.
    fn finish(mut self, on_text: &mut dyn FnMut(&str) -> bool) -> Generation {
        let stop = self.stop.unwrap_or(StopReason::MaxTokens);
        if !matches!(stop, StopReason::StopString(_)) {
            on_text(&self.stream.finish());
        }
        Generation {
            tokens: self.tokens,
            text: self.stream.text().to_string(),
            stop,
        }
    }
}

/// Sequences decoding together, each with a row of one batched state: every step samples
/// each running sequence, drops the rows of those that ended, and feeds the rest in one call.
/// [`Pipeline::decode`], [`Pipeline::decode_async`] and [`Pipeline::generate_batch`] drive
/// it, reading the fed call's logits back as they can (blocking or asynchronously); the
/// server (`serve`) also lets sequences join at token boundaries ([`Batch::join`]) and takes
/// each one's result as it ends ([`Batch::take_finished`]).
pub struct Batch {
    /// Every sequence by lane number; `None` once its result was taken (the slot is reused).
    lanes: Vec<Option<Decoding>>,
    /// The lanes whose rows the state holds, in row order.
    running: Vec<usize>,
    /// Logits per row of the state, from the last call.
    logits: Vec<Vec<f32>>,
}

impl Batch {
    /// Sequences about to sample from `logits` (one per lane, matching the state's rows).
    pub fn new(lanes: Vec<Decoding>, logits: Vec<Vec<f32>>) -> Self {
        let running = (0..lanes.len()).collect();
        Self {
            lanes: lanes.into_iter().map(Some).collect(),
            running,
            logits,
        }
    }

    /// A batch with no sequences; [`Batch::join`] adds them.
    pub fn empty() -> Self {
        Self::new(Vec::new(), Vec::new())
    }

    /// Adds a sequence whose own state (`row`, one sequence) has read its prompt and whose
    /// next sample comes from `logits`: its row goes last in `state`, which it replaces when no
    /// sequence is running. Call it between steps (after [`Batch::receive`], or after
    /// [`Batch::advance`] returned `None`). Returns the sequence's lane number.
    pub fn join(
        &mut self,
        state: &mut State,
        decoding: Decoding,
        row: State,
        logits: Vec<f32>,
    ) -> usize {
        if self.running.is_empty() {
            *state = row;
        } else {
            *state = State::stack(vec![state.clone(), row]);
        }
        // Rows that did not ask for logits (their last token was their last) have none.
        self.logits.resize(self.running.len(), Vec::new());
        self.logits.push(logits);
        let lane = match self.lanes.iter().position(Option::is_none) {
            Some(free) => {
                self.lanes[free] = Some(decoding);
                free
            }
            None => {
                self.lanes.push(Some(decoding));
                self.lanes.len() - 1
            }
        };
        self.running.push(lane);
        lane
    }

    /// Number of sequences whose rows the state holds.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    fn lane(&mut self, lane: usize) -> &mut Decoding {
        self.lanes[lane]
            .as_mut()
            .expect("a running lane's result is taken only after it ends")
    }

    /// Samples every running sequence (streaming text through `on_text(lane, text)`), keeps
    /// the state rows of those that go on, and feeds their tokens in one call. Returns that
    /// call's logits to read back, or `None` when every sequence has ended (the state then
    /// holds the rows of the last call).
    pub fn advance(
        &mut self,
        pipeline: &Pipeline<'_>,
        state: &mut State,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Result<Option<Tensor<2>>, GenerateError> {
        let picks = self.pick_all(pipeline.tokenizer.vocab_size());
        let mut feed = Vec::with_capacity(self.running.len());
        let mut kept = Vec::with_capacity(self.running.len());
        for (row, pick) in picks.into_iter().enumerate() {
            let lane = self.running[row];
            let next = self
                .lane(lane)
                .accept(pick, pipeline, &mut |text| on_text(lane, text))?;
            if let Next::Feed(token) = next {
                feed.push(token);
                kept.push(row);
            }
        }
        if feed.is_empty() {
            self.running.clear();
            self.logits.clear();
            return Ok(None);
        }
        if kept.len() < self.running.len() {
            *state = state.select(&kept);
            self.running = kept.iter().map(|&row| self.running[row]).collect();
        }
        let input = token_tensor(&feed, feed.len(), &pipeline.device);
        Ok(Some(pipeline.model.forward_last(input, state)))
    }

    /// Samples every running sequence from its row of the last logits, in row order. Rows
    /// sample in parallel where there are threads: at 65536 ids sampling is a fixed cost per
    /// sequence that batching the model call does not share.
    fn pick_all(&mut self, known: usize) -> Vec<Option<u32>> {
        let mut logits = std::mem::take(&mut self.logits);
        logits.resize(self.running.len(), Vec::new());
        let mut row_of = vec![usize::MAX; self.lanes.len()];
        for (row, &lane) in self.running.iter().enumerate() {
            row_of[lane] = row;
        }
        let mut rows: Vec<(usize, &mut Decoding)> = self
            .lanes
            .iter_mut()
            .enumerate()
            .filter(|(lane, _)| row_of[*lane] != usize::MAX)
            .filter_map(|(lane, d)| d.as_mut().map(|d| (row_of[lane], d)))
            .collect();
        rows.sort_by_key(|(row, _)| *row);
        let pick =
            |(row, decoding): &mut (usize, &mut Decoding)| decoding.pick(&logits[*row], known);
        #[cfg(not(target_arch = "wasm32"))]
        if rows.len() > 1 {
            use rayon::prelude::*;
            return rows.par_iter_mut().map(pick).collect();
        }
        rows.iter_mut().map(pick).collect()
    }

    /// Whether a running sequence will sample from the logits of the call just made.
    pub fn wants_logits(&self) -> bool {
        self.running.iter().any(|&lane| {
            self.lanes[lane]
                .as_ref()
                .is_some_and(Decoding::wants_logits)
        })
    }

    /// The logits of the call [`Batch::advance`] made, `[rows, vocabulary]` flattened.
    pub fn receive(&mut self, flat: Vec<f32>) {
        let rows = self.running.len().max(1);
        let vocab = flat.len() / rows;
        self.logits = flat.chunks(vocab.max(1)).map(<[f32]>::to_vec).collect();
    }

    /// The results of the sequences that have ended since the last call, with their lane
    /// numbers (free for reuse from now on). Held-back text goes out through `on_text` first,
    /// as in [`Batch::finish`].
    pub fn take_finished(
        &mut self,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Vec<(usize, Generation)> {
        let mut done = Vec::new();
        for lane in 0..self.lanes.len() {
            if self.running.contains(&lane) {
                continue;
            }
            if let Some(decoding) = self.lanes[lane].take() {
                done.push((lane, decoding.finish(&mut |text| on_text(lane, text))));
            }
        }
        done
    }

    /// Every sequence's result, in lane order.
    pub fn finish(self, on_text: &mut dyn FnMut(usize, &str) -> bool) -> Vec<Generation> {
        self.lanes
            .into_iter()
            .enumerate()
            .filter_map(|(lane, decoding)| {
                decoding.map(|decoding| decoding.finish(&mut |text| on_text(lane, text)))
            })
            .collect()
    }
}

/// Reads logits back from the device (blocking), `[rows, vocabulary]` flattened: what
/// [`Batch::receive`] takes.
pub fn read_logits(logits: Tensor<2>) -> Result<Vec<f32>, GenerateError> {
    to_vec(logits)
}

fn to_vec(logits: Tensor<2>) -> Result<Vec<f32>, GenerateError> {
    let data = logits
        .try_into_data()
        .map_err(|e| GenerateError::Device(format!("{e:?}")))?;
    f32_values(data)
}

async fn to_vec_async(logits: Tensor<2>) -> Result<Vec<f32>, GenerateError> {
    let data = logits
        .into_data_async()
        .await
        .map_err(|e| GenerateError::Device(format!("{e:?}")))?;
    f32_values(data)
}

fn f32_values(data: TensorData) -> Result<Vec<f32>, GenerateError> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| GenerateError::Device(format!("logits are not f32: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let mut s = TextStream::new(vec!["\n\nUser:".into()]);
        assert_eq!(s.push(b"Hello"), ("Hello".into(), None));
        assert_eq!(s.push(b"\n"), (String::new(), None));
        assert_eq!(s.push(b"\nUs"), (String::new(), None));
        let (shown, hit) = s.push(b"er: hi");
        assert_eq!((shown.as_str(), hit.as_deref()), ("", Some("\n\nUser:")));
        assert_eq!(s.text(), "Hello");
    }

    #[test]
    fn held_back_text_is_released_when_it_is_not_a_stop() {
        let mut s = TextStream::new(vec!["STOP".into()]);
        assert_eq!(s.push(b"aST").0, "a");
        assert_eq!(s.push(b"x").0, "STx");
        assert_eq!(s.push(b"ST").0, "");
        assert_eq!(s.finish(), "ST");
    }
}
