//! Chat fine-tuning data (supervised fine-tuning): conversations in JSON lines, rendered with
//! the G1 chat template that `rwkv chat` and the server use, with a loss mask that keeps the
//! assistant's turns only; each conversation one training sample, padded in its batch
//! instead of cut into windows.
//!
//! A line is `{"messages": [{"role": ..., "content": ...}, ...]}` (OpenAI's and RWKV-PEFT's
//! conversation datasets) or `{"text": ...}` (trained on whole, ending with the end-of-text
//! token as RWKV-LM's documents do). A conversation is written exactly as
//! [`rwkv_burn_infer::chat_template::render`] writes a prompt (system and user texts cleaned,
//! `Role: text` turns, a blank line after each) and the loss covers what the model says:
//! each assistant text and the blank line that ends it (so the model learns to stop), not
//! the `Assistant:` label before it nor anything the user or system says.
//!
//! On disk (`rwkv-train prepare`): the tokens as a binidx pair (one document per sample) and
//! `PREFIX.mask`, one byte per token (1: the token is a target the loss counts), in the same
//! order.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rwkv_burn::tokenizer::{END_OF_TEXT, Tokenizer};
use rwkv_burn_infer::chat_template::{Role, TURN_END, clean};
use std::path::{Path, PathBuf};

/// One training sample: tokens and whether the loss counts each as a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// `mask[i]`: the loss counts predicting `tokens[i]` (the first token, which nothing
    /// predicts, is never counted).
    pub mask: Vec<bool>,
}

/// A JSON line that is not a sample. `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// Neither `messages` nor `text`.
    #[error("line {line}: neither a \"messages\" list nor a \"text\" string")]
    NoContent {
        /// The line.
        line: usize,
    },
    /// A message is not an object with a string `role`.
    #[error("line {line}: message {index} has no \"role\" string")]
    NoRole {
        /// The line.
        line: usize,
        /// The message's position (0-based).
        index: usize,
    },
    /// A role other than system/developer, user, assistant.
    #[error(
        "line {line}: message {index} has the unknown role {role:?} (system, developer, user or assistant)"
    )]
    UnknownRole {
        /// The line.
        line: usize,
        /// The message's position.
        index: usize,
        /// The role given.
        role: String,
    },
    /// A message without a string `content`.
    #[error("line {line}: message {index} has no \"content\" string")]
    NoMessageContent {
        /// The line.
        line: usize,
        /// The message's position.
        index: usize,
    },
    /// A message with no text (an empty assistant turn teaches nothing but silence).
    #[error("line {line}: message {index} ({role}) is empty")]
    EmptyMessage {
        /// The line.
        line: usize,
        /// The message's position.
        index: usize,
        /// Its role.
        role: &'static str,
    },
    /// A conversation without an assistant turn: nothing to learn.
    #[error("line {line}: the conversation has no assistant message to learn from")]
    NoAssistant {
        /// The line.
        line: usize,
    },
    /// The tokenizer refused the text.
    #[error("line {line}: {message}")]
    Tokenizer {
        /// The line.
        line: usize,
        /// Why.
        message: String,
    },
}

/// The sample of one JSON line (`line` numbers errors).
pub fn sample(
    value: &serde_json::Value,
    tokenizer: &dyn Tokenizer,
    line: usize,
) -> Result<Sample, SampleError> {
    let mut sample = Sample {
        tokens: Vec::new(),
        mask: Vec::new(),
    };
    let mut push = |text: &str, trained: bool| -> Result<(), SampleError> {
        let ids = tokenizer
            .encode(text.as_bytes())
            .map_err(|e| SampleError::Tokenizer {
                line,
                message: e.to_string(),
            })?;
        sample.mask.extend(std::iter::repeat_n(trained, ids.len()));
        sample.tokens.extend(ids);
        Ok(())
    };
    if let Some(messages) = value.get("messages") {
        let Some(messages) = messages.as_array() else {
            return Err(SampleError::NoContent { line });
        };
        let mut assistant = false;
        for (index, message) in messages.iter().enumerate() {
            let name = message
                .get("role")
                .and_then(|r| r.as_str())
                .ok_or(SampleError::NoRole { line, index })?;
            let role = Role::parse(name).ok_or_else(|| SampleError::UnknownRole {
                line,
                index,
                role: name.to_string(),
            })?;
            let content = message
                .get("content")
                .and_then(|c| c.as_str())
                .ok_or(SampleError::NoMessageContent { line, index })?;
            // As the template writes them: assistant text trimmed, the others cleaned.
            let text = match role {
                Role::Assistant => content.trim().to_string(),
                _ => clean(content),
            };
            if text.is_empty() {
                return Err(SampleError::EmptyMessage {
                    line,
                    index,
                    role: role.label(),
                });
            }
            push(&format!("{}:", role.label()), false)?;
            let trained = role == Role::Assistant;
            assistant |= trained;
            push(&format!(" {text}{TURN_END}"), trained)?;
        }
        if !assistant {
            return Err(SampleError::NoAssistant { line });
        }
        return Ok(sample);
    }
    let Some(text) = value.get("text").and_then(|t| t.as_str()) else {
        return Err(SampleError::NoContent { line });
    };
    push(text, true)?;
    sample.tokens.push(END_OF_TEXT);
    sample.mask.push(true);
    Ok(sample)
}

