//! Reading usage from provider responses: whole JSON bodies, and SSE streams event by event.
//!
//! Why meter while forwarding: the usage of a stream arrives at its end (OpenAI's extra
//! `choices: []` chunk, Responses' terminal event) or in pieces (Anthropic's `message_start`
//! then cumulative `message_delta`s). The meter keeps what it has seen, so whatever way the
//! stream ends (done, provider error, client gone) the proxy can settle with the best figure:
//! the final usage, or the usage so far plus the output text actually streamed.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::api::{Api, Family};
use super::sse::SseEvent;
use super::tokens::len_u64;
use super::usage::Usage;
use super::wire::{AnthropicUsage, OpenAiUsage, Text, describe_error, lenient};

/// Most output text kept for counting (4 MiB); bytes beyond are counted, not kept.
pub const MAX_OUTPUT_TEXT: usize = 4 << 20;

/// Usage of a whole (non-streamed) JSON response, None when it carries none.
pub fn usage_from_json(api: Api, body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    #[serde(bound = "U: serde::de::DeserializeOwned")]
    struct Body<U> {
        #[serde(default = "Option::default", deserialize_with = "lenient")]
        usage: Option<U>,
    }
    match api.family() {
        Family::OpenAi => serde_json::from_slice::<Body<OpenAiUsage>>(body)
            .ok()?
            .usage
            .map(|u| u.normalize()),
        Family::Anthropic => serde_json::from_slice::<Body<AnthropicUsage>>(body)
            .ok()?
            .usage
            .map(|u| u.normalize()),
    }
}

/// What to do with an event of a metered stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// Send it to the client unchanged.
    Yes,
    /// Drop it: the usage-only chunk Sentinel asked for on the client's behalf.
    Hide,
}

/// Meters one SSE stream (OpenAI chat chunks with usage only on the final choices:[] chunk;
/// Responses' response.completed / response.incomplete / response.failed carry
/// response.usage; Anthropic message_start usage then message_delta usage that is CUMULATIVE:
/// overwrite, never add; `ping` and unknown events tolerated). Events that are not JSON are
/// forwarded and otherwise ignored.
#[derive(Debug)]
pub struct StreamMeter {
    api: Api,
    hide_usage_chunk: bool,
    /// OpenAI family: the last usage seen.
    openai: Option<Usage>,
    /// Anthropic: usage accumulated from `message_start` and `message_delta`.
    anthropic: Option<AnthropicUsage>,
    text: String,
    bytes: u64,
    error: Option<String>,
    finished: bool,
}

impl StreamMeter {
    /// `hide_usage_chunk`: true when Sentinel injected include_usage for a chat stream whose
    /// client did not ask; then the usage-only chunk (choices == []) is metered and answered
    /// Forward::Hide.
    pub fn new(api: Api, hide_usage_chunk: bool) -> Self {
        StreamMeter {
            api,
            hide_usage_chunk,
            openai: None,
            anthropic: None,
            text: String::new(),
            bytes: 0,
            error: None,
            finished: false,
        }
    }

    /// Reads one event; says whether to forward it.
    pub fn on_event(&mut self, ev: &SseEvent) -> Forward {
        let data = ev.data.trim();
        if data.is_empty() {
            return Forward::Yes; // comment, keep-alive, or a name without data
        }
        if data == "[DONE]" {
            self.finished = true;
            return Forward::Yes;
        }
        match self.api {
            Api::ChatCompletions | Api::Embeddings => self.on_chat(data),
            Api::Responses => {
                self.on_responses(ev.event.as_deref(), data);
                Forward::Yes
            }
            Api::Messages => {
                self.on_messages(ev.event.as_deref(), data);
                Forward::Yes
            }
        }
    }

    /// The final usage when seen (for Anthropic: as accumulated so far, from `message_start`
    /// on).
    pub fn usage(&self) -> Option<Usage> {
        match self.api.family() {
            Family::OpenAi => self.openai,
            Family::Anthropic => self.anthropic.as_ref().map(AnthropicUsage::normalize),
        }
    }

    /// Text deltas streamed so far (chat delta.content + delta.reasoning_content/refusal + tool
    /// call argument strings; responses response.output_text.delta etc; anthropic
    /// content_block_delta text_delta/thinking_delta/input_json_delta), capped at 4 MiB (then
    /// stop appending but keep counting bytes).
    pub fn output_text(&self) -> &str {
        &self.text
    }

    /// All streamed output text bytes, even beyond the cap.
    pub fn output_bytes(&self) -> u64 {
        self.bytes
    }

