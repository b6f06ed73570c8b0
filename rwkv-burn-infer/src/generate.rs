//! Generation: prompt -> chunked prefill (sequence mode) -> decode (step mode) -> sampler ->
//! streamed text, for one sequence or a batch with a state each.

use crate::sampler::{Sampler, SamplerConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rwkv_burn::model::TokenError;
use rwkv_burn::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};
use rwkv_burn::{Rwkv, State};

/// End-of-text id of RWKV World and Pile vocabularies.
pub const END_OF_TEXT: u32 = 0;

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

    /// Reads `tokens` into `state` in sequence-mode chunks of at most `chunk` tokens; returns
    /// the logits after the last token. `progress` hears the number of tokens read so far.
    pub fn prefill(
        &self,
        tokens: &[u32],
        state: &mut State,
        chunk: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>, GenerateError> {
        Ok(to_vec(self.prefill_tensor(tokens, state, chunk, progress)?))
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
        let chunk = chunk.max(1);
        let mut done = 0;
        let parts = tokens.len().div_ceil(chunk);
        for (i, part) in tokens.chunks(chunk).enumerate() {
            let input = self.token_tensor(part, 1);
            done += part.len();
            if i + 1 == parts {
                let logits = self.model.forward_last(input, state);
                progress(done);
                return Ok(logits);
            }
            // Only the state matters here. The head of one position is cheap next to a chunk;
            // dropping `forward_hidden`'s output unread instead trips an index panic in Burn
            // 0.22.1's fusion code generator on wgpu (RWKV-4, chunks of 5).
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
    /// awaited after each token's text is out: a page passes one that yields to its event
    /// loop now and then, so text shows as it streams even when read-backs complete at once
    /// (CPU backends); elsewhere `|| std::future::ready(())`.
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

    /// Samples and feeds tokens one at a time, starting from the logits of the last input.
    pub fn decode(
        &self,
        mut logits: Vec<f32>,
        state: &mut State,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, GenerateError> {
        let mut decoding = Decoding::new(options);
        loop {
            match decoding.next(&logits, self, on_text)? {
                Next::Feed(token) => {
                    if let Some(out) = self.feed(token, state, decoding.wants_logits()) {
                        logits = to_vec(out);
                    }
                }
                Next::Done(stop) => return Ok(decoding.finish(stop, on_text)),
            }
        }
    }

    /// [`Pipeline::decode`] with asynchronous read-back, for the browser; `pause` as in
    /// [`Pipeline::generate_async`].
    pub async fn decode_async<P: Future<Output = ()>>(
        &self,
        mut logits: Vec<f32>,
        state: &mut State,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
        mut pause: impl FnMut() -> P,
    ) -> Result<Generation, GenerateError> {
        let mut decoding = Decoding::new(options);
        loop {
            match decoding.next(&logits, self, on_text)? {
                Next::Feed(token) => {
                    pause().await;
                    if let Some(out) = self.feed(token, state, decoding.wants_logits()) {
                        logits = to_vec_async(out).await?;
                    }
                }
                Next::Done(stop) => return Ok(decoding.finish(stop, on_text)),
            }
        }
    }

    /// Runs one sampled token through the model; returns its logits when they are wanted.
    /// (The last token is fed too, so the state is ready for a follow-up turn; see
    /// `prefill_tensor` for why its head is computed anyway.)
    fn feed(&self, token: u32, state: &mut State, want_logits: bool) -> Option<Tensor<2>> {
        let logits = self
            .model
            .forward_last(self.token_tensor(&[token], 1), state);
        want_logits.then_some(logits)
    }

    /// Generates for several prompts at once: each is read into its own state, then all decode
    /// together in one batch. Sequence `i` samples with seed `seed + i`.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
    ) -> Result<Vec<Generation>, GenerateError> {
        let config = self.model.config();
        let mut states = Vec::with_capacity(prompts.len());
        let mut logits = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let mut state = State::zeros(&config, 1, &self.device);
            logits.push(self.prefill(prompt, &mut state, options.prefill_chunk, &mut |_| {})?);
            states.push(state);
        }
        let mut state = State::stack(states);
        let mut lanes: Vec<Lane> = (0..prompts.len())
            .map(|i| Lane {
                sampler: Sampler::new(SamplerConfig {
                    seed: options.sampler.seed.wrapping_add(i as u64),
                    ..options.sampler.clone()
                }),
                stream: TextStream::new(options.stop_strings.clone()),
                tokens: Vec::new(),
                stop: None,
            })
            .collect();
        while lanes.iter().any(|l| l.stop.is_none()) {
            let mut next = Vec::with_capacity(lanes.len());
            for (lane, logits) in lanes.iter_mut().zip(&logits) {
                next.push(lane.step(logits, options, self.tokenizer)?);
            }
            if lanes.iter().all(|l| l.stop.is_some()) {
                break;
            }
            let out = self
                .model
                .forward_last(self.token_tensor(&next, lanes.len()), &mut state);
            let vocab = self.model.vocab_size();
            let flat = to_vec(out);
            logits = flat.chunks(vocab).map(<[f32]>::to_vec).collect();
        }
        Ok(lanes
            .into_iter()
            .map(|mut lane| {
                if !matches!(lane.stop, Some(StopReason::StopString(_))) {
                    lane.stream.finish();
                }
                Generation {
                    text: lane.stream.text().to_string(),
                    tokens: lane.tokens,
                    stop: lane.stop.unwrap_or(StopReason::MaxTokens),
                }
            })
            .collect())
    }

    fn token_tensor(&self, tokens: &[u32], batch: usize) -> Tensor<2, Int> {
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let len = ids.len() / batch;
        Tensor::from_data(TensorData::new(ids, [batch, len]), &self.device)
    }
}

/// One sequence of a batched generation.
struct Lane {
    sampler: Sampler,
    stream: TextStream,
    tokens: Vec<u32>,
    stop: Option<StopReason>,
}

impl Lane {
    /// Samples this lane's next token, or returns a filler token once it has stopped.
    fn step(
        &mut self,
        logits: &[f32],
        options: &GenerateOptions,
        tokenizer: &dyn Tokenizer,
    ) -> Result<u32, GenerateError> {
        if self.stop.is_some() {
            return Ok(END_OF_TEXT);
        }
        if self.tokens.len() >= options.max_tokens {
            self.stop = Some(StopReason::MaxTokens);
            return Ok(END_OF_TEXT);
        }
        let token = self.sampler.sample(logits);
        if options.stop_tokens.contains(&token) {
            self.stop = Some(StopReason::StopToken(token));
            return Ok(END_OF_TEXT);
        }
        self.tokens.push(token);
        let (_, hit) = self.stream.push(&tokenizer.token_bytes(token)?);
        if let Some(stop) = hit {
            self.stop = Some(StopReason::StopString(stop));
        }
        Ok(token)
    }
}

/// What decoding does next.
enum Next {
    /// Feed this token to the model.
    Feed(u32),
    /// Stop, for this reason.
    Done(StopReason),
}

/// The bookkeeping of one sequence's decoding (sampling, stops, streamed text), shared by the
/// blocking and the asynchronous loop so they cannot drift apart.
struct Decoding<'o> {
    options: &'o GenerateOptions,
    sampler: Sampler,
    stream: TextStream,
    tokens: Vec<u32>,
}