/// `PREFIX.mask` beside `PREFIX.bin` / `PREFIX.idx`.
pub fn mask_path(prefix: &Path) -> PathBuf {
    let (bin, _) = crate::binidx::paths(prefix);
    bin.with_extension("mask")
}

/// Training and validation samples.
#[derive(Debug, Clone)]
pub struct SampleCorpus {
    /// Samples to train on.
    pub train: Vec<Sample>,
    /// Held-out samples.
    pub valid: Vec<Sample>,
}

/// Why samples cannot be trained on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleCorpusError {
    /// Fewer than two samples with a target.
    #[error("{0} samples with a target to learn; training and validation need at least 2")]
    TooFew(usize),
    /// A token the model does not have.
    #[error("sample {sample}: token {token} is outside the model's vocabulary of {vocab}")]
    OutOfVocab {
        /// The sample (0-based).
        sample: usize,
        /// The token.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The token and mask files disagree.
    #[error("the mask file has {mask} entries for {tokens} tokens")]
    MaskLength {
        /// Mask entries.
        mask: usize,
        /// Tokens.
        tokens: usize,
    },
}

impl SampleCorpus {
    /// The last `valid_fraction` of the samples (at least one) held out. Samples are cut to
    /// `ctx + 1` tokens (RWKV-PEFT cuts at its ctx_len too); samples left with no target
    /// are dropped.
    pub fn split(
        samples: Vec<Sample>,
        valid_fraction: f32,
        ctx: usize,
        vocab: usize,
    ) -> Result<Self, SampleCorpusError> {
        let mut kept = Vec::with_capacity(samples.len());
        for (index, mut sample) in samples.into_iter().enumerate() {
            if let Some(&token) = sample.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(SampleCorpusError::OutOfVocab {
                    sample: index,
                    token,
                    vocab,
                });
            }
            sample.tokens.truncate(ctx + 1);
            sample.mask.truncate(ctx + 1);
            if sample.tokens.len() >= 2 && sample.mask[1..].iter().any(|&m| m) {
                kept.push(sample);
            }
        }
        if kept.len() < 2 {
            return Err(SampleCorpusError::TooFew(kept.len()));
        }
        let valid_len = ((kept.len() as f32 * valid_fraction) as usize).clamp(1, kept.len() - 1);
        let valid = kept.split_off(kept.len() - valid_len);
        Ok(Self { train: kept, valid })
    }

    /// Samples from documents and their concatenated mask bytes (as `prepare` writes them).
    pub fn samples_from_files(
        documents: Vec<Vec<u32>>,
        mask: &[u8],
    ) -> Result<Vec<Sample>, SampleCorpusError> {
        let tokens: usize = documents.iter().map(Vec::len).sum();
        if tokens != mask.len() {
            return Err(SampleCorpusError::MaskLength {
                mask: mask.len(),
                tokens,
            });
        }
        let mut offset = 0;
        Ok(documents
            .into_iter()
            .map(|tokens| {
                let mask = mask[offset..offset + tokens.len()]
                    .iter()
                    .map(|&m| m != 0)
                    .collect();
                offset += tokens.len();
                Sample { tokens, mask }
            })
            .collect())
    }
}