    /// An error reported inside the stream (OpenAI `data: {"error":…}`, Responses
    /// `error`/`response.failed`, Anthropic `event: error`): its type/message, for logs and the
    /// outcome label.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// `[DONE]`, response.completed/incomplete/failed, message_stop seen.
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn on_chat(&mut self, data: &str) -> Forward {
        let Ok(chunk) = serde_json::from_str::<ChatChunk<'_>>(data) else {
            return Forward::Yes;
        };
        if let Some(error) = &chunk.error {
            self.error = Some(describe_error(error));
        }
        for choice in chunk.choices.iter().flatten() {
            let delta = &choice.delta;
            for text in [
                &delta.content,
                &delta.reasoning_content,
                &delta.reasoning,
                &delta.refusal,
            ] {
                self.add_text(text.as_str());
            }
            let calls = delta.tool_calls.iter().flatten().map(|c| &c.function);
            for function in calls.chain([&delta.function_call]) {
                self.add_text(function.name.as_str());
                self.add_text(function.arguments.as_str());
            }
        }
        let Some(usage) = chunk.usage else {
            return Forward::Yes;
        };
        self.openai = Some(usage.normalize());
        let usage_only = chunk.choices.as_ref().is_none_or(Vec::is_empty);
        if self.hide_usage_chunk && usage_only {
            Forward::Hide
        } else {
            Forward::Yes
        }
    }

    fn on_responses(&mut self, name: Option<&str>, data: &str) {
        let Ok(ev) = serde_json::from_str::<ResponsesEvent<'_>>(data) else {
            return;
        };
        let kind = ev.kind.as_deref().or(name).unwrap_or("");
        match kind {
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.finished = true;
                if let Some(response) = ev.response {
                    if let Some(usage) = response.usage {
                        self.openai = Some(usage.normalize());
                    }
                    if let Some(error) = &response.error {
                        self.error = Some(describe_error(error));
                    }
                }
                if kind == "response.failed" && self.error.is_none() {
                    self.error = Some("response.failed".to_owned());
                }
            }
            "error" => {
                // `{"type":"error","code","message"}`, or a nested `error` object.
                let error = match ev.error {
                    Some(nested) => nested,
                    None => {
                        let mut top = serde_json::from_str::<Value>(data).unwrap_or_default();
                        if let Some(map) = top.as_object_mut() {
                            map.remove("type");
                        }
                        top
                    }
                };
                self.error = Some(describe_error(&error));
            }
            // Text-like deltas (output text, refusal, reasoning, tool arguments, transcripts);
            // audio deltas are base64 sound, not text.
            k if k.ends_with(".delta") && !k.ends_with("audio.delta") => {
                self.add_text(ev.delta.as_str());
            }
            _ => {}
        }
    }

    fn on_messages(&mut self, name: Option<&str>, data: &str) {
        let Ok(ev) = serde_json::from_str::<AnthropicEvent<'_>>(data) else {
            return;
        };
        match ev.kind.as_deref().or(name).unwrap_or("") {
            "message_start" => {
                if let Some(usage) = ev.message.and_then(|m| m.usage) {
                    self.anthropic = Some(usage);
                }
            }
            "message_delta" => {
                if let Some(usage) = ev.usage {
                    self.anthropic.get_or_insert_default().overwrite(usage);
                }
            }
            "content_block_delta" => {
                if let Some(delta) = &ev.delta {
                    self.add_text(delta.text.as_str());
                    self.add_text(delta.thinking.as_str());
                    self.add_text(delta.partial_json.as_str());
                }
            }
            "message_stop" => self.finished = true,
            "error" => {
                let error = ev
                    .error
                    .as_ref()
                    .map_or_else(|| "error".to_owned(), describe_error);
                self.error = Some(error);
            }
            _ => {} // ping, content_block_start/stop, and anything newer
        }
    }

    /// Counts `s` and keeps it while under the cap.
    fn add_text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.bytes = self.bytes.saturating_add(len_u64(s.len()));
        let room = MAX_OUTPUT_TEXT.saturating_sub(self.text.len());
        if room == 0 {
            return;
        }
        let mut end = s.len().min(room);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&s[..end]);
    }
}

/// An OpenAI chat chunk (also an error event `{"error": …}`).
#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChatChoice<'a>>>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChatChoice<'a> {
    #[serde(default, borrow)]
    delta: ChatDelta<'a>,
}

#[derive(Default, Deserialize)]
struct ChatDelta<'a> {
    #[serde(default, borrow)]
    content: Text<'a>,
    #[serde(default, borrow)]
    reasoning_content: Text<'a>,
    /// Some OpenAI-compatible providers name it so.
    #[serde(default, borrow)]
    reasoning: Text<'a>,
    #[serde(default, borrow)]
    refusal: Text<'a>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    /// The deprecated single function call.
    #[serde(default, borrow)]
    function_call: FunctionDelta<'a>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(default, borrow)]
    function: FunctionDelta<'a>,
}

#[derive(Default, Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    name: Text<'a>,
    #[serde(default, borrow)]
    arguments: Text<'a>,
}

/// A Responses stream event (`type` names it; the SSE `event:` repeats it).
#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Text<'a>,
    #[serde(default)]
    response: Option<ResponseBody>,
    #[serde(default)]
    error: Option<Value>,
}

/// The `response` object of a terminal event; its output is skipped unread.
#[derive(Deserialize)]
struct ResponseBody {
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    error: Option<Value>,
}

/// An Anthropic Messages stream event.
#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    message: Option<AnthropicMessage>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<AnthropicUsage>,
    #[serde(default, borrow)]
    delta: Option<AnthropicDelta<'a>>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<AnthropicUsage>,
}

/// A `content_block_delta` (or `message_delta`, whose fields are all ignored here).
#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(default, borrow)]
    text: Text<'a>,
    #[serde(default, borrow)]
    thinking: Text<'a>,
    #[serde(default, borrow)]
    partial_json: Text<'a>,
}

#[cfg(test)]
mod tests;
