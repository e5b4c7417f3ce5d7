//! Arbitrary bytes through every decoder and parser of `sentinel-wire`: the startup-phase decoder,
//! then the regular framer with both typed views, `BindParams` on Bind frames and the SASL initial
//! response parser. Nothing may panic, and decoding must not depend on how the bytes were split
//! into reads.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sentinel_wire::{
    BackendMessage, BindParams, Frame, FrontendMessage, WireError, decode_frame, decode_startup,
    parse_sasl_initial_response,
};

/// Frame limits to try: a tiny one, so the length check fires often, and a generous one.
const LIMITS: [usize; 2] = [64, 1 << 20];

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the input is split in two reads.
    let split = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));

    // A connection starts with startup-phase packets; what follows them is framed.
    let mut buf = BytesMut::from(data);
    let mut after_startup = 0;
    while let Ok(Some(_packet)) = decode_startup(&mut buf) {
        after_startup = data.len() - buf.len();
    }

    for max in LIMITS {
        // The whole input as regular messages, and what is left after the startup packets.
        for start in [0, after_startup] {
            let input = &data[start..];
            let whole = frames(input, input.len(), max);
            let split = frames(input, split.min(input.len()), max);
            assert_eq!(whole, split, "decoding depends on how the input was split");
        }
    }
});

/// Decodes `input` fed in two reads (split at `at`), parsing every frame; returns the frames and
/// the error that stopped decoding, if any.
fn frames(input: &[u8], at: usize, max: usize) -> (Vec<Frame>, Option<WireError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in [&input[..at], &input[at..]] {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match decode_frame(&mut buf, max) {
                Ok(Some(frame)) => {
                    assert!(frame.wire_len() >= 5 && frame.wire_len() <= max + 1);
                    assert_eq!(buf.len(), before - frame.wire_len());
                    parse(&frame);
                    out.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn parse(frame: &Frame) {
    if let Ok(FrontendMessage::Bind { rest, .. }) = FrontendMessage::parse(frame) {
        // The frontend view validated the parameters, so decoding them again must succeed.
        assert!(
            BindParams::parse(rest).is_ok(),
            "Bind accepted but its parameters are not"
        );
    }
    if let Ok(BackendMessage::ErrorResponse(e) | BackendMessage::NoticeResponse(e)) =
        BackendMessage::parse(frame)
    {
        let _ = (e.code(), e.message(), e.severity());
    }
    let _ = BindParams::parse(frame.body());
    let _ = parse_sasl_initial_response(frame.body());
}
