//! The chat format RWKV World and G1 models were trained on, shared by `rwkv chat` and the
//! server's `/v1/chat/completions`.
//!
//! From BlinkDL's `RWKV-v7/RWKV7-G1x-templates.txt` (RWKV-LM): turns are `System: ...`,
//! `User: ...` and `Assistant: ...` separated by a blank line, the prompt ends with
//! `Assistant:`, and every system and user text is cleaned first (`\r\n` to `\n`, runs of
//! newlines to one, trimmed) so that no blank line inside a message reads as a turn end.
//! G1 models also think: a prompt ending `Assistant: <think` lets the model reason before it
//! answers, `Assistant: <think>\n</think` skips the reasoning ("fake thinking", the file's
//! fast mode), and `(think a bit)` / `(think)` / `(think a lot)` after the user's text asks
//! for a shorter or longer reasoning. Byte-level and Pile models use the same turns without
//! thinking.

/// The blank line that ends a turn.
pub const TURN_END: &str = "\n\n";

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions before the conversation (`System:`).
    System,
    /// The person (`User:`).
    User,
    /// The model (`Assistant:`).
    Assistant,
}

impl Role {
    /// The role of an OpenAI-style role name (`developer` is OpenAI's newer name for
    /// `system`); `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "system" | "developer" => Some(Self::System),
            "user" => Some(Self::User),
            "assistant" => Some(Self::Assistant),
            _ => None,
        }
    }

    /// The name the template writes before the message.
    pub fn label(self) -> &'static str {
        match self {
            Self::System => "System",
            Self::User => "User",
            Self::Assistant => "Assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who says it.
    pub role: Role,
    /// What is said.
    pub content: String,
}

/// How a G1 model may think before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Think {
    /// No thinking: the prompt ends `Assistant:`.
    #[default]
    Off,
    /// The model reasons first (`Assistant: <think`), at the given length.
    On(Effort),
    /// An empty reasoning (`Assistant: <think>\n</think`): the answer comes at once, in the
    /// style of a thinking answer.
    Fake,
}

/// How long a G1 model should reason, as the phrase appended to the user's last message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Effort {
    /// Nothing appended: the model chooses.
    #[default]
    Default,
    /// ` (think a bit)`.
    Low,
    /// ` (think)`.
    Medium,
    /// ` (think a lot)`.
    High,
}

impl Effort {
    fn suffix(self) -> &'static str {
        match self {
            Self::Default => "",
            Self::Low => " (think a bit)",
            Self::Medium => " (think)",
            Self::High => " (think a lot)",
        }
    }
}

/// A conversation the template cannot render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// No messages at all.
    #[error("the conversation has no messages")]
    Empty,
    /// A system or user message with no text after cleaning.
    #[error("message {index} ({role}) is empty")]
    EmptyMessage {
        /// Its position.
        index: usize,
        /// Its role's label.
        role: &'static str,
    },
    /// No user message.
    #[error("the conversation has no user message")]
    NoUser,
}

/// A system or user text as G1 models were trained to see it: `\r\n` as `\n`, runs of
/// newlines as one, no surrounding whitespace.
pub fn clean(text: &str) -> String {
    let text = text.replace("\r\n", "\n");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\n' && out.ends_with('\n') {
            continue;
        }
        out.push(c);
    }
    out.trim().to_string()
}

/// The prompt for `messages`: each turn `Role: text` followed by a blank line, then
/// `Assistant:` and the thinking prefix. A conversation that ends with an assistant message
/// is continued from its text instead (no turn end after it, no thinking prefix).
/// Assistant texts are taken as they are, except for surrounding whitespace.
pub fn render(messages: &[Message], think: Think) -> Result<String, TemplateError> {
    if messages.is_empty() {
        return Err(TemplateError::Empty);
    }
    let Some(last_user) = messages.iter().rposition(|m| m.role == Role::User) else {
        return Err(TemplateError::NoUser);
    };
    let mut prompt = String::new();
    for (index, message) in messages.iter().enumerate() {
        let text = match message.role {
            Role::Assistant => message.content.trim().to_string(),
            role => {
                let text = clean(&message.content);
                if text.is_empty() {
                    return Err(TemplateError::EmptyMessage {
                        index,
                        role: role.label(),
                    });
                }
                text
            }
        };
        if index > 0 {
            prompt.push_str(TURN_END);
        }
        prompt.push_str(message.role.label());
        prompt.push(':');
        if !text.is_empty() {
            prompt.push(' ');
            prompt.push_str(&text);
        }
        if index == last_user
            && let Think::On(effort) = think
        {
            prompt.push_str(effort.suffix());
        }
    }
    if messages.last().map(|m| m.role) != Some(Role::Assistant) {
        prompt.push_str(TURN_END);
        prompt.push_str(assistant_start(think));
    }
    Ok(prompt)
}

/// A user turn with its text as given (clean it first), the thinking-length phrase that
/// `think` asks for, and the blank line that ends it.
pub fn user_turn(text: &str, think: Think) -> String {
    let effort = match think {
        Think::On(effort) => effort.suffix(),
        _ => "",
    };
    format!("{}: {text}{effort}{TURN_END}", Role::User.label())
}

/// The text that opens the assistant's turn.
pub fn assistant_start(think: Think) -> &'static str {
    match think {
        Think::Off => "Assistant:",
        Think::On(_) => "Assistant: <think",
        Think::Fake => "Assistant: <think>\n</think",
    }
}

/// Splits a streamed reply into reasoning and answer: after a prompt ending `<think`, the
/// reply is `>` + reasoning + `</think>` + answer; after a fake think it is `>` + answer.
/// Text that may be the start of `</think>` is held back until it is known not to be.
#[derive(Debug, Clone)]
pub struct ThinkSplit {
    /// Still inside the reasoning.
    reasoning: bool,
    /// The `>` that closes the prompt's `<think` tag may still come (and is dropped).
    tag_open: bool,
    /// Nothing of the current part shown yet (its leading whitespace is dropped).
    at_start: bool,
    pending: String,
}

