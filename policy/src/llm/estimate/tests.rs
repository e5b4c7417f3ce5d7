use serde_json::{Value, json};

use super::*;
use crate::llm::book::PriceBook;
use crate::llm::request::parse_request;
use crate::llm::tokens::shared_for_tests;

fn price(model: &str) -> ModelPrice {
    PriceBook::defaults().get(model).cloned().expect(model)
}

fn est(api: Api, body: Value, price: &ModelPrice) -> Estimate {
    let info = parse_request(api, body.to_string().as_bytes()).expect("valid request");
    estimate(api, &info, price, shared_for_tests())
}

fn chat(body: Value) -> Estimate {
    est(Api::ChatCompletions, body, &price("gpt-4o-mini"))
}

#[test]
fn counts_a_known_body_exactly_by_the_rule() {
    let t = shared_for_tests();
    let c = |s| t.count(Tokenizer::O200k, s);
    assert_eq!(c("hello world"), 2);
    let e = chat(json!({"model": "m", "messages": [{"role": "user", "content": "hello world"}]}));
    // root{} + "model" + "m"{+1} + "messages" + [ {+1} "role" "user"{+1} "content" "hello world"{+1} ]{+1}
    let message = 1 + c("role") + (c("user") + 1) + c("content") + (c("hello world") + 1);
    let body = 1 + c("model") + (c("m") + 1) + c("messages") + (message + 1);
    assert_eq!(e.input_tokens, body + MESSAGE_TOKENS + PRIMING_TOKENS);
}

#[test]
fn output_uses_the_request_bound_clamped_to_the_model() {
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let e = chat(json!({"model": "m", "messages": msgs, "max_tokens": 100}));
    assert_eq!(e.output_tokens, 100);
    let e = chat(json!({"model": "m", "messages": msgs, "max_completion_tokens": 1_000_000}));
    assert_eq!(e.output_tokens, 16_384);
    // No bound in the request: the model default.
    let e = chat(json!({"model": "m", "messages": msgs}));
    assert_eq!(e.output_tokens, price("gpt-4o-mini").default_output_tokens);
    let mut low_default = price("gpt-4o-mini");
    low_default.default_output_tokens = 1_000;
    let e = est(
        Api::ChatCompletions,
        json!({"model": "m", "messages": msgs}),
        &low_default,
    );
    assert_eq!(e.output_tokens, 1_000);
}

#[test]
fn output_is_multiplied_by_n() {
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let e = chat(json!({"model": "m", "messages": msgs, "max_tokens": 100, "n": 3}));
    assert_eq!(e.output_tokens, 300);
    let e = chat(json!({"model": "m", "messages": msgs, "max_tokens": 999_999, "n": 4}));
    assert_eq!(e.output_tokens, 4 * 16_384);
    // Priced: input at $0.15/M, output at $0.60/M, rounded up.
    let want = (u128::from(e.input_tokens) * 150_000 + u128::from(e.output_tokens) * 600_000)
        .div_ceil(1_000_000);
    assert_eq!(u128::from(e.cost.0), want);
}

#[test]
fn images_count_the_constant_not_their_base64() {
    let data_url = format!("data:image/png;base64,{}", "iVBORw0KGgo".repeat(20_000));
    let with_image = |part: Value| {
        chat(json!({"model": "m", "max_tokens": 1, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}
        ]}))
    };
    let empty = with_image(json!({}));
    let inline =
        with_image(json!({"type": "image_url", "image_url": {"url": data_url, "detail": "high"}}));
    let linked =
        with_image(json!({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}));
    assert_eq!(inline.input_tokens - empty.input_tokens, IMAGE_TOKENS);
    assert_eq!(linked.input_tokens, inline.input_tokens);

    // Responses `input_image` and Anthropic `image` blocks alike.
    let r = est(
        Api::Responses,
        json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": data_url}]}]}),
        &price("gpt-4o-mini"),
    );
    assert!(r.input_tokens < IMAGE_TOKENS + 100, "{}", r.input_tokens);
    let a = est(
        Api::Messages,
        json!({"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data_url}}]}]}),
        &price("claude-haiku-4-5"),
    );
    assert!(
        a.input_tokens > IMAGE_TOKENS && a.input_tokens < IMAGE_TOKENS + 200,
        "{}",
        a.input_tokens
    );
}

#[test]
fn input_is_clamped_to_the_context_window() {
    let mut small = price("gpt-4o-mini");
    small.context_window = 1_000;
    let text = "lorem ipsum dolor sit amet ".repeat(1_000);
    let e = est(
        Api::ChatCompletions,
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": text}]}),
        &small,
    );
    assert_eq!(e.input_tokens, 1_000);
    assert_eq!(e.output_tokens, 10);
    assert_eq!(
        e.cost,
        Micros((1_000 * 150_000 + 10 * 600_000_u64).div_ceil(1_000_000))
    );
}

#[test]
fn anthropic_input_is_priced_at_the_dearest_cache_write_rate() {
    let sonnet = price("claude-sonnet-4-5");
    let text = "x".repeat(10_000);
    let e = est(
        Api::Messages,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 1_000,
               "system": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
               "messages": [{"role": "user", "content": "hi"}]}),
        &sonnet,
    );
    // Bytes tokenizer: at least one token per byte of the text.
    assert!(e.input_tokens > 10_000);
    assert_eq!(e.output_tokens, 1_000);
    // $6/M (1h write) beats $3.75/M (5m write) and $3/M (input).
    let want = (e.input_tokens * 6_000_000 + 1_000 * 15_000_000).div_ceil(1_000_000);
    assert_eq!(e.cost, Micros(want));
    assert!(
        e.cost
            > sonnet.cost(&crate::llm::Usage {
                input: e.input_tokens,
                output: 1_000,
                ..Default::default()
            })
    );
}