/// Samples as one right-padded batch: inputs and targets `[B, L]` (`L` the longest sample
/// less one) and the loss weight of every position (1 where the target counts, 0 elsewhere,
/// padding included).
pub fn padded_batch(samples: &[&Sample], device: &Device) -> crate::data::Batch {
    let len = samples
        .iter()
        .map(|s| s.tokens.len() - 1)
        .max()
        .unwrap_or(1);
    let rows = samples.len();
    let mut inputs = vec![0i64; rows * len];
    let mut targets = vec![0i64; rows * len];
    let mut weights = vec![0f32; rows * len];
    for (row, sample) in samples.iter().enumerate() {
        for t in 0..sample.tokens.len() - 1 {
            inputs[row * len + t] = i64::from(sample.tokens[t]);
            targets[row * len + t] = i64::from(sample.tokens[t + 1]);
            weights[row * len + t] = if sample.mask[t + 1] { 1.0 } else { 0.0 };
        }
    }
    crate::data::Batch {
        inputs: Tensor::<2, Int>::from_data(TensorData::new(inputs, [rows, len]), device),
        targets: Tensor::<2, Int>::from_data(TensorData::new(targets, [rows, len]), device),
        weights: Some(Tensor::from_data(
            TensorData::new(weights, [rows, len]),
            device,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes() -> Box<dyn Tokenizer> {
        rwkv_burn::tokenizer::choose(Some("bytes"), 0).unwrap()
    }

    fn text_of(sample: &Sample, trained: bool) -> String {
        let bytes: Vec<u8> = sample
            .tokens
            .iter()
            .zip(&sample.mask)
            .filter(|(_, m)| **m == trained)
            .map(|(&t, _)| t as u8)
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn conversations_render_like_the_chat_template_and_train_on_the_assistant_only() {
        let line = json!({"messages": [
            {"role": "system", "content": "Be brief.\r\n\r\nVery."},
            {"role": "user", "content": "  Hi there  "},
            {"role": "assistant", "content": " Hello! "},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Farewell."},
        ]});
        let sample = sample(&line, bytes().as_ref(), 1).unwrap();
        let all: String = sample.tokens.iter().map(|&t| t as u8 as char).collect();
        assert_eq!(
            all,
            "System: Be brief.\nVery.\n\nUser: Hi there\n\nAssistant: Hello!\n\nUser: Bye\n\nAssistant: Farewell.\n\n"
        );
        assert_eq!(text_of(&sample, true), " Hello!\n\n Farewell.\n\n");
        // The same text as the template's prompt for the conversation so far.
        let messages: Vec<_> = [
            (Role::System, "Be brief.\r\n\r\nVery."),
            (Role::User, "  Hi there  "),
        ]
        .iter()
        .map(|(role, content)| rwkv_burn_infer::chat_template::Message {
            role: *role,
            content: content.to_string(),
        })
        .collect();
        let prompt = rwkv_burn_infer::chat_template::render(
            &messages,
            rwkv_burn_infer::chat_template::Think::Off,
        )
        .unwrap();
        assert!(all.starts_with(&prompt), "{prompt:?}");
    }

    #[test]
    fn plain_text_is_trained_whole_and_ends_with_end_of_text() {
        let sample = sample(&json!({"text": "abc"}), bytes().as_ref(), 1).unwrap();
        assert_eq!(sample.tokens, vec![97, 98, 99, END_OF_TEXT]);
        assert!(sample.mask.iter().all(|&m| m));
    }

    #[test]
    fn bad_lines_are_named() {
        let t = bytes();
        let cases = [
            (json!({"messages": [{"role": "user"}]}), "no \"content\""),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "unknown role \"robot\"",
            ),
            (
                json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),
                "(Assistant) is empty",
            ),
            (
                json!({"messages": [{"role": "user", "content": "q"}]}),
                "no assistant message",
            ),
            (json!({"messages": [{"content": "q"}]}), "no \"role\""),
            (json!({"messages": "x"}), "neither"),
            (json!({"prompt": "x"}), "neither"),
        ];
        for (value, needle) in cases {
            let err = sample(&value, t.as_ref(), 7).unwrap_err().to_string();
            assert!(err.starts_with("line 7: ") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn batches_pad_on_the_right_with_zero_weight() {
        let device = Device::default();
        let a = Sample {
            tokens: vec![1, 2, 3, 4],
            mask: vec![false, false, true, true],
        };
        let b = Sample {
            tokens: vec![5, 6],
            mask: vec![false, true],
        };
        let batch = padded_batch(&[&a, &b], &device);
        let ints = |t: Tensor<2, Int>| -> Vec<i64> {
            t.into_data().convert::<i64>().try_to_vec().unwrap()
        };
        assert_eq!(ints(batch.inputs), vec![1, 2, 3, 5, 0, 0]);
        assert_eq!(ints(batch.targets), vec![2, 3, 4, 6, 0, 0]);
        let weights: Vec<f32> = batch.weights.unwrap().into_data().try_to_vec().unwrap();
        assert_eq!(weights, vec![0.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn corpora_cut_long_samples_and_drop_ones_without_targets() {
        let s = |n: u32, trained: bool| Sample {
            tokens: (0..n).collect(),
            mask: vec![trained; n as usize],
        };
        let corpus =
            SampleCorpus::split(vec![s(10, true), s(5, false), s(3, true)], 0.0, 4, 16).unwrap();
        assert_eq!(corpus.train.len(), 1);
        assert_eq!(corpus.train[0].tokens.len(), 5);
        assert_eq!(corpus.valid.len(), 1);
        assert!(matches!(
            SampleCorpus::split(vec![s(3, true)], 0.1, 4, 16),
            Err(SampleCorpusError::TooFew(1))
        ));
        assert!(matches!(
            SampleCorpus::split(vec![s(30, true), s(3, true)], 0.1, 4, 16),
            Err(SampleCorpusError::OutOfVocab {
                sample: 0,
                token: 16,
                ..
            })
        ));
    }
}
