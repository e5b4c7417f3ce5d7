use super::*;
use crate::llm::sse::SseParser;

/// Parses a whole recorded stream and meters it; returns the meter and the forwarded bytes.
fn run(api: Api, hide: bool, stream: &str) -> (StreamMeter, String, usize) {
    let mut parser = SseParser::new(1 << 20);
    let events = parser.push(stream.as_bytes()).expect("parses");
    assert!(
        parser.take_rest().is_empty(),
        "stream ends with a blank line"
    );
    let mut meter = StreamMeter::new(api, hide);
    let mut forwarded = Vec::new();
    let mut hidden = 0;
    for ev in &events {
        match meter.on_event(ev) {
            Forward::Yes => forwarded.extend_from_slice(&ev.raw),
            Forward::Hide => hidden += 1,
        }
    }
    let forwarded = String::from_utf8(forwarded).expect("utf-8");
    (meter, forwarded, hidden)
}

const CHAT_HEAD: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1735000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1735000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1735000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":" there!\n"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1735000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}

"#;

const CHAT_USAGE: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1735000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1","choices":[],"usage":{"prompt_tokens":1019,"completion_tokens":4,"total_tokens":1023,"prompt_tokens_details":{"cached_tokens":1000,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}

"#;

const DONE: &str = "data: [DONE]\n\n";

fn chat_stream() -> String {
    format!("{CHAT_HEAD}{CHAT_USAGE}{DONE}")
}

#[test]
fn chat_usage_chunk_is_hidden_when_sentinel_asked() {
    let (meter, forwarded, hidden) = run(Api::ChatCompletions, true, &chat_stream());
    assert_eq!(hidden, 1);
    assert_eq!(forwarded, format!("{CHAT_HEAD}{DONE}"));
    let usage = meter.usage().expect("usage");
    assert_eq!(
        usage,
        Usage {
            input: 19,
            cached_input: 1_000,
            output: 4,
            ..Usage::default()
        }
    );
    assert_eq!(meter.output_text(), "Hello there!\n");
    assert_eq!(meter.output_bytes(), 13);
    assert!(meter.finished());
    assert_eq!(meter.error(), None);
}

#[test]
fn chat_usage_chunk_is_forwarded_when_the_client_asked() {
    let stream = chat_stream();
    let (meter, forwarded, hidden) = run(Api::ChatCompletions, false, &stream);
    assert_eq!(hidden, 0);
    assert_eq!(forwarded, stream);
    assert_eq!(meter.usage().map(|u| u.output), Some(4));
}

#[test]
fn chat_without_usage_chunk_has_no_usage() {
    let (meter, _, _) = run(Api::ChatCompletions, true, &format!("{CHAT_HEAD}{DONE}"));
    assert_eq!(meter.usage(), None);
    assert!(meter.finished());
    assert_eq!(meter.output_bytes(), 13);
}

#[test]
fn chat_empty_choices_without_usage_are_forwarded() {
    // Azure sends a first chunk with `choices: []` and content-filter results.
    let azure = r#"data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}

"#;
    let stream = format!("{azure}{CHAT_HEAD}{CHAT_USAGE}{DONE}");
    let (_, forwarded, hidden) = run(Api::ChatCompletions, true, &stream);
    assert_eq!(hidden, 1);
    assert!(forwarded.starts_with(azure));
}

#[test]
fn chat_tool_calls_and_reasoning_count_as_output() {
    let stream = r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}],"usage":null}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":null}]}

data: {"choices":[{"index":0,"delta":{"reasoning_content":"hmm"},"finish_reason":null}]}

data: {"choices":[{"index":0,"delta":{"refusal":"no"},"finish_reason":null}]}

data: [DONE]

"#;
    let (meter, forwarded, _) = run(Api::ChatCompletions, true, stream);
    assert_eq!(forwarded, stream);
    assert_eq!(meter.output_text(), "get_weather{\"city\":\"Paris\"}hmmno");
}

#[test]
fn chat_error_inside_the_stream() {
    let stream = format!(
        "{}data: {{\"error\":{{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}}}\n\n",
        &CHAT_HEAD[..CHAT_HEAD.find("\n\n").expect("first event") + 2]
    );
    let (meter, forwarded, hidden) = run(Api::ChatCompletions, true, &stream);
    assert_eq!((hidden, forwarded.len()), (0, stream.len()));
    assert_eq!(
        meter.error(),
        Some("server_error: The server had an error while processing your request.")
    );
    assert!(!meter.finished());
    assert_eq!(meter.usage(), None);
}