impl<'o> Decoding<'o> {
    fn new(options: &'o GenerateOptions) -> Self {
        Self {
            options,
            sampler: Sampler::new(options.sampler.clone()),
            stream: TextStream::new(options.stop_strings.clone()),
            tokens: Vec::new(),
        }
    }

    /// Samples from `logits` and streams the token's text; says whether to feed it.
    fn next(
        &mut self,
        logits: &[f32],
        pipeline: &Pipeline<'_>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Next, GenerateError> {
        if self.tokens.len() >= self.options.max_tokens {
            return Ok(Next::Done(StopReason::MaxTokens));
        }
        let token = self.sampler.sample(logits);
        if self.options.stop_tokens.contains(&token) {
            return Ok(Next::Done(StopReason::StopToken(token)));
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
            return Ok(Next::Done(StopReason::StopString(stop)));
        }
        if !keep_going {
            return Ok(Next::Done(StopReason::Cancelled));
        }
        Ok(Next::Feed(token))
    }

    /// Whether the token just sampled needs its logits (not when it is the last one).
    fn wants_logits(&self) -> bool {
        self.tokens.len() < self.options.max_tokens
    }

    fn finish(mut self, stop: StopReason, on_text: &mut dyn FnMut(&str) -> bool) -> Generation {
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

fn to_vec(logits: Tensor<2>) -> Vec<f32> {
    f32_values(logits.into_data())
}

async fn to_vec_async(logits: Tensor<2>) -> Result<Vec<f32>, GenerateError> {
    let data = logits
        .into_data_async()
        .await
        .map_err(|e| GenerateError::Device(format!("{e:?}")))?;
    Ok(f32_values(data))
}

fn f32_values(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 logits")
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
