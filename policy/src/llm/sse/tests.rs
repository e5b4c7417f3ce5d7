use proptest::prelude::*;

use super::*;

const LIMIT: usize = 1 << 16;

fn parse_all(bytes: &[u8]) -> (Vec<SseEvent>, Vec<u8>) {
    let mut p = SseParser::new(LIMIT);
    let events = p.push(bytes).expect("within limit");
    (events, p.take_rest())
}

fn datas(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

#[test]
fn openai_style_stream() {
    let stream = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
    let (events, rest) = parse_all(stream);
    assert_eq!(datas(&events), ["{\"a\":1}", "[DONE]"]);
    assert_eq!(events[0].raw, b"data: {\"a\":1}\n\n");
    assert_eq!(events[1].raw, b"data: [DONE]\n\n");
    assert!(events.iter().all(|e| e.event.is_none()));
    assert!(rest.is_empty());
}

#[test]
fn named_events_and_data_without_space() {
    let (events, _) = parse_all(b"event: ping\ndata:{\"type\": \"ping\"}\n\n");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.as_deref(), Some("ping"));
    assert_eq!(events[0].data, "{\"type\": \"ping\"}");
    // Only one space is stripped.
    let (events, _) = parse_all(b"data:  two\n\n");
    assert_eq!(events[0].data, " two");
}

#[test]
fn crlf_and_cr_line_ends() {
    let crlf = b"event: message_stop\r\ndata: {}\r\n\r\ndata: x\r\n\r\n";
    let (events, rest) = parse_all(crlf);
    assert_eq!(datas(&events), ["{}", "x"]);
    assert_eq!(events[0].event.as_deref(), Some("message_stop"));
    assert_eq!(events[0].raw, b"event: message_stop\r\ndata: {}\r\n\r\n");
    assert!(rest.is_empty());

    // A CR at the very end may be half of a CRLF: that event waits for the next byte.
    let (events, rest) = parse_all(b"data: a\rdata: b\r\rdata: c\r\r");
    assert_eq!(datas(&events), ["a\nb"]);
    assert_eq!(rest, b"data: c\r\r");
    let (events, rest) = parse_all(b"data: a\rdata: b\r\rdata: c\r\r:");
    assert_eq!(datas(&events), ["a\nb", "c"]);
    assert_eq!(rest, b":");
}

#[test]
fn comments_are_kept_in_raw_only() {
    let (events, _) = parse_all(b": keep-alive\n\ndata: a\n: note\nid: 7\nretry: 10\ndata: b\n\n");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].data, "");
    assert_eq!(events[0].raw, b": keep-alive\n\n");
    assert_eq!(events[1].data, "a\nb");
    assert_eq!(
        events[1].raw,
        b"data: a\n: note\nid: 7\nretry: 10\ndata: b\n\n"
    );
}

#[test]
fn multi_line_data_is_joined() {
    let (events, _) = parse_all(b"data: line one\ndata: line two\ndata\ndata:\n\n");
    assert_eq!(events[0].data, "line one\nline two\n\n");
}

#[test]
fn crlf_split_across_pushes() {
    let mut p = SseParser::new(LIMIT);
    assert!(p.push(b"data: a\r").expect("ok").is_empty());
    assert!(p.push(b"\n\r").expect("ok").is_empty());
    let events = p.push(b"\ndata: b").expect("ok");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].raw, b"data: a\r\n\r\n");
    assert_eq!(p.take_rest(), b"data: b");
}

#[test]
fn too_large_is_an_error() {
    let mut p = SseParser::new(16);
    assert!(p.push(b"data: 0123456").expect("13 bytes").is_empty());
    assert_eq!(p.push(b"789abcdef"), Err(SseError::TooLarge { limit: 16 }));
    // A complete event above the limit, in one push.
    let mut p = SseParser::new(16);
    assert!(matches!(
        p.push(b"data: 0123456789abcdef\n\n"),
        Err(SseError::TooLarge { .. })
    ));
    // Many small events in one push are fine.
    let mut p = SseParser::new(16);
    let events = p.push(&b"data: x\n\n".repeat(100)).expect("small events");
    assert_eq!(events.len(), 100);
}

