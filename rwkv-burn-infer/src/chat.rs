//! A conversation in the RWKV World chat format (`User: ...\n\nAssistant: ...`, see
//! [`crate::chat_template`]), keeping the state between turns so each turn reads only the new
//! text.

use crate::chat_template::{Role, TURN_END, Think, assistant_start, clean, user_turn};
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
    system: Option<String>,
    think: Think,
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
            system: None,
            think: Think::Off,
        }
    }

    /// Opens the conversation with a `System:` turn (before the first user message).
    pub fn with_system(mut self, system: &str) -> Self {
        let system = clean(system);
        self.system = (!system.is_empty()).then_some(system);
        self
    }

    /// Lets a G1 model think before each answer ([`Think`]); the reasoning is part of the
    /// streamed reply.
    pub fn with_think(mut self, think: Think) -> Self {
        self.think = think;
        self
    }

    /// The prompt text for the next user message, in the G1 chat format
    /// ([`crate::chat_template`]).
    pub fn prompt(&self, message: &str) -> String {
        let mut prompt = self.pending_separator.clone();
        if self.turns == 0
            && let Some(system) = &self.system
        {
            prompt += &format!("{}: {system}{TURN_END}", Role::System.label());
        }
        prompt += &user_turn(&clean(message), self.think);
        prompt + assistant_start(self.think)
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
