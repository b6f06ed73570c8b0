//! A conversation in the RWKV World chat format (`User: ...\n\nAssistant: ...`, see
//! [`crate::chat_template`]), keeping the state between turns so each turn reads only the new
//! text.

use crate::chat_template::{TURN_END, clean};
use crate::generate::{GenerateError, GenerateOptions, Generation, Pipeline, StopReason};
use rwkv_burn::State;

/// A conversation with its state.
pub struct ChatSession<'a> {
    pipeline: &'a Pipeline<'a>,
    /// The recurrent state after everything said so far.
    pub state: State,
    options: GenerateOptions,
    /// Bytes of the turn separator the model has not read yet.
    pending_separator: String,
    turns: usize,
}

impl<'a> ChatSession<'a> {
    /// Starts a conversation from `state` (a fresh one, or one loaded from a file).
    pub fn new(pipeline: &'a Pipeline<'a>, state: State, mut options: GenerateOptions) -> Self {
        if !options.stop_strings.iter().any(|s| s == TURN_END) {
            options.stop_strings.push(TURN_END.to_string());
        }
        Self {
            pipeline,
            state,
            options,
            pending_separator: String::new(),
            turns: 0,
        }
    }

    /// The prompt text for the next user message.
    pub fn prompt(&self, message: &str) -> String {
        let message = clean(message);
        if self.turns == 0 && self.pending_separator.is_empty() {
            format!("User: {message}\n\nAssistant:")
        } else {
            format!("{}User: {message}\n\nAssistant:", self.pending_separator)
        }
    }

    /// One exchange: reads the user's message, streams the reply through `on_text`.
    pub fn turn(
        &mut self,
        message: &str,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, GenerateError> {
        let prompt = self.prompt(message);
        let ids = self.pipeline.tokenizer.encode(prompt.as_bytes())?;
        let reply = self
            .pipeline
            .generate(&ids, &mut self.state, &self.options, on_text)?;
        self.turns += 1;
        // The model has read every reply token except the one that completed the stop string;
        // the next prompt starts with whatever part of the separator it has not seen.
        let fed = match reply.stop {
            StopReason::StopString(_) => &reply.tokens[..reply.tokens.len().saturating_sub(1)],
            _ => &reply.tokens[..],
        };
        let fed_text =
            String::from_utf8_lossy(&self.pipeline.tokenizer.decode_bytes(fed)?).into_owned();
        let tail = fed_text.strip_prefix(reply.text.as_str()).unwrap_or("");
        self.pending_separator = TURN_END.strip_prefix(tail).unwrap_or(TURN_END).to_string();
        Ok(reply)
    }
}
