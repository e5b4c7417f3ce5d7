//! The providers' usage dialects and small tolerant serde helpers, turned into [`Usage`].
//!
//! Why typed structs with every field optional: usage objects grow new fields often (and
//! OpenAI-compatible providers omit or null some); unknown fields are skipped without
//! allocation, and a field of the wrong type loses that one object, not the whole event.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::usage::Usage;

/// Longest error description kept from a stream.
const MAX_ERROR_LEN: usize = 512;

/// OpenAI usage: chat (`prompt_`/`completion_`), Responses (`input_`/`output_`) and embeddings
/// (`prompt_tokens` only). Either naming is accepted for any OpenAI API, since compatible
/// providers mix them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct OpenAiUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens_details: Option<InputDetails>,
    #[serde(default, deserialize_with = "lenient")]
    input_tokens_details: Option<InputDetails>,
    #[serde(default, deserialize_with = "lenient")]
    completion_tokens_details: Option<OutputDetails>,
    #[serde(default, deserialize_with = "lenient")]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct InputDetails {
    cached_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct OutputDetails {
    reasoning_tokens: Option<u64>,
}

impl OpenAiUsage {
    /// `prompt_tokens` includes cached tokens and cache writes: take them out of `input`.
    pub(crate) fn normalize(&self) -> Usage {
        let prompt = self
            .prompt_tokens
            .or(self.input_tokens)
            .or(if self.completion_tokens.or(self.output_tokens).is_none() {
                // Embeddings may carry only `total_tokens`.
                self.total_tokens
            } else {
                None
            })
            .unwrap_or(0);
        let input_details = self
            .prompt_tokens_details
            .as_ref()
            .or(self.input_tokens_details.as_ref());
        let cached = input_details.and_then(|d| d.cached_tokens).unwrap_or(0);
        let written = input_details
            .and_then(|d| d.cache_write_tokens)
            .unwrap_or(0);
        let reasoning = self
            .completion_tokens_details
            .as_ref()
            .or(self.output_tokens_details.as_ref())
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        Usage {
            input: prompt.saturating_sub(cached).saturating_sub(written),
            cached_input: cached,
            cache_write_5m: written,
            cache_write_1h: 0,
            output: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
            reasoning,
        }
    }
}

/// Anthropic usage. In a stream, `message_delta` repeats fields cumulatively: each field
/// present overwrites the one held ([`AnthropicUsage::overwrite`]), never adds.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    cache_creation: Option<CacheCreation>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct CacheCreation {
    ephemeral_5m_input_tokens: Option<u64>,
    ephemeral_1h_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Takes every field `newer` carries; keeps the others.
    pub(crate) fn overwrite(&mut self, newer: AnthropicUsage) {
        fn take(old: &mut Option<u64>, new: Option<u64>) {
            if new.is_some() {
                *old = new;
            }
        }
        take(&mut self.input_tokens, newer.input_tokens);
        take(&mut self.output_tokens, newer.output_tokens);
        take(
            &mut self.cache_creation_input_tokens,
            newer.cache_creation_input_tokens,
        );
        take(
            &mut self.cache_read_input_tokens,
            newer.cache_read_input_tokens,
        );
        if newer.cache_creation.is_some() {
            self.cache_creation = newer.cache_creation;
        }
    }

    /// `input_tokens` already excludes the cache. Writes come from the 5m/1h split when
    /// present; any of `cache_creation_input_tokens` the split does not cover counts as 5m.
    pub(crate) fn normalize(&self) -> Usage {
        let created = self.cache_creation_input_tokens.unwrap_or(0);
        let (w5, w1) = match &self.cache_creation {
            Some(split) => {
                let w5 = split.ephemeral_5m_input_tokens.unwrap_or(0);
                let w1 = split.ephemeral_1h_input_tokens.unwrap_or(0);
                let uncovered = created.saturating_sub(w5.saturating_add(w1));
                (w5.saturating_add(uncovered), w1)
            }
            None => (created, 0),
        };
        Usage {
            input: self.input_tokens.unwrap_or(0),
            cached_input: self.cache_read_input_tokens.unwrap_or(0),
            cache_write_5m: w5,
            cache_write_1h: w1,
            output: self.output_tokens.unwrap_or(0),
            reasoning: 0,
        }
    }
}

/// A field of the wrong shape becomes `None` instead of failing the object holding it.
pub(crate) fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    Ok(serde_json::from_value(v).ok())
}

/// A string field that may be anything else (then ignored); borrows the event text when it
/// has no escapes.
#[derive(Debug, Default)]
pub(crate) struct Text<'a>(pub(crate) Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    pub(crate) fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor(PhantomData))
    }
}