#[test]
fn take_rest_returns_the_unfinished_event_and_resets() {
    let mut p = SseParser::new(LIMIT);
    let events = p.push(b"data: a\n\nevent: x\ndata: partial").expect("ok");
    assert_eq!(datas(&events), ["a"]);
    assert_eq!(p.take_rest(), b"event: x\ndata: partial");
    assert!(p.take_rest().is_empty());
    // Nothing of the discarded event leaks into the next one.
    let events = p.push(b"data: b\n\n").expect("ok");
    assert_eq!(events[0].event, None);
    assert_eq!(events[0].data, "b");
}

#[test]
fn finish_reads_the_tail_as_events() {
    let mut p = SseParser::new(LIMIT);
    assert!(p.push(b"event: done\ndata: [DONE]").expect("ok").is_empty());
    let tail = p.finish();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].event.as_deref(), Some("done"));
    assert_eq!(tail[0].data, "[DONE]");
    assert_eq!(tail[0].raw, b"event: done\ndata: [DONE]");
    assert!(p.finish().is_empty());

    // A trailing CR completes an event; what follows it is another.
    let mut p = SseParser::new(LIMIT);
    assert!(p.push(b"data: a\r\r").expect("ok").is_empty());
    let tail = p.finish();
    assert_eq!(datas(&tail), ["a"]);
    assert_eq!(tail[0].raw, b"data: a\r\r");
}

/// Splits `bytes` at `cuts` and parses the pieces.
fn parse_split(bytes: &[u8], cuts: &[usize]) -> (Vec<SseEvent>, Vec<u8>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut p = SseParser::new(LIMIT);
    let mut events = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        events.extend(p.push(&bytes[from..cut]).expect("within limit"));
        from = cut;
    }
    (events, p.take_rest())
}

/// A line of an event: data, event name, comment, id.
fn line() -> impl Strategy<Value = String> {
    let text = "[a-zA-Z0-9 {}\":,.é🦀\\[\\]]{0,24}";
    prop_oneof![
        3 => text.prop_map(|t| format!("data: {t}")),
        1 => text.prop_map(|t| format!("data:{t}")),
        1 => "[a-z._]{1,16}".prop_map(|t| format!("event: {t}")),
        1 => text.prop_map(|t| format!(": {t}")),
        1 => "[0-9]{1,4}".prop_map(|t| format!("id: {t}")),
    ]
}

fn line_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
}

/// A stream of events with mixed line ends, and an unfinished tail.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let event = prop::collection::vec((line(), line_end()), 0..5);
    (
        prop::collection::vec((event, line_end()), 0..8),
        prop::collection::vec((line(), line_end()), 0..2),
        line(),
    )
        .prop_map(|(events, tail, last)| {
            let mut out = String::new();
            for (lines, blank) in events {
                for (l, end) in lines {
                    out.push_str(&l);
                    out.push_str(end);
                }
                out.push_str(blank);
            }
            for (l, end) in tail {
                out.push_str(&l);
                out.push_str(end);
            }
            out.push_str(&last);
            out.into_bytes()
        })
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_events(
        bytes in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = parse_all(&bytes);
        let split = parse_split(&bytes, &cuts);
        prop_assert_eq!(&whole, &split);
        // Forwarding every raw then the rest reproduces the stream.
        let mut again: Vec<u8> = whole.0.iter().flat_map(|e| e.raw.iter().copied()).collect();
        again.extend_from_slice(&whole.1);
        prop_assert_eq!(again, bytes);
    }

    #[test]
    fn one_byte_at_a_time_with_one_line_end(
        datas in prop::collection::vec("[a-z0-9 é]{0,12}", 1..6),
        end in line_end(),
    ) {
        let stream: String = datas.iter().map(|d| format!("data: {d}{end}{end}")).collect();
        let mut p = SseParser::new(LIMIT);
        let mut events = Vec::new();
        for b in stream.as_bytes() {
            events.extend(p.push(std::slice::from_ref(b)).expect("ok"));
        }
        events.extend(p.finish());
        let got: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        let want: Vec<&str> = datas.iter().map(String::as_str).collect();
        prop_assert_eq!(got, want);
    }
}