#[test]
fn output_text_is_capped_but_bytes_are_counted() {
    let mut meter = StreamMeter::new(Api::ChatCompletions, false);
    let piece = "é".repeat(300_000); // 600_000 bytes
    let data = serde_json::json!({"choices": [{"delta": {"content": piece}}]}).to_string();
    let ev = SseEvent {
        raw: Vec::new(),
        event: None,
        data,
    };
    for _ in 0..8 {
        assert_eq!(meter.on_event(&ev), Forward::Yes);
    }
    assert_eq!(meter.output_bytes(), 8 * 600_000);
    assert!(meter.output_text().len() <= MAX_OUTPUT_TEXT);
    assert!(meter.output_text().len() > MAX_OUTPUT_TEXT - 2);
}

const RESPONSES: &str = r#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","created_at":1735000000,"status":"in_progress","error":null,"incomplete_details":null,"model":"gpt-5-mini-2025-08-07","output":[],"usage":null}}

event: response.in_progress
data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_1","object":"response","status":"in_progress","error":null,"output":[],"usage":null}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":2,"output_index":1,"item":{"id":"msg_1","type":"message","status":"in_progress","content":[],"role":"assistant"}}

event: response.content_part.added
data: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_1","output_index":1,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":""}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":1,"content_index":0,"delta":"Hi","logprobs":[],"obfuscation":"abc"}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_1","output_index":1,"content_index":0,"delta":" there","logprobs":[]}

event: response.output_text.done
data: {"type":"response.output_text.done","sequence_number":6,"item_id":"msg_1","output_index":1,"content_index":0,"text":"Hi there","logprobs":[]}

event: response.completed
data: {"type":"response.completed","sequence_number":7,"response":{"id":"resp_1","object":"response","created_at":1735000000,"status":"completed","error":null,"model":"gpt-5-mini-2025-08-07","output":[{"id":"rs_1","type":"reasoning","summary":[]},{"id":"msg_1","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"Hi there"}],"role":"assistant"}],"usage":{"input_tokens":512,"input_tokens_details":{"cached_tokens":256},"output_tokens":130,"output_tokens_details":{"reasoning_tokens":128},"total_tokens":642}}}

"#;

#[test]
fn responses_completed_carries_the_usage() {
    let (meter, forwarded, hidden) = run(Api::Responses, false, RESPONSES);
    assert_eq!((hidden, forwarded.as_str()), (0, RESPONSES));
    assert_eq!(
        meter.usage(),
        Some(Usage {
            input: 256,
            cached_input: 256,
            output: 130,
            reasoning: 128,
            ..Usage::default()
        })
    );
    assert_eq!(meter.output_text(), "Hi there");
    assert!(meter.finished());
    assert_eq!(meter.error(), None);
}

#[test]
fn responses_failed_and_error_events() {
    let failed = r#"event: response.failed
data: {"type":"response.failed","sequence_number":3,"response":{"id":"resp_1","status":"failed","error":{"code":"server_error","message":"The model failed."},"usage":{"input_tokens":40,"output_tokens":2,"total_tokens":42}}}

"#;
    let (meter, _, _) = run(Api::Responses, false, failed);
    assert_eq!(meter.error(), Some("server_error: The model failed."));
    assert_eq!(meter.usage().map(|u| (u.input, u.output)), Some((40, 2)));
    assert!(meter.finished());

    let error = r#"event: error
data: {"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null,"sequence_number":1}

"#;
    let (meter, _, _) = run(Api::Responses, false, error);
    assert_eq!(meter.error(), Some("ERR_SOMETHING: Something went wrong"));
    assert_eq!(meter.usage(), None);
    assert!(!meter.finished());
}

#[test]
fn responses_tool_arguments_and_reasoning_deltas_count_audio_does_not() {
    let stream = r#"event: response.function_call_arguments.delta
data: {"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":0,"delta":"{\"a\":1}"}

event: response.reasoning_summary_text.delta
data: {"type":"response.reasoning_summary_text.delta","item_id":"rs_1","delta":"think"}

event: response.audio.delta
data: {"type":"response.audio.delta","delta":"UklGRgAAAABXQVZF"}

"#;
    let (meter, _, _) = run(Api::Responses, false, stream);
    assert_eq!(meter.output_text(), "{\"a\":1}think");
}

const MESSAGE_START: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":300,"cache_read_input_tokens":1000,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":300},"output_tokens":1,"service_tier":"standard"}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}

"#;

const MESSAGE_REST: &str = r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo!"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"q\": 1}"}}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":null,"stop_sequence":null},"usage":{"output_tokens":15}}