/// The closing tag of the reasoning.
const THINK_END: &str = "</think>";

impl ThinkSplit {
    /// A splitter for a reply to a prompt rendered with `mode`.
    pub fn new(mode: Think) -> Self {
        Self {
            reasoning: matches!(mode, Think::On(_)),
            tag_open: mode != Think::Off,
            at_start: true,
            pending: String::new(),
        }
    }

    /// Adds streamed text; returns `(reasoning, answer)` text that is final now.
    pub fn push(&mut self, text: &str) -> (String, String) {
        self.pending.push_str(text);
        let mut reasoning = String::new();
        let mut answer = String::new();
        loop {
            if self.tag_open {
                if self.pending.is_empty() {
                    break;
                }
                if self.pending.starts_with('>') {
                    self.pending.remove(0);
                }
                self.tag_open = false;
            }
            if self.at_start {
                let trimmed = self.pending.trim_start();
                if trimmed.is_empty() {
                    self.pending.clear();
                    break;
                }
                self.pending = trimmed.to_string();
                self.at_start = false;
            }
            if !self.reasoning {
                answer.push_str(&std::mem::take(&mut self.pending));
                break;
            }
            if let Some(at) = self.pending.find(THINK_END) {
                reasoning.push_str(self.pending[..at].trim_end());
                self.pending = self.pending[at + THINK_END.len()..].to_string();
                self.reasoning = false;
                self.at_start = true;
                continue;
            }
            // Whitespace before the closing tag is not part of the reasoning: hold it back too.
            let keep = held_back(&self.pending);
            let cut = self.pending[..self.pending.len() - keep].trim_end().len();
            reasoning.push_str(&self.pending[..cut]);
            self.pending.drain(..cut);
            break;
        }
        (reasoning, answer)
    }

    /// Ends the reply: whatever was held back, as reasoning if the reasoning never closed.
    pub fn finish(&mut self) -> (String, String) {
        let rest = std::mem::take(&mut self.pending);
        if self.reasoning {
            (rest, String::new())
        } else {
            (String::new(), rest)
        }
    }
}

/// Length of the longest tail of `text` that begins `</think>`.
fn held_back(text: &str) -> usize {
    (1..THINK_END.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && THINK_END.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }

    #[test]
    fn cleaning_follows_the_g1_templates() {
        assert_eq!(clean("  a\r\n\r\n\nb\n\nc \n"), "a\nb\nc");
        assert_eq!(clean("\n\n"), "");
    }

    #[test]
    fn conversations_render_as_the_g1_templates_show() {
        let talk = [
            msg(Role::System, "Be brief."),
            msg(Role::User, "Hi\n\nthere"),
            msg(Role::Assistant, " Hello! "),
            msg(Role::User, "Why?"),
        ];
        assert_eq!(
            render(&talk, Think::Off).unwrap(),
            "System: Be brief.\n\nUser: Hi\nthere\n\nAssistant: Hello!\n\nUser: Why?\n\nAssistant:"
        );
        let one = [msg(Role::User, "2+2?")];
        assert_eq!(
            render(&one, Think::On(Effort::High)).unwrap(),
            "User: 2+2? (think a lot)\n\nAssistant: <think"
        );
        assert_eq!(
            render(&one, Think::Fake).unwrap(),
            "User: 2+2?\n\nAssistant: <think>\n</think"
        );
        let continued = [msg(Role::User, "Hi"), msg(Role::Assistant, "Well,")];
        assert_eq!(
            render(&continued, Think::Off).unwrap(),
            "User: Hi\n\nAssistant: Well,"
        );
    }

    #[test]
    fn bad_conversations_are_refused() {
        assert_eq!(render(&[], Think::Off), Err(TemplateError::Empty));
        assert_eq!(
            render(&[msg(Role::System, "x")], Think::Off),
            Err(TemplateError::NoUser)
        );
        assert!(matches!(
            render(&[msg(Role::User, " \n\n ")], Think::Off),
            Err(TemplateError::EmptyMessage { index: 0, .. })
        ));
        assert_eq!(Role::parse("tool"), None);
    }

    /// Feeds `pieces` through a splitter and joins what comes out.
    fn split(mode: Think, pieces: &[&str]) -> (String, String) {
        let mut s = ThinkSplit::new(mode);
        let (mut r, mut a) = (String::new(), String::new());
        for piece in pieces {
            let (x, y) = s.push(piece);
            r += &x;
            a += &y;
        }
        let (x, y) = s.finish();
        (r + &x, a + &y)
    }

    #[test]
    fn reasoning_is_split_from_the_answer_wherever_the_pieces_break() {
        let reply = ">\nLet me see. 2+2=4.\n</think>\n4.";
        for cut in 0..reply.len() {
            for cut2 in cut..reply.len() {
                let pieces = [&reply[..cut], &reply[cut..cut2], &reply[cut2..]];
                assert_eq!(
                    split(Think::On(Effort::Default), &pieces),
                    ("Let me see. 2+2=4.".into(), "4.".into()),
                    "{pieces:?}"
                );
            }
        }
        assert_eq!(split(Think::Fake, &[">", "\nHi"]), ("".into(), "Hi".into()));
        assert_eq!(
            split(Think::Off, &[" ", "Hi </think>"]),
            ("".into(), "Hi </think>".into())
        );
        assert_eq!(
            split(Think::On(Effort::Low), &[">never closed </thi"]),
            ("never closed </thi".into(), "".into())
        );
    }
}
