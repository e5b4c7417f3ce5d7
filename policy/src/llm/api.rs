//! Which provider API a call goes to.
//!
//! Why an enum and not the path: the body fields that bound the output, the usage dialect, the
//! stream events and the error shape all follow from it, so it is decided once from the route.

/// The provider endpoints Sentinel meters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI `POST /v1/chat/completions` (and OpenAI-compatible providers).
    ChatCompletions,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
    /// Anthropic `POST /v1/messages`.
    Messages,
}

/// Whose error body shape and usage dialect an API speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `{"error": {"message", "type", "param", "code"}}`; `prompt_tokens`/`input_tokens`
    /// include cached tokens.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`; `input_tokens` excludes cache reads
    /// and writes.
    Anthropic,
}

impl Api {
    /// Every API, in a fixed order (for metrics registration).
    pub const ALL: [Api; 4] = [
        Api::ChatCompletions,
        Api::Responses,
        Api::Embeddings,
        Api::Messages,
    ];

    /// The family whose wire conventions this API follows.
    pub fn family(self) -> Family {
        match self {
            Api::ChatCompletions | Api::Responses | Api::Embeddings => Family::OpenAi,
            Api::Messages => Family::Anthropic,
        }
    }

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Responses => "responses",
            Api::Embeddings => "embeddings",
            Api::Messages => "messages",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_labels() {
        assert_eq!(Api::Messages.family(), Family::Anthropic);
        for api in [Api::ChatCompletions, Api::Responses, Api::Embeddings] {
            assert_eq!(api.family(), Family::OpenAi);
        }
        let labels: Vec<_> = Api::ALL.iter().map(|a| a.label()).collect();
        assert_eq!(
            labels,
            ["chat_completions", "responses", "embeddings", "messages"]
        );
    }
}
