//! The OpenAI request bodies the server accepts, read field by field so that every refusal
//! names its field (`param` in OpenAI's error body), and the error body itself.
//!
//! Unknown fields are ignored, as OpenAI's API does; a known field of the wrong type or out of
//! range is a 400. Ranges follow OpenAI's documented ones where they exist (temperature 0-2,
//! top_p in (0, 1], penalties -2 to 2, at most 4 stop strings), so that a request valid here
//! is valid there and the other way round.

use crate::chat_template::{self, Effort, Message, Role, Think};
use crate::generate::GenerateOptions;
use crate::sampler::SamplerConfig;
use serde_json::{Map, Value};

/// An OpenAI-style error: HTTP status and the `error` object of the body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What went wrong, for people.
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, ...
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<String>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
        }
    }

    /// An error without a field.
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
        }
    }

    /// The JSON body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": Value::Null,
            }
        })
    }
}

/// The server's limits on what one request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most tokens one request may generate (`--max-tokens-limit`).
    pub max_tokens: usize,
    /// Most prompt tokens (`--max-prompt-tokens`).
    pub max_prompt_tokens: usize,
    /// Tokens generated when a request does not say (`--default-max-tokens`).
    pub default_max_tokens: usize,
    /// The model's vocabulary size.
    pub vocab: usize,
    /// Whether the model has the World vocabulary (and so may think, G1-style).
    pub world: bool,
}

/// Most choices (`n`) per request.
pub const MAX_CHOICES: usize = 16;
/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOPS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Most messages in one conversation.
pub const MAX_MESSAGES: usize = 10_000;

/// Sampling settings a request does not give.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    /// Softmax temperature.
    pub temperature: f32,
    /// Nucleus mass.
    pub top_p: f32,
    /// Top-k (0: off).
    pub top_k: usize,
    /// Presence penalty.
    pub presence_penalty: f32,
    /// Frequency penalty.
    pub frequency_penalty: f32,
    /// Decay of the penalties' counts per token.
    pub penalty_decay: f32,
}

impl Defaults {
    /// OpenAI's documented defaults (temperature 1, top_p 1, no penalties), for completions
    /// and for models without the World vocabulary; the decay is ChatRWKV's 0.996, inert
    /// without penalties.
    pub const OPENAI: Self = Self {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        penalty_decay: 0.996,
    };

    /// Chat with a World-vocabulary (G1) model: the settings of the RWKV-7 G1 example in the
    /// official `rwkv` package's README (ChatRWKV `rwkv_pip_package/README.md`: temperature
    /// 1.0, top_p 0.5, top_k 100, alpha_frequency 0, alpha_presence 0, alpha_decay 0.997).
    pub const G1_CHAT: Self = Self {
        temperature: 1.0,
        top_p: 0.5,
        top_k: 100,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        penalty_decay: 0.997,
    };
}

/// What a request asks for, checked.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The prompt: text to tokenize, or token ids given as such.
    pub prompt: Prompt,
    /// Generation settings.
    pub options: GenerateOptions,
    /// Answer as server-sent events.
    pub stream: bool,
    /// With `stream`: a last chunk with `usage` (`stream_options.include_usage`).
    pub include_usage: bool,
    /// How the model thinks (chat only).
    pub think: Think,
    /// Choices to generate (`n`), each with the seed plus its index.
    pub n: usize,
    /// Whether the seed was given (else the server picks one).
    pub seeded: bool,
    /// The saved state to start from (`rwkv_state`: a file name in `--state-dir`, without
    /// `.safetensors` or `.pth`).
    pub state: Option<String>,
}

/// Longest `rwkv_state` name.
pub const MAX_STATE_NAME: usize = 128;

/// The `rwkv_state` field: letters, digits, `-`, `_` and `.`, not starting with `.`, so that
/// it names a file in the state folder and nothing outside it.
fn state_name(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(value) = field(body, "rwkv_state") else {
        return Ok(None);
    };
    let ok = value.as_str().filter(|name| {
        (1..=MAX_STATE_NAME).contains(&name.len())
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    });
    match ok {
        Some(name) => Ok(Some(name.to_string())),
        None => Err(ApiError::invalid(
            "rwkv_state",
            format!(
                "rwkv_state must name a state file: 1 to {MAX_STATE_NAME} letters, digits, \
                 '-', '_' or '.', not starting with '.'"
            ),
        )),
    }
}