event: some_future_event
data: {"type":"some_future_event","whatever":[1,2,3]}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":25,"cache_creation_input_tokens":300,"cache_read_input_tokens":1000,"output_tokens":42}}

event: message_stop
data: {"type":"message_stop"}

"#;

#[test]
fn anthropic_message_delta_usage_is_cumulative() {
    let stream = format!("{MESSAGE_START}{MESSAGE_REST}");
    let (meter, forwarded, hidden) = run(Api::Messages, false, &stream);
    assert_eq!((hidden, forwarded), (0, stream.clone()));
    let usage = meter.usage().expect("usage");
    // The last delta's 42, not 1 + 15 + 42.
    assert_eq!(
        usage,
        Usage {
            input: 25,
            cached_input: 1_000,
            cache_write_5m: 0,
            cache_write_1h: 300,
            output: 42,
            reasoning: 0
        }
    );
    assert_eq!(meter.output_text(), "Hello!{\"q\": 1}");
    assert!(meter.finished());
    assert_eq!(meter.error(), None);
}

#[test]
fn anthropic_error_after_start_keeps_the_partial_usage() {
    let stream = format!(
        "{MESSAGE_START}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n"
    );
    let (meter, _, _) = run(Api::Messages, false, &stream);
    assert_eq!(meter.error(), Some("overloaded_error: Overloaded"));
    let usage = meter.usage().expect("from message_start");
    assert_eq!(
        (usage.input, usage.cached_input, usage.output),
        (25, 1_000, 1)
    );
    assert_eq!(meter.output_text(), "Hel");
    assert!(!meter.finished());

    let (meter, _, _) = run(
        Api::Messages,
        false,
        "event: error\ndata: {\"type\":\"error\"}\n\n",
    );
    assert_eq!(meter.error(), Some("error"));
    assert_eq!(meter.usage(), None);
}

#[test]
fn anthropic_thinking_counts_signature_does_not() {
    let stream = r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me see"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}

"#;
    let (meter, _, _) = run(Api::Messages, false, stream);
    assert_eq!(meter.output_text(), "Let me see");
    assert_eq!(meter.usage(), None);
}

#[test]
fn garbage_and_comments_are_forwarded_and_ignored() {
    let stream = ": keep-alive\n\ndata: not json\n\nevent: x\n\n";
    for api in Api::ALL {
        let (meter, forwarded, hidden) = run(api, true, stream);
        assert_eq!((forwarded.as_str(), hidden), (stream, 0));
        assert_eq!(
            (meter.usage(), meter.error(), meter.finished()),
            (None, None, false)
        );
    }
}

#[test]
fn usage_from_json_for_each_api() {
    let chat = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":20,"total_tokens":120,"prompt_tokens_details":{"cached_tokens":64,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":10,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;
    assert_eq!(
        usage_from_json(Api::ChatCompletions, chat),
        Some(Usage {
            input: 36,
            cached_input: 64,
            output: 20,
            reasoning: 10,
            ..Usage::default()
        })
    );

    let responses = br#"{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"Hi"}]}],"usage":{"input_tokens":80,"input_tokens_details":{"cached_tokens":0,"cache_write_tokens":50},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":89}}"#;
    assert_eq!(
        usage_from_json(Api::Responses, responses),
        Some(Usage {
            input: 30,
            cache_write_5m: 50,
            output: 9,
            ..Usage::default()
        })
    );

    let embeddings = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    assert_eq!(
        usage_from_json(Api::Embeddings, embeddings),
        Some(Usage {
            input: 8,
            ..Usage::default()
        })
    );

    let messages = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":0,"output_tokens":6}}"#;
    assert_eq!(
        usage_from_json(Api::Messages, messages),
        Some(Usage {
            input: 12,
            cache_write_5m: 100,
            output: 6,
            ..Usage::default()
        })
    );
}

#[test]
fn usage_from_json_without_usage() {
    for api in Api::ALL {
        assert_eq!(usage_from_json(api, br#"{"id": "x"}"#), None);
        assert_eq!(usage_from_json(api, br#"{"usage": null}"#), None);
        assert_eq!(usage_from_json(api, br#"{"usage": "lots"}"#), None);
        assert_eq!(usage_from_json(api, br#"{"usage": [1]}"#), None);
        assert_eq!(usage_from_json(api, b"not json"), None);
        assert_eq!(usage_from_json(api, b"[]"), None);
        assert_eq!(
            usage_from_json(api, br#"{"usage": {}}"#),
            Some(Usage::default())
        );
    }
}