#[test]
fn documents_and_files() {
    let haiku = price("claude-haiku-4-5");
    let pdf = "JVBERi0xLjQK".repeat(1_000); // 12_000 base64 bytes
    let doc = |source: Value| {
        est(
            Api::Messages,
            json!({"model": "c", "max_tokens": 1, "messages": [{"role": "user", "content": [
                {"type": "document", "source": source}]}]}),
            &haiku,
        )
    };
    let base64 = doc(json!({"type": "base64", "media_type": "application/pdf", "data": pdf}));
    assert!(
        base64.input_tokens >= 12_000 && base64.input_tokens < 12_200,
        "{}",
        base64.input_tokens
    );
    let by_url = doc(json!({"type": "url", "url": "https://example.com/a.pdf"}));
    assert_eq!(by_url.input_tokens, haiku.context_window);

    // OpenAI: inline file data one token per byte (not BPE), a file id unbounded.
    let mini = price("gpt-4o-mini");
    let file = |file: Value| {
        est(
            Api::ChatCompletions,
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
                {"type": "file", "file": file}]}]}),
            &mini,
        )
    };
    let inline = file(
        json!({"filename": "a.pdf", "file_data": format!("data:application/pdf;base64,{pdf}")}),
    );
    assert!(inline.input_tokens >= 12_000, "{}", inline.input_tokens);
    assert_eq!(
        file(json!({"file_id": "file-abc"})).input_tokens,
        mini.context_window
    );
    let r = est(
        Api::Responses,
        json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_file", "file_url": "https://example.com/a.pdf"}]}]}),
        &mini,
    );
    assert_eq!(r.input_tokens, mini.context_window);
}

#[test]
fn stored_input_and_hosted_tools_take_the_window() {
    let mini = price("gpt-4o-mini");
    let r = |extra: Value| {
        let mut body = json!({"model": "m", "input": "hi", "max_output_tokens": 5});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        est(Api::Responses, body, &mini)
    };
    assert!(r(json!({})).input_tokens < 50);
    assert_eq!(
        r(json!({"previous_response_id": "resp_1"})).input_tokens,
        mini.context_window
    );
    assert_eq!(
        r(json!({"tools": [{"type": "web_search"}]})).input_tokens,
        mini.context_window
    );
    assert!(
        r(json!({"tools": [{"type": "function", "name": "f", "parameters": {}}]})).input_tokens
            < 100
    );
    let a = est(
        Api::Messages,
        json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
               "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}),
        &price("claude-haiku-4-5"),
    );
    assert_eq!(a.input_tokens, 200_000);
}

#[test]
fn embeddings() {
    let small = price("text-embedding-3-small");
    let t = shared_for_tests();
    let e = est(
        Api::Embeddings,
        json!({"model": "e", "input": "hello world"}),
        &small,
    );
    assert_eq!((e.input_tokens, e.output_tokens), (2, 0));
    assert_eq!(e.cost, Micros(1)); // 2 × $0.02/M rounds up to one micro.

    let e = est(
        Api::Embeddings,
        json!({"model": "e", "input": [1, 2, 3, 4, 5]}),
        &small,
    );
    assert_eq!(e.input_tokens, 5);
    let e = est(
        Api::Embeddings,
        json!({"model": "e", "input": [[1, 2], [3, 4, 5]]}),
        &small,
    );
    assert_eq!(e.input_tokens, 5);
    let e = est(
        Api::Embeddings,
        json!({"model": "e", "input": ["hello world", "the quick brown fox"]}),
        &small,
    );
    assert_eq!(
        e.input_tokens,
        t.count(Tokenizer::Cl100k, "hello world")
            + t.count(Tokenizer::Cl100k, "the quick brown fox")
    );

    // Each item is clamped to 8_191; the batch as a whole is not.
    let long = "word ".repeat(10_000);
    let e = est(
        Api::Embeddings,
        json!({"model": "e", "input": [long, long, "hi"]}),
        &small,
    );
    assert_eq!(e.input_tokens, 2 * 8_191 + 1);
}

#[test]
fn numbers_count_their_digits() {
    assert_eq!(number_len(&Number::from(0)), 1);
    assert_eq!(number_len(&Number::from(12_345)), 5);
    assert_eq!(number_len(&Number::from(-7)), 2);
    assert_eq!(number_len(&Number::from_f64(0.25).expect("finite")), 4);
}

#[test]
fn text_beyond_the_tokenize_budget_counts_by_bytes() {
    let mut wide = price("gpt-4.1");
    wide.context_window = u64::MAX;
    let prose = "The quick brown fox jumps over the lazy dog. ";
    let small = prose.repeat(1_000);
    let big = prose.repeat(MAX_TOKENIZED_BYTES / prose.len() + 1);
    let body = |text: &str| json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": text}]});
    let e = est(Api::ChatCompletions, body(&small), &wide);
    assert!(
        e.input_tokens < len_u64(small.len()) / 3,
        "{}",
        e.input_tokens
    );
    let e = est(Api::ChatCompletions, body(&big), &wide);
    assert!(e.input_tokens > len_u64(big.len()), "{}", e.input_tokens);
    assert!(
        e.input_tokens < len_u64(big.len()) + 50,
        "{}",
        e.input_tokens
    );
}