/// A prompt as text or as token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text, tokenized by the server.
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn number(
    body: &Map<String, Value>,
    name: &str,
    lo: f64,
    hi: f64,
) -> Result<Option<f32>, ApiError> {
    let Some(value) = field(body, name) else {
        return Ok(None);
    };
    let x = value
        .as_f64()
        .ok_or_else(|| ApiError::invalid(name, format!("{name} must be a number")))?;
    if !(lo..=hi).contains(&x) {
        return Err(ApiError::invalid(
            name,
            format!("{name} is {x}; it must be from {lo} to {hi}"),
        ));
    }
    Ok(Some(x as f32))
}

fn integer(
    body: &Map<String, Value>,
    name: &str,
    lo: u64,
    hi: u64,
) -> Result<Option<u64>, ApiError> {
    let Some(value) = field(body, name) else {
        return Ok(None);
    };
    let n = value
        .as_u64()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(
                name,
                format!("{name} is {value}; it must be a whole number from {lo} to {hi}"),
            )
        })?;
    Ok(Some(n))
}

fn boolean(body: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    field(body, name)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| ApiError::invalid(name, format!("{name} must be true or false")))
        })
        .transpose()
}

fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| {
        ApiError::new(
            400,
            "invalid_request_error",
            "the body must be a JSON object",
        )
    })
}

/// The stop strings: a string or a list of at most [`MAX_STOPS`].
fn stops(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let list: Vec<&Value> = match field(body, "stop") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("stop has {} strings; at most {MAX_STOPS}", list.len()),
        ));
    }
    list.into_iter()
        .map(|s| match s.as_str() {
            Some(s) if !s.is_empty() && s.len() <= MAX_STOP_BYTES => Ok(s.to_string()),
            _ => Err(ApiError::invalid(
                "stop",
                format!("stop must be a string or list of strings of 1 to {MAX_STOP_BYTES} bytes"),
            )),
        })
        .collect()
}

/// The settings every endpoint shares.
fn common(body: &Map<String, Value>, limits: &Limits, chat: bool) -> Result<Parsed, ApiError> {
    let max_name = if field(body, "max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = integer(body, max_name, 1, limits.max_tokens as u64)?
        .map_or(limits.default_max_tokens.min(limits.max_tokens), |n| {
            n as usize
        });
    let n = integer(body, "n", 1, MAX_CHOICES as u64)?.map_or(1, |n| n as usize);
    let logprobs = match field(body, "logprobs") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(Value::Number(n)) => n.as_u64() != Some(0),
        Some(_) => {
            return Err(ApiError::invalid(
                "logprobs",
                "logprobs must be a boolean or a number",
            ));
        }
    };
    if logprobs {
        return Err(ApiError::invalid(
            "logprobs",
            "logprobs are not supported by this server",
        ));
    }
    let seed = field(body, "seed")
        .map(|v| {
            v.as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::invalid("seed", "seed must be a whole number"))
        })
        .transpose()?;
    let defaults = if chat && limits.world {
        Defaults::G1_CHAT
    } else {
        Defaults::OPENAI
    };
    let sampler = SamplerConfig {
        temperature: number(body, "temperature", 0.0, 2.0)?.unwrap_or(defaults.temperature),
        top_p: match number(body, "top_p", 0.0, 1.0)? {
            Some(p) if p <= 0.0 => {
                return Err(ApiError::invalid(
                    "top_p",
                    "top_p is 0; it must be above 0 and at most 1",
                ));
            }
            Some(p) => p,
            None => defaults.top_p,
        },
        top_k: integer(body, "top_k", 0, limits.vocab as u64)?
            .map_or(defaults.top_k.min(limits.vocab), |k| k as usize),
        min_p: number(body, "min_p", 0.0, 1.0)?.unwrap_or(0.0),
        presence_penalty: number(body, "presence_penalty", -2.0, 2.0)?
            .unwrap_or(defaults.presence_penalty),
        frequency_penalty: number(body, "frequency_penalty", -2.0, 2.0)?
            .unwrap_or(defaults.frequency_penalty),
        penalty_decay: number(body, "penalty_decay", 0.0, 1.0)?.unwrap_or(defaults.penalty_decay),
        banned: Vec::new(),
        seed: seed.unwrap_or(0),
    };
    let stream = boolean(body, "stream")?.unwrap_or(false);
    let include_usage = match field(body, "stream_options") {
        None => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")
            .map_err(|_| {
                ApiError::invalid(
                    "stream_options.include_usage",
                    "include_usage must be true or false",
                )
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options must be an object",
            ));
        }
    };
    let mut stop_strings = stops(body)?;
    if chat {
        stop_strings.push(chat_template::TURN_END.to_string());
    }
    Ok(Parsed {
        prompt: Prompt::Text(String::new()),
        options: GenerateOptions {
            max_tokens,
            sampler,
            stop_strings,
            ..GenerateOptions::default()
        },
        stream,
        include_usage,
        think: Think::Off,
        n,
        seeded: seed.is_some(),
        state: state_name(body)?,
    })
}