struct TextVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
    type Value = Text<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
        Ok(Text(Some(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
        Ok(Text(Some(Cow::Owned(v.to_owned()))))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'a>, E> {
        Ok(Text(Some(Cow::Owned(v))))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<Text<'a>, E> {
        Ok(Text(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'a>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'a>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }
}

/// `type: message` of a provider error object (OpenAI `{message, type, code}`, Responses
/// `{code, message}`, Anthropic `{type, message}`), or the text of a bare string; capped.
pub(crate) fn describe_error(error: &Value) -> String {
    let text = match error {
        Value::String(s) => s.clone(),
        Value::Object(map) => {
            let field = |k: &str| match map.get(k) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let kind = field("type").or_else(|| field("code"));
            match (kind, field("message")) {
                (Some(k), Some(m)) => format!("{k}: {m}"),
                (Some(k), None) => k,
                (None, Some(m)) => m,
                (None, None) => error.to_string(),
            }
        }
        other => other.to_string(),
    };
    truncate(text, MAX_ERROR_LEN)
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn openai(v: Value) -> Usage {
        serde_json::from_value::<OpenAiUsage>(v)
            .expect("usage")
            .normalize()
    }

    #[test]
    fn openai_chat_usage() {
        let u = openai(json!({
            "prompt_tokens": 1_000, "completion_tokens": 300, "total_tokens": 1_300,
            "prompt_tokens_details": {"cached_tokens": 600, "audio_tokens": 0, "cache_write_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 200, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        }));
        assert_eq!(
            u,
            Usage {
                input: 300,
                cached_input: 600,
                cache_write_5m: 100,
                cache_write_1h: 0,
                output: 300,
                reasoning: 200
            }
        );
        assert_eq!(u.total_tokens(), 1_300);
    }

    #[test]
    fn openai_usage_tolerates_missing_and_null_details() {
        let u = openai(json!({"prompt_tokens": 10, "completion_tokens": 5,
            "prompt_tokens_details": null, "completion_tokens_details": "weird"}));
        assert_eq!(
            (u.input, u.cached_input, u.output, u.reasoning),
            (10, 0, 5, 0)
        );
        let u = openai(json!({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}));
        assert_eq!((u.input, u.cached_input), (0, 9));
        assert_eq!(openai(json!({})), Usage::default());
        // Embeddings.
        assert_eq!(
            openai(json!({"prompt_tokens": 8, "total_tokens": 8})).input,
            8
        );
        assert_eq!(openai(json!({"total_tokens": 8})).input, 8);
    }

    #[test]
    fn responses_usage() {
        let u = openai(json!({
            "input_tokens": 500, "input_tokens_details": {"cached_tokens": 100},
            "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 30},
            "total_tokens": 550
        }));
        assert_eq!(
            (u.input, u.cached_input, u.output, u.reasoning),
            (400, 100, 50, 30)
        );
    }

    fn anthropic(v: Value) -> AnthropicUsage {
        serde_json::from_value(v).expect("usage")
    }

    #[test]
    fn anthropic_usage_split_and_fallback() {
        let u = anthropic(json!({
            "input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 1_000,
            "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
            "service_tier": "standard", "server_tool_use": {"web_search_requests": 0}
        }))
        .normalize();
        assert_eq!(
            u,
            Usage {
                input: 20,
                cached_input: 1_000,
                cache_write_5m: 100,
                cache_write_1h: 200,
                output: 7,
                reasoning: 0
            }
        );
        let u =
            anthropic(json!({"input_tokens": 20, "cache_creation_input_tokens": 300})).normalize();
        assert_eq!((u.cache_write_5m, u.cache_write_1h), (300, 0));
        let u = anthropic(json!({"cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_1h_input_tokens": 200}}))
        .normalize();
        assert_eq!((u.cache_write_5m, u.cache_write_1h), (100, 200));
    }

    #[test]
    fn anthropic_overwrite_keeps_absent_fields() {
        let mut u = anthropic(
            json!({"input_tokens": 20, "output_tokens": 1, "cache_read_input_tokens": 5}),
        );
        u.overwrite(anthropic(json!({"output_tokens": 30})));
        u.overwrite(anthropic(json!({"output_tokens": 45})));
        let n = u.normalize();
        assert_eq!((n.input, n.cached_input, n.output), (20, 5, 45));
    }

    #[test]
    fn error_descriptions() {
        assert_eq!(
            describe_error(&json!({"message": "Overloaded", "type": "overloaded_error"})),
            "overloaded_error: Overloaded"
        );
        assert_eq!(
            describe_error(&json!({"code": "server_error", "message": "boom", "param": null})),
            "server_error: boom"
        );
        assert_eq!(describe_error(&json!("plain")), "plain");
        assert_eq!(describe_error(&json!({"x": 1})), "{\"x\":1}");
        let long = describe_error(&json!("é".repeat(600)));
        assert!(long.len() <= MAX_ERROR_LEN && long.chars().all(|c| c == 'é'));
    }

    #[test]
    fn text_accepts_anything() {
        #[derive(Deserialize)]
        struct T<'a> {
            #[serde(default, borrow)]
            a: Text<'a>,
        }
        let parse = |s: &'static str| serde_json::from_str::<T<'_>>(s).expect("parses").a.0;
        assert_eq!(parse(r#"{"a": "hi"}"#), Some(Cow::Borrowed("hi")));
        assert!(matches!(parse(r#"{"a": "h\ni"}"#), Some(Cow::Owned(s)) if s == "h\ni"));
        assert_eq!(parse(r#"{"a": {"b": [1, {"c": 2}]}}"#), None);
        assert_eq!(parse(r#"{"a": null}"#), None);
        assert_eq!(parse(r#"{}"#), None);
    }
}