/// A `/v1/completions` body: `prompt` as a string, a list of one string, or token ids.
pub fn completion(body: &Value, limits: &Limits) -> Result<Parsed, ApiError> {
    let body = object(body)?;
    let mut parsed = common(body, limits, false)?;
    let bad = || {
        ApiError::invalid(
            "prompt",
            "prompt must be a non-empty string, a list of one string, or a list of token ids",
        )
    };
    parsed.prompt = match field(body, "prompt") {
        None => return Err(ApiError::invalid("prompt", "prompt is missing")),
        Some(Value::String(s)) if !s.is_empty() => Prompt::Text(s.clone()),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            let s = items[0].as_str().unwrap_or_default();
            if s.is_empty() {
                return Err(bad());
            }
            Prompt::Text(s.to_string())
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            let ids = items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .filter(|&id| id < limits.vocab as u64)
                        .map(|id| id as u32)
                })
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| {
                    ApiError::invalid(
                        "prompt",
                        format!(
                            "prompt token ids must be whole numbers below {}",
                            limits.vocab
                        ),
                    )
                })?;
            Prompt::Tokens(ids)
        }
        Some(_) => return Err(bad()),
    };
    Ok(parsed)
}

/// The text of a message's `content`: a string, or a list of `{"type": "text", "text"}` parts.
fn content(value: Option<&Value>, at: usize) -> Result<String, ApiError> {
    let param = format!("messages[{at}].content");
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            param,
                            "only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
                        ));
                    }
                }
            }
            Ok(text)
        }
        None | Some(Value::Null) => Err(ApiError::invalid(param, "content is missing")),
        Some(_) => Err(ApiError::invalid(
            param,
            "content must be a string or a list of text parts",
        )),
    }
}

/// How a chat request asks the model to think: `reasoning_effort` (OpenAI's field: `low`,
/// `medium`, `high`; `none`/`minimal` for no thinking) or the extension `think` (`true`,
/// `false` or `"fake"`). Only World-vocabulary (G1) models think.
fn think(body: &Map<String, Value>, limits: &Limits) -> Result<Think, ApiError> {
    let effort = match field(body, "reasoning_effort") {
        None => None,
        Some(v) => Some(match v.as_str() {
            Some("none" | "minimal") => Think::Off,
            Some("low") => Think::On(Effort::Low),
            Some("medium") => Think::On(Effort::Medium),
            Some("high") => Think::On(Effort::High),
            _ => {
                return Err(ApiError::invalid(
                    "reasoning_effort",
                    "reasoning_effort must be none, minimal, low, medium or high",
                ));
            }
        }),
    };
    let think = match (field(body, "think"), effort) {
        (None, effort) => effort.unwrap_or(Think::Off),
        (Some(Value::Bool(false)), _) => Think::Off,
        (Some(Value::Bool(true)), effort) => match effort {
            Some(Think::On(e)) => Think::On(e),
            _ => Think::On(Effort::Default),
        },
        (Some(Value::String(s)), _) if s == "fake" => Think::Fake,
        (Some(_), _) => {
            return Err(ApiError::invalid(
                "think",
                "think must be true, false or \"fake\"",
            ));
        }
    };
    if think != Think::Off && !limits.world {
        return Err(ApiError::invalid(
            "think",
            "thinking needs a World-vocabulary (G1) model; this one is not",
        ));
    }
    Ok(think)
}

/// A `/v1/chat/completions` body: `messages` rendered with the G1 chat template.
pub fn chat(body: &Value, limits: &Limits) -> Result<Parsed, ApiError> {
    let body = object(body)?;
    let mut parsed = common(body, limits, true)?;
    let items = match field(body, "messages") {
        None => return Err(ApiError::invalid("messages", "messages is missing")),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::invalid("messages", "messages is empty"));
        }
        Some(Value::Array(items)) if items.len() > MAX_MESSAGES => {
            return Err(ApiError::invalid(
                "messages",
                format!("messages has {}; at most {MAX_MESSAGES}", items.len()),
            ));
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid("messages", "messages must be a list")),
    };
    let mut messages = Vec::with_capacity(items.len());
    for (at, item) in items.iter().enumerate() {
        let Some(item) = item.as_object() else {
            return Err(ApiError::invalid(
                format!("messages[{at}]"),
                "a message must be an object",
            ));
        };
        let role = item.get("role").and_then(Value::as_str);
        let role = role.and_then(Role::parse).ok_or_else(|| {
            ApiError::invalid(
                format!("messages[{at}].role"),
                format!(
                    "role {} is not one of system, developer, user, assistant",
                    item.get("role")
                        .map_or("(missing)".to_string(), Value::to_string)
                ),
            )
        })?;
        messages.push(Message {
            role,
            content: content(item.get("content"), at)?,
        });
    }
    parsed.think = think(body, limits)?;
    let text = chat_template::render(&messages, parsed.think).map_err(|e| {
        let param = match e {
            chat_template::TemplateError::EmptyMessage { index, .. } => {
                format!("messages[{index}].content")
            }
            _ => "messages".to_string(),
        };
        ApiError::invalid(param, e.to_string())
    })?;
    parsed.prompt = Prompt::Text(text);
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits {
            max_tokens: 1000,
            max_prompt_tokens: 100,
            default_max_tokens: 16,
            vocab: 256,
            world: false,
        }
    }

    fn param(result: Result<Parsed, ApiError>) -> String {
        result.expect_err("refused").param.unwrap_or_default()
    }

    #[test]
    fn completions_read_their_fields() {
        let p = completion(
            &json!({"prompt": "Hi", "max_tokens": 5, "temperature": 0, "stop": "x", "seed": 7,
                    "top_k": 3, "unknown": {"ignored": true}}),
            &limits(),
        )
        .unwrap();
        assert_eq!(p.prompt, Prompt::Text("Hi".into()));
        assert_eq!(p.options.max_tokens, 5);
        assert_eq!(p.options.sampler.temperature, 0.0);
        assert_eq!(p.options.sampler.top_k, 3);
        assert_eq!(p.options.sampler.seed, 7);
        assert_eq!(p.options.stop_strings, vec!["x".to_string()]);
        let ids = completion(&json!({"prompt": [1, 2, 255]}), &limits()).unwrap();
        assert_eq!(ids.prompt, Prompt::Tokens(vec![1, 2, 255]));
        assert_eq!(ids.options.max_tokens, 16);
    }

    #[test]
    fn each_bad_field_is_named() {
        let l = limits();
        assert_eq!(param(completion(&json!({}), &l)), "prompt");
        assert_eq!(param(completion(&json!({"prompt": ""}), &l)), "prompt");
        assert_eq!(param(completion(&json!({"prompt": [256]}), &l)), "prompt");
        assert_eq!(param(completion(&json!({"prompt": 5}), &l)), "prompt");
        for (name, value) in [
            ("max_tokens", json!(0)),
            ("max_tokens", json!(1001)),
            ("max_tokens", json!("5")),
            ("temperature", json!(-0.1)),
            ("temperature", json!("hot")),
            ("top_p", json!(0)),
            ("top_p", json!(1.5)),
            ("top_k", json!(257)),
            ("presence_penalty", json!(3)),
            ("stop", json!(["a", "b", "c", "d", "e"])),
            ("stop", json!([1])),
            ("stop", json!("")),
            ("stream", json!("yes")),
            ("n", json!(0)),
            ("n", json!(17)),
            ("seed", json!(1.5)),
            ("logprobs", json!(true)),
            ("rwkv_state", json!("../x")),
            ("rwkv_state", json!(".hidden")),
            ("rwkv_state", json!(3)),
        ] {
            let body = json!({"prompt": "x", name: value});
            assert_eq!(param(completion(&body, &l)), name, "{body}");
        }
    }

    #[test]
    fn chats_render_and_refuse_bad_messages() {
        let l = limits();
        let p = chat(
            &json!({"messages": [{"role": "system", "content": "S"},
                                 {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}),
            &l,
        )
        .unwrap();
        assert_eq!(
            p.prompt,
            Prompt::Text("System: S\n\nUser: Hi\n\nAssistant:".into())
        );
        assert!(p.options.stop_strings.contains(&"\n\n".to_string()));
        assert_eq!(param(chat(&json!({}), &l)), "messages");
        assert_eq!(param(chat(&json!({"messages": []}), &l)), "messages");
        assert_eq!(param(chat(&json!({"messages": "hi"}), &l)), "messages");
        assert_eq!(
            param(chat(
                &json!({"messages": [{"role": "tool", "content": "x"}]}),
                &l
            )),
            "messages[0].role"
        );
        assert_eq!(
            param(chat(&json!({"messages": [{"role": "user"}]}), &l)),
            "messages[0].content"
        );
        assert_eq!(
            param(chat(
                &json!({"messages": [{"role": "user", "content": "\n"}]}),
                &l
            )),
            "messages[0].content"
        );
        let think = json!({"messages": [{"role": "user", "content": "x"}], "think": true});
        assert_eq!(param(chat(&think, &l)), "think");
        let world = Limits { world: true, ..l };
        let p = chat(&think, &world).unwrap();
        assert_eq!(
            p.prompt,
            Prompt::Text("User: x\n\nAssistant: <think".into())
        );
    }
}
