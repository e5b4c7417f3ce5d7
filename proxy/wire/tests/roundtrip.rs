//! Property tests for the codec.
//!
//! - Every encoder in `encode` round-trips: encode, decode with `decode_frame` (or `decode_startup`
//!   for startup-phase packets), parse with the typed views, and get the inputs back.
//! - Decoding is incremental: a stream of several messages split at every byte boundary (and in
//!   arbitrary chunks) yields `Ok(None)` until a whole message is there, never errors, and yields
//!   exactly the original frames in order.
//! - Bounds are enforced from the header alone: too long, too short, startup limit, cancel key
//!   length, protocol version.
//! - No input makes a decoder or parser panic.
#![allow(clippy::unwrap_used)]

use std::fmt::Debug;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::TestCaseError;
use sentinel_wire::{
    AuthRequest, BackendMessage, BindParams, CANCEL_REQUEST_CODE, ErrorFields, Frame,
    FrontendMessage, GSSENC_REQUEST_CODE, MAX_CANCEL_KEY_LEN, MAX_STARTUP_PACKET_LEN, PROTOCOL_3_0,
    SSL_REQUEST_CODE, StartupPacket, TargetKind, TransactionStatus, WireError, decode_frame,
    decode_startup, encode, parse_sasl_initial_response,
};

/// The frame limit used by the round-trip tests: far above anything generated.
const MAX: usize = 1 << 20;

// === generators ===

/// Postgres strings: NUL-free UTF-8.
fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,12}"
}

/// A string that must not be empty (startup parameter names and SASL mechanisms end their lists
/// with an empty string, so an empty one cannot be encoded).
fn name() -> impl Strategy<Value = String> {
    "[^\\x00]{1,12}"
}

fn blob() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..40)
}

fn values() -> impl Strategy<Value = Vec<Option<Vec<u8>>>> {
    vec(option::of(blob()), 0..6)
}

fn kind() -> impl Strategy<Value = TargetKind> {
    prop_oneof![Just(TargetKind::Statement), Just(TargetKind::Portal)]
}

fn status() -> impl Strategy<Value = TransactionStatus> {
    prop_oneof![
        Just(TransactionStatus::Idle),
        Just(TransactionStatus::InTransaction),
        Just(TransactionStatus::Failed)
    ]
}

#[derive(Debug, Clone)]
struct Params {
    formats: Vec<i16>,
    values: Vec<Option<Vec<u8>>>,
    results: Vec<i16>,
}

fn params() -> impl Strategy<Value = Params> {
    (vec(any::<i16>(), 0..4), values(), vec(any::<i16>(), 0..4)).prop_map(
        |(formats, values, results)| Params {
            formats,
            values,
            results,
        },
    )
}

/// One message for each regular-phase encoder, with its inputs.
#[derive(Debug, Clone)]
enum Msg {
    // frontend
    Query(String),
    Parse {
        name: String,
        sql: String,
        types: Vec<u32>,
    },
    ParseRawTypes {
        name: String,
        sql: String,
        types: Vec<u32>,
    },
    Bind {
        portal: String,
        statement: String,
        params: Params,
    },
    BindRawParams {
        portal: String,
        statement: String,
        params: Params,
    },
    Describe(TargetKind, String),
    Execute(String, i32),
    Close(TargetKind, String),
    Sync,
    Flush,
    Terminate,
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail(String),
    Password(Vec<u8>),
    SaslInitialResponse(String, Vec<u8>),
    SaslResponse(Vec<u8>),
    Raw(u8, Vec<u8>),
    // backend
    AuthOk,
    AuthCleartextPassword,
    AuthMd5Password([u8; 4]),
    AuthSasl(Vec<String>),
    AuthSaslContinue(Vec<u8>),
    AuthSaslFinal(Vec<u8>),
    ParameterStatus(String, String),
    BackendKeyData(u32, Vec<u8>),
    ReadyForQuery(TransactionStatus),
    ErrorResponse {
        severity: String,
        code: String,
        message: String,
        hint: Option<String>,
    },
    ErrorResponseDetail {
        severity: String,
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    NoticeResponse {
        severity: String,
        code: String,
        message: String,
    },
    CommandComplete(String),
    NegotiateProtocolVersion(u32, Vec<String>),
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    EmptyQueryResponse,
    RowDescriptionText(Vec<String>),
    DataRow(Vec<Option<Vec<u8>>>),
}

/// One strategy per variant of [`Msg`], so a `Vec` of them draws one message of every kind.
fn every_kind() -> Vec<BoxedStrategy<Msg>> {
    vec![
        text().prop_map(Msg::Query).boxed(),
        (text(), text(), vec(any::<u32>(), 0..6))
            .prop_map(|(name, sql, types)| Msg::Parse { name, sql, types })
            .boxed(),
        (text(), text(), vec(any::<u32>(), 0..6))
            .prop_map(|(name, sql, types)| Msg::ParseRawTypes { name, sql, types })
            .boxed(),
        (text(), text(), params())
            .prop_map(|(portal, statement, params)| Msg::Bind {
                portal,
                statement,
                params,
            })
            .boxed(),
        (text(), text(), params())
            .prop_map(|(portal, statement, params)| Msg::BindRawParams {
                portal,
                statement,
                params,
            })
            .boxed(),
        (kind(), text())
            .prop_map(|(k, n)| Msg::Describe(k, n))
            .boxed(),
        (text(), any::<i32>())
            .prop_map(|(p, n)| Msg::Execute(p, n))
            .boxed(),
        (kind(), text()).prop_map(|(k, n)| Msg::Close(k, n)).boxed(),
        Just(Msg::Sync).boxed(),
        Just(Msg::Flush).boxed(),
        Just(Msg::Terminate).boxed(),
        blob().prop_map(Msg::CopyData).boxed(),
        Just(Msg::CopyDone).boxed(),
        text().prop_map(Msg::CopyFail).boxed(),
        blob().prop_map(Msg::Password).boxed(),
        (text(), blob())
            .prop_map(|(m, d)| Msg::SaslInitialResponse(m, d))
            .boxed(),
        blob().prop_map(Msg::SaslResponse).boxed(),
        (any::<u8>(), blob())
            .prop_map(|(t, b)| Msg::Raw(t, b))
            .boxed(),
        Just(Msg::AuthOk).boxed(),
        Just(Msg::AuthCleartextPassword).boxed(),
        any::<[u8; 4]>().prop_map(Msg::AuthMd5Password).boxed(),
        vec(name(), 0..4).prop_map(Msg::AuthSasl).boxed(),
        blob().prop_map(Msg::AuthSaslContinue).boxed(),
        blob().prop_map(Msg::AuthSaslFinal).boxed(),
        (text(), text())
            .prop_map(|(n, v)| Msg::ParameterStatus(n, v))
            .boxed(),
        (any::<u32>(), vec(any::<u8>(), 4..=MAX_CANCEL_KEY_LEN))
            .prop_map(|(p, k)| Msg::BackendKeyData(p, k))
            .boxed(),
        status().prop_map(Msg::ReadyForQuery).boxed(),
        (text(), text(), text(), option::of(text()))
            .prop_map(|(severity, code, message, hint)| Msg::ErrorResponse {
                severity,
                code,
                message,
                hint,
            })
            .boxed(),
        (
            text(),
            text(),
            text(),
            option::of(text()),
            option::of(text()),
        )
            .prop_map(
                |(severity, code, message, detail, hint)| Msg::ErrorResponseDetail {
                    severity,
                    code,
                    message,
                    detail,
                    hint,
                },
            )
            .boxed(),
        (text(), text(), text())
            .prop_map(|(severity, code, message)| Msg::NoticeResponse {
                severity,
                code,
                message,
            })
            .boxed(),
        text().prop_map(Msg::CommandComplete).boxed(),
        (any::<u32>(), vec(text(), 0..4))
            .prop_map(|(m, u)| Msg::NegotiateProtocolVersion(m, u))
            .boxed(),
        Just(Msg::ParseComplete).boxed(),
        Just(Msg::BindComplete).boxed(),
        Just(Msg::CloseComplete).boxed(),
        Just(Msg::NoData).boxed(),
        Just(Msg::EmptyQueryResponse).boxed(),
        vec(text(), 0..5).prop_map(Msg::RowDescriptionText).boxed(),
        values().prop_map(Msg::DataRow).boxed(),
    ]
}

fn any_msg() -> impl Strategy<Value = Msg> {
    Union::new(every_kind())
}

// === expected encodings of the parts the views leave raw ===

fn param_types(types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_i16(i16::try_from(types.len()).unwrap());
    for t in types {
        b.put_u32(*t);
    }
    b
}

fn bind_rest(p: &Params) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_i16(i16::try_from(p.formats.len()).unwrap());
    for f in &p.formats {
        b.put_i16(*f);
    }
    b.put_i16(i16::try_from(p.values.len()).unwrap());
    for v in &p.values {
        match v {
            Some(v) => {
                b.put_i32(i32::try_from(v.len()).unwrap());
                b.put_slice(v);
            }
            None => b.put_i32(-1),
        }
    }
    b.put_i16(i16::try_from(p.results.len()).unwrap());
    for f in &p.results {
        b.put_i16(*f);
    }
    b
}

fn borrowed(values: &[Option<Vec<u8>>]) -> Vec<Option<&[u8]>> {
    values.iter().map(|v| v.as_deref()).collect()
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

/// Reads a NUL-terminated string off a body (test-side decoding of messages the views leave raw).
fn take_cstr(body: &mut &[u8]) -> String {
    let nul = body.iter().position(|&b| b == 0).unwrap();
    let s = String::from_utf8(body[..nul].to_vec()).unwrap();
    body.advance(nul + 1);
    s
}

fn error_fields<'a>(
    severity: &'a str,
    code: &'a str,
    message: &'a str,
    detail: Option<&'a str>,
    hint: Option<&'a str>,
) -> ErrorFields<'a> {
    let mut fields = vec![
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ];
    fields.extend(detail.map(|d| (b'D', d)));
    fields.extend(hint.map(|h| (b'H', h)));
    ErrorFields { fields }
}

impl Msg {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            Msg::Query(sql) => encode::query(buf, sql),
            Msg::Parse { name, sql, types } => encode::parse(buf, name, sql, types),
            Msg::ParseRawTypes { name, sql, types } => {
                encode::parse_raw_types(buf, name, sql, &param_types(types));
            }
            Msg::Bind {
                portal,
                statement,
                params: p,
            } => encode::bind(
                buf,
                portal,
                statement,
                &p.formats,
                &borrowed(&p.values),
                &p.results,
            ),
            Msg::BindRawParams {
                portal,
                statement,
                params,
            } => {
                encode::bind_raw_params(buf, portal, statement, &bind_rest(params));
            }
            Msg::Describe(k, n) => encode::describe(buf, *k, n),
            Msg::Execute(p, n) => encode::execute(buf, p, *n),
            Msg::Close(k, n) => encode::close(buf, *k, n),
            Msg::Sync => encode::sync(buf),
            Msg::Flush => encode::flush(buf),
            Msg::Terminate => encode::terminate(buf),
            Msg::CopyData(d) => encode::copy_data(buf, d),
            Msg::CopyDone => encode::copy_done(buf),
            Msg::CopyFail(r) => encode::copy_fail(buf, r),
            Msg::Password(p) => encode::password(buf, p),
            Msg::SaslInitialResponse(m, d) => encode::sasl_initial_response(buf, m, d),
            Msg::SaslResponse(d) => encode::sasl_response(buf, d),
            Msg::Raw(t, b) => encode::raw(buf, *t, b),
            Msg::AuthOk => encode::auth_ok(buf),
            Msg::AuthCleartextPassword => encode::auth_cleartext_password(buf),
            Msg::AuthMd5Password(salt) => encode::auth_md5_password(buf, *salt),
            Msg::AuthSasl(m) => {
                encode::auth_sasl(buf, &m.iter().map(String::as_str).collect::<Vec<_>>());
            }
            Msg::AuthSaslContinue(d) => encode::auth_sasl_continue(buf, d),
            Msg::AuthSaslFinal(d) => encode::auth_sasl_final(buf, d),
            Msg::ParameterStatus(n, v) => encode::parameter_status(buf, n, v),
            Msg::BackendKeyData(p, k) => encode::backend_key_data(buf, *p, k),
            Msg::ReadyForQuery(s) => encode::ready_for_query(buf, *s),
            Msg::ErrorResponse {
                severity,
                code,
                message,
                hint,
            } => {
                encode::error_response(buf, severity, code, message, hint.as_deref());
            }
            Msg::ErrorResponseDetail {
                severity,
                code,
                message,
                detail,
                hint,
            } => {
                encode::error_response_detail(
                    buf,
                    severity,
                    code,
                    message,
                    detail.as_deref(),
                    hint.as_deref(),
                );
            }
            Msg::NoticeResponse {
                severity,
                code,
                message,
            } => {
                encode::notice_response(buf, severity, code, message);
            }
            Msg::CommandComplete(t) => encode::command_complete(buf, t),
            Msg::NegotiateProtocolVersion(minor, unrecognized) => {
                let unrecognized: Vec<&str> = unrecognized.iter().map(String::as_str).collect();
                encode::negotiate_protocol_version(buf, *minor, &unrecognized);
            }
            Msg::ParseComplete => encode::parse_complete(buf),
            Msg::BindComplete => encode::bind_complete(buf),
            Msg::CloseComplete => encode::close_complete(buf),
            Msg::NoData => encode::no_data(buf),
            Msg::EmptyQueryResponse => encode::empty_query_response(buf),
            Msg::RowDescriptionText(cols) => {
                encode::row_description_text(
                    buf,
                    &cols.iter().map(String::as_str).collect::<Vec<_>>(),
                );
            }
            Msg::DataRow(v) => encode::data_row(buf, &borrowed(v)),
        }
    }

    fn encoded(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }

    /// Asserts that the typed view of `frame` gives back this message's inputs.
    fn check(&self, frame: &Frame) -> Result<(), TestCaseError> {
        use FrontendMessage as F;
        let front = || FrontendMessage::parse(frame);
        let back = || BackendMessage::parse(frame);
        match self {
            Msg::Query(sql) => prop_assert_eq!(front()?, F::Query { sql }),
            Msg::Parse { name, sql, types } | Msg::ParseRawTypes { name, sql, types } => {
                prop_assert_eq!(
                    front()?,
                    F::Parse {
                        name,
                        sql,
                        param_types: &param_types(types)
                    }
                );
            }
            Msg::Bind {
                portal,
                statement,
                params: p,
            }
            | Msg::BindRawParams {
                portal,
                statement,
                params: p,
            } => {
                let encoded = bind_rest(p);
                prop_assert_eq!(
                    front()?,
                    F::Bind {
                        portal,
                        statement,
                        rest: &encoded
                    }
                );
                let F::Bind { rest, .. } = front()? else {
                    unreachable!()
                };
                let expected = BindParams {
                    param_formats: p.formats.clone(),
                    values: borrowed(&p.values),
                    result_formats: p.results.clone(),
                };
                prop_assert_eq!(BindParams::parse(rest)?, expected);
            }
            Msg::Describe(kind, name) => {
                prop_assert_eq!(front()?, F::Describe { kind: *kind, name });
            }
            Msg::Execute(portal, max_rows) => {
                prop_assert_eq!(
                    front()?,
                    F::Execute {
                        portal,
                        max_rows: *max_rows
                    }
                );
            }
            Msg::Close(kind, name) => prop_assert_eq!(front()?, F::Close { kind: *kind, name }),
            Msg::Sync => prop_assert_eq!(front()?, F::Sync),
            Msg::Flush => prop_assert_eq!(front()?, F::Flush),
            Msg::Terminate => prop_assert_eq!(front()?, F::Terminate),
            Msg::CopyData(d) => prop_assert_eq!(front()?, F::CopyData(d)),
            Msg::CopyDone => prop_assert_eq!(front()?, F::CopyDone),
            Msg::CopyFail(message) => prop_assert_eq!(front()?, F::CopyFail { message }),
            Msg::Password(p) => {
                let mut body = p.clone();
                body.push(0);
                prop_assert_eq!(front()?, F::Password(&body));
            }
            Msg::SaslInitialResponse(mechanism, data) => {
                let mut body = Vec::new();
                cstr(&mut body, mechanism);
                body.put_i32(i32::try_from(data.len()).unwrap());
                body.put_slice(data);
                prop_assert_eq!(front()?, F::Password(&body));
                prop_assert_eq!(
                    parse_sasl_initial_response(&body)?,
                    (mechanism.as_str(), data.as_slice())
                );
            }
            Msg::SaslResponse(d) => prop_assert_eq!(front()?, F::Password(d)),
            Msg::Raw(tag, body) => {
                prop_assert_eq!(frame.tag, *tag);
                prop_assert_eq!(frame.body(), &body[..]);
                // Whatever the tag, the views answer without panicking.
                let _ = front();
                let _ = back();
            }
            Msg::AuthOk => {
                prop_assert_eq!(back()?, BackendMessage::Authentication(AuthRequest::Ok))
            }
            Msg::AuthCleartextPassword => prop_assert_eq!(
                back()?,
                BackendMessage::Authentication(AuthRequest::CleartextPassword)
            ),
            Msg::AuthMd5Password(salt) => prop_assert_eq!(
                back()?,
                BackendMessage::Authentication(AuthRequest::Md5Password { salt: *salt })
            ),
            Msg::AuthSasl(m) => prop_assert_eq!(
                back()?,
                BackendMessage::Authentication(AuthRequest::Sasl {
                    mechanisms: m.iter().map(String::as_str).collect()
                })
            ),
            Msg::AuthSaslContinue(d) => prop_assert_eq!(
                back()?,
                BackendMessage::Authentication(AuthRequest::SaslContinue(d))
            ),
            Msg::AuthSaslFinal(d) => {
                prop_assert_eq!(
                    back()?,
                    BackendMessage::Authentication(AuthRequest::SaslFinal(d))
                );
            }
            Msg::ParameterStatus(name, value) => {
                prop_assert_eq!(back()?, BackendMessage::ParameterStatus { name, value });
            }
            Msg::BackendKeyData(process_id, key) => prop_assert_eq!(
                back()?,
                BackendMessage::BackendKeyData {
                    process_id: *process_id,
                    secret_key: key
                }
            ),
            Msg::ReadyForQuery(s) => prop_assert_eq!(back()?, BackendMessage::ReadyForQuery(*s)),
            Msg::ErrorResponse {
                severity,
                code,
                message,
                hint,
            } => {
                let fields = error_fields(severity, code, message, None, hint.as_deref());
                prop_assert_eq!(back()?, BackendMessage::ErrorResponse(fields));
            }
            Msg::ErrorResponseDetail {
                severity,
                code,
                message,
                detail,
                hint,
            } => {
                let fields =
                    error_fields(severity, code, message, detail.as_deref(), hint.as_deref());
                let BackendMessage::ErrorResponse(got) = back()? else {
                    return Err(TestCaseError::fail("not an ErrorResponse"));
                };
                prop_assert_eq!(got.code(), Some(code.as_str()));
                prop_assert_eq!(got.message(), Some(message.as_str()));
                prop_assert_eq!(got.severity(), Some(severity.as_str()));
                prop_assert_eq!(got, fields);
            }
            Msg::NoticeResponse {
                severity,
                code,
                message,
            } => {
                let fields = error_fields(severity, code, message, None, None);
                prop_assert_eq!(back()?, BackendMessage::NoticeResponse(fields));
            }
            Msg::CommandComplete(tag) => {
                prop_assert_eq!(back()?, BackendMessage::CommandComplete { tag });
            }
            Msg::NegotiateProtocolVersion(newest_minor, unrecognized) => prop_assert_eq!(
                back()?,
                BackendMessage::NegotiateProtocolVersion {
                    newest_minor: *newest_minor,
                    unrecognized: unrecognized.iter().map(String::as_str).collect(),
                }
            ),
            Msg::ParseComplete => prop_assert_eq!(back()?, BackendMessage::Other(b'1')),
            Msg::BindComplete => prop_assert_eq!(back()?, BackendMessage::Other(b'2')),
            Msg::CloseComplete => prop_assert_eq!(back()?, BackendMessage::Other(b'3')),
            Msg::NoData => prop_assert_eq!(back()?, BackendMessage::Other(b'n')),
            Msg::EmptyQueryResponse => prop_assert_eq!(back()?, BackendMessage::Other(b'I')),
            Msg::RowDescriptionText(cols) => {
                prop_assert_eq!(back()?, BackendMessage::Other(b'T'));
                let mut body = frame.body();
                prop_assert_eq!(usize::try_from(body.get_i16()).unwrap(), cols.len());
                for col in cols {
                    prop_assert_eq!(&take_cstr(&mut body), col);
                    prop_assert_eq!(body.get_u32(), 0); // table oid
                    prop_assert_eq!(body.get_i16(), 0); // column number
                    prop_assert_eq!(body.get_u32(), 25); // text
                    prop_assert_eq!(body.get_i16(), -1);
                    prop_assert_eq!(body.get_i32(), -1);
                    prop_assert_eq!(body.get_i16(), 0); // text format
                }
                prop_assert!(body.is_empty());
            }
            Msg::DataRow(values) => {
                prop_assert_eq!(back()?, BackendMessage::Other(b'D'));
                let mut body = frame.body();
                prop_assert_eq!(usize::try_from(body.get_i16()).unwrap(), values.len());
                for v in values {
                    let len = body.get_i32();
                    match v {
                        None => prop_assert_eq!(len, -1),
                        Some(v) => {
                            prop_assert_eq!(usize::try_from(len).unwrap(), v.len());
                            prop_assert_eq!(&body[..v.len()], &v[..]);
                            body.advance(v.len());
                        }
                    }
                }
                prop_assert!(body.is_empty());
            }
        }
        Ok(())
    }
}

// === startup-phase packets ===

#[derive(Debug, Clone)]
enum StartupMsg {
    Startup(Vec<(String, String)>),
    Ssl,
    Cancel(u32, Vec<u8>),
}

fn any_startup() -> impl Strategy<Value = StartupMsg> {
    prop_oneof![
        vec((name(), text()), 0..5).prop_map(StartupMsg::Startup),
        Just(StartupMsg::Ssl),
        (any::<u32>(), vec(any::<u8>(), 4..=MAX_CANCEL_KEY_LEN))
            .prop_map(|(p, k)| StartupMsg::Cancel(p, k)),
    ]
}

impl StartupMsg {
    fn encoded(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match self {
            StartupMsg::Startup(params) => {
                let params: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                encode::startup(&mut buf, &params);
            }
            StartupMsg::Ssl => encode::ssl_request(&mut buf),
            StartupMsg::Cancel(p, k) => encode::cancel_request(&mut buf, *p, k),
        }
        buf.freeze()
    }

    fn expected(&self) -> StartupPacket {
        match self {
            StartupMsg::Startup(params) => StartupPacket::Startup {
                minor: 0,
                params: params.clone(),
            },
            StartupMsg::Ssl => StartupPacket::SslRequest,
            StartupMsg::Cancel(process_id, key) => StartupPacket::Cancel {
                process_id: *process_id,
                secret_key: Bytes::from(key.clone()),
            },
        }
    }
}

/// A startup-phase packet with an arbitrary version/request code and body.
fn startup_packet(code: u32, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_i32(i32::try_from(8 + body.len()).unwrap());
    buf.put_u32(code);
    buf.put_slice(body);
    buf
}

// === incremental decoding ===

/// Decodes everything whole in `buf`, asserting that `Ok(None)` leaves the buffer untouched and
/// that nothing errors.
fn drain<T>(
    buf: &mut BytesMut,
    decode: &impl Fn(&mut BytesMut) -> Result<Option<T>, WireError>,
    out: &mut Vec<T>,
) -> Result<(), TestCaseError> {
    loop {
        let before = buf.clone();
        match decode(buf) {
            Ok(Some(item)) => out.push(item),
            Ok(None) => {
                prop_assert_eq!(&before[..], &buf[..], "Ok(None) consumed bytes");
                return Ok(());
            }
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "decoder error on valid input: {e}"
                )));
            }
        }
    }
}

/// Feeds `stream` (the concatenation of messages ending at `ends`) to `decode` in the given
/// chunks, asserting after each chunk that exactly the whole messages so far came out.
fn feed_chunks<T: PartialEq + Debug>(
    stream: &[u8],
    ends: &[usize],
    expected: &[T],
    chunks: impl IntoIterator<Item = usize>,
    decode: &impl Fn(&mut BytesMut) -> Result<Option<T>, WireError>,
) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    for chunk in chunks {
        let next = (fed + chunk).min(stream.len());
        buf.extend_from_slice(&stream[fed..next]);
        fed = next;
        drain(&mut buf, decode, &mut out)?;
        let whole = ends.iter().take_while(|&&end| end <= fed).count();
        prop_assert_eq!(out.len(), whole, "after {} bytes", fed);
        let consumed = if whole == 0 { 0 } else { ends[whole - 1] };
        prop_assert_eq!(buf.len(), fed - consumed);
        if fed == stream.len() {
            break;
        }
    }
    prop_assert_eq!(fed, stream.len());
    prop_assert_eq!(&out[..], expected);
    prop_assert!(buf.is_empty());
    Ok(())
}

/// Splits `stream` in two at every byte boundary, then feeds it one byte at a time.
fn split_everywhere<T: PartialEq + Debug>(
    stream: &[u8],
    ends: &[usize],
    expected: &[T],
    decode: &impl Fn(&mut BytesMut) -> Result<Option<T>, WireError>,
) -> Result<(), TestCaseError> {
    for at in 0..=stream.len() {
        feed_chunks(stream, ends, expected, [at, stream.len() - at], decode)?;
    }
    feed_chunks(
        stream,
        ends,
        expected,
        std::iter::repeat_n(1, stream.len()),
        decode,
    )
}

fn concat(parts: &[Bytes]) -> (Vec<u8>, Vec<usize>) {
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for p in parts {
        stream.extend_from_slice(p);
        ends.push(stream.len());
    }
    (stream, ends)
}

fn frames(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    decode_frame(buf, MAX)
}

// === no panics ===

const ALL_TAGS: &[u8] = b"BCdcfDEHFPpQSXRK23WGHIVvnNAts1sZT\0\xff";

/// Runs every decoder and parser over `bytes`; only panics fail.
fn poke(bytes: &[u8]) {
    let _ = decode_startup(&mut BytesMut::from(bytes));
    for max in [0, 5, 64, MAX] {
        let mut buf = BytesMut::from(bytes);
        while let Ok(Some(frame)) = decode_frame(&mut buf, max) {
            assert!(frame.wire_len() <= max + 1);
            parse_all(&frame);
        }
    }
    let _ = BindParams::parse(bytes);
    for &tag in ALL_TAGS {
        let mut buf = BytesMut::new();
        encode::raw(&mut buf, tag, bytes);
        let frame = decode_frame(&mut buf, MAX).unwrap().unwrap();
        parse_all(&frame);
    }
    for code in [
        PROTOCOL_3_0,
        PROTOCOL_3_0 | 2,
        SSL_REQUEST_CODE,
        CANCEL_REQUEST_CODE,
    ] {
        let mut buf = startup_packet(code, bytes);
        let _ = decode_startup(&mut buf);
    }
}

fn parse_all(frame: &Frame) {
    if let Ok(FrontendMessage::Bind { rest, .. }) = FrontendMessage::parse(frame) {
        BindParams::parse(rest).unwrap(); // parse already validated it
    }
    if let Ok(BackendMessage::ErrorResponse(e) | BackendMessage::NoticeResponse(e)) =
        BackendMessage::parse(frame)
    {
        let _ = (e.code(), e.message(), e.severity());
    }
    let _ = BindParams::parse(frame.body());
    let _ = parse_sasl_initial_response(frame.body());
}

// === properties ===

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// One message of every kind per case: encode, frame, parse, compare with the inputs.
    #[test]
    fn every_encoder_round_trips(msgs in every_kind()) {
        for msg in &msgs {
            let encoded = msg.encoded();
            let mut buf = BytesMut::from(&encoded[..]);
            let frame = decode_frame(&mut buf, MAX)?.expect("a whole message");
            prop_assert!(buf.is_empty(), "{msg:?} left {} bytes", buf.len());
            prop_assert_eq!(frame.raw(), &encoded);
            prop_assert_eq!(frame.wire_len(), encoded.len());
            prop_assert_eq!(
                usize::try_from(i32::from_be_bytes(encoded[1..5].try_into().unwrap())).unwrap(),
                encoded.len() - 1
            );
            prop_assert_eq!(&Frame::from_encoded(encoded.clone()), &frame);
            msg.check(&frame)?;
            prop_assert_eq!(frame.into_raw(), encoded);
        }
    }

    /// Several messages, split in two at every byte boundary and fed one byte at a time.
    #[test]
    fn frames_split_at_every_boundary(msgs in vec(any_msg(), 2..6)) {
        let parts: Vec<Bytes> = msgs.iter().map(Msg::encoded).collect();
        let (stream, ends) = concat(&parts);
        let expected: Vec<Frame> = parts.iter().cloned().map(Frame::from_encoded).collect();
        split_everywhere(&stream, &ends, &expected, &frames)?;
        for (msg, frame) in msgs.iter().zip(&expected) {
            msg.check(frame)?;
        }
    }

    /// Several messages fed in arbitrary chunks.
    #[test]
    fn frames_in_arbitrary_chunks(
        msgs in vec(any_msg(), 1..8),
        chunks in vec(1usize..24, 1..32),
    ) {
        let parts: Vec<Bytes> = msgs.iter().map(Msg::encoded).collect();
        let (stream, ends) = concat(&parts);
        let expected: Vec<Frame> = parts.iter().cloned().map(Frame::from_encoded).collect();
        // Cycle the chunk sizes until the whole stream has been fed.
        let chunks = chunks.into_iter().cycle().take(stream.len() + 1);
        feed_chunks(&stream, &ends, &expected, chunks, &frames)?;
    }

    #[test]
    fn startup_packets_round_trip(msg in any_startup()) {
        let encoded = msg.encoded();
        let mut buf = BytesMut::from(&encoded[..]);
        prop_assert_eq!(decode_startup(&mut buf)?, Some(msg.expected()));
        prop_assert!(buf.is_empty());
        if let StartupPacket::Startup { params, .. } = msg.expected() {
            for (i, (k, v)) in params.iter().enumerate() {
                // `param` finds the first value sent under a name.
                let first = params.iter().position(|(n, _)| n == k);
                if first == Some(i) {
                    prop_assert_eq!(StartupPacket::param(&params, k), Some(v.as_str()));
                }
            }
            prop_assert_eq!(StartupPacket::param(&params, ""), None);
        }
    }

    #[test]
    fn startup_packets_split_at_every_boundary(msgs in vec(any_startup(), 1..4)) {
        let parts: Vec<Bytes> = msgs.iter().map(StartupMsg::encoded).collect();
        let (stream, ends) = concat(&parts);
        let expected: Vec<StartupPacket> = msgs.iter().map(StartupMsg::expected).collect();
        split_everywhere(&stream, &ends, &expected, &decode_startup)?;
    }

    /// Any minor version of protocol 3 is taken and reported.
    #[test]
    fn startup_minor_versions(minor in any::<u16>(), params in vec((name(), text()), 0..3)) {
        let mut body = Vec::new();
        for (k, v) in &params {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut buf = startup_packet(PROTOCOL_3_0 | u32::from(minor), &body);
        prop_assert_eq!(decode_startup(&mut buf)?, Some(StartupPacket::Startup { minor, params }));
    }

    /// A major version other than 3 is refused (except the codes of the special requests).
    #[test]
    fn other_major_versions_refused(major in any::<u16>(), minor in any::<u16>()) {
        let code = (u32::from(major) << 16) | u32::from(minor);
        prop_assume!(major != 3);
        prop_assume!(![SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE].contains(&code));
        let mut buf = startup_packet(code, b"user\0u\0\0");
        prop_assert_eq!(decode_startup(&mut buf), Err(WireError::UnsupportedVersion { major, minor }));
    }

    /// A declared length above the limit is refused from the 5-byte header alone.
    #[test]
    fn too_long_refused_before_body(tag in any::<u8>(), max in 4usize..100_000, over in 1usize..1_000_000) {
        let len = max + over;
        let mut buf = BytesMut::new();
        buf.put_u8(tag);
        buf.put_i32(i32::try_from(len).unwrap());
        prop_assert_eq!(decode_frame(&mut buf, max), Err(WireError::TooLong { len, max }));
        prop_assert_eq!(decode_frame(&mut buf, usize::MAX >> 1).map(|f| f.is_some()), Ok(false));
    }

    /// A length word below 4 (the length counts itself) is refused, negatives included; a
    /// startup-phase packet needs at least 8 (length and code).
    #[test]
    fn short_or_negative_length_refused(
        tag in any::<u8>(),
        declared in prop_oneof![i32::MIN..4, Just(-1), 0..4],
        startup_declared in prop_oneof![i32::MIN..8, 0..8],
    ) {
        let mut buf = BytesMut::new();
        buf.put_u8(tag);
        buf.put_i32(declared);
        prop_assert_eq!(decode_frame(&mut buf, MAX), Err(WireError::BadLength(declared.into())));
        let mut buf = BytesMut::new();
        buf.put_i32(startup_declared);
        prop_assert_eq!(
            decode_startup(&mut buf),
            Err(WireError::BadLength(startup_declared.into()))
        );
    }

    /// Startup packets longer than Postgres's 10 000-byte limit are refused from the length word.
    #[test]
    fn startup_limit_from_length_word(len in (MAX_STARTUP_PACKET_LEN + 1)..=(i32::MAX as usize)) {
        let mut buf = BytesMut::new();
        buf.put_i32(i32::try_from(len).unwrap());
        prop_assert_eq!(decode_startup(&mut buf), Err(WireError::TooLong { len, max: MAX_STARTUP_PACKET_LEN }));
    }

    /// Fewer than a header's bytes are never an error, whatever they are.
    #[test]
    fn partial_headers_wait(bytes in vec(any::<u8>(), 0..5)) {
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode_frame(&mut buf, MAX), Ok(None));
        prop_assert_eq!(&buf[..], &bytes[..]);
        let mut buf = BytesMut::from(&bytes[..bytes.len().min(3)]);
        prop_assert_eq!(decode_startup(&mut buf), Ok(None));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random bytes, as a stream, as a startup packet body and as the body of every message type.
    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..200)) {
        poke(&bytes);
    }

    /// Valid messages with one byte changed or the body cut short never panic a parser.
    #[test]
    fn mutated_messages_never_panic(
        msg in any_msg(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let encoded = msg.encoded();
        let mut mutated = encoded.to_vec();
        let i = at.index(mutated.len());
        mutated[i] = byte;
        poke(&mutated);
        // The same body, cut short, under its own (consistent) header.
        let body = &encoded[5..];
        let mut buf = BytesMut::new();
        encode::raw(&mut buf, encoded[0], &body[..cut.index(body.len() + 1)]);
        let frame = decode_frame(&mut buf, MAX)?.expect("whole");
        parse_all(&frame);
        poke(&body[..cut.index(body.len() + 1)]);
    }
}

// === exact bounds ===

#[test]
fn length_exactly_at_max_is_taken() {
    // An empty body at the smallest limit: the header is the whole message.
    let mut buf = BytesMut::new();
    encode::sync(&mut buf);
    assert_eq!(decode_frame(&mut buf, 4).unwrap().unwrap().tag, b'S');
    for max in [5, 100, 4096] {
        let mut buf = BytesMut::new();
        encode::raw(&mut buf, b'd', &vec![7; max - 4]);
        let raw = buf.clone().freeze();
        // Header only: waiting, and room reserved for the rest.
        let mut partial = BytesMut::from(&raw[..5]);
        assert_eq!(decode_frame(&mut partial, max), Ok(None));
        assert!(partial.capacity() > max);
        assert_eq!(decode_frame(&mut buf, max).unwrap().unwrap().raw(), &raw);
        let mut buf = BytesMut::from(&raw[..]);
        assert_eq!(
            decode_frame(&mut buf, max - 1),
            Err(WireError::TooLong {
                len: max,
                max: max - 1
            })
        );
    }
}

#[test]
fn startup_limit_is_10_000_bytes() {
    assert_eq!(MAX_STARTUP_PACKET_LEN, 10_000);
    // user\0 <value>\0 \0 after the 8-byte head: pad the value to land on the limit exactly.
    let value = "x".repeat(MAX_STARTUP_PACKET_LEN - 8 - 5 - 1 - 1);
    let mut buf = BytesMut::new();
    encode::startup(&mut buf, &[("user", &value)]);
    assert_eq!(buf.len(), MAX_STARTUP_PACKET_LEN);
    let packet = decode_startup(&mut buf).unwrap().unwrap();
    assert_eq!(
        packet,
        StartupPacket::Startup {
            minor: 0,
            params: vec![("user".into(), value.clone())]
        }
    );

    let mut buf = BytesMut::new();
    encode::startup(&mut buf, &[("user", &format!("{value}y"))]);
    assert_eq!(buf.len(), MAX_STARTUP_PACKET_LEN + 1);
    // Refused from the length word, before the rest arrives.
    let mut head = BytesMut::from(&buf[..4]);
    let too_long = Err(WireError::TooLong {
        len: MAX_STARTUP_PACKET_LEN + 1,
        max: MAX_STARTUP_PACKET_LEN,
    });
    assert_eq!(decode_startup(&mut head), too_long);
    assert_eq!(decode_startup(&mut buf), too_long);
}

#[test]
fn cancel_key_lengths() {
    for key_len in 0..=MAX_CANCEL_KEY_LEN + 8 {
        let key: Vec<u8> = (0..key_len).map(|i| i as u8).collect();
        let mut buf = BytesMut::new();
        encode::cancel_request(&mut buf, 42, &key);
        let got = decode_startup(&mut buf);
        if (4..=MAX_CANCEL_KEY_LEN).contains(&key_len) {
            assert_eq!(
                got,
                Ok(Some(StartupPacket::Cancel {
                    process_id: 42,
                    secret_key: Bytes::from(key.clone())
                }))
            );
        } else {
            assert_eq!(
                got,
                Err(WireError::BadCancelKey(key_len)),
                "key of {key_len} bytes"
            );
        }

        let mut buf = BytesMut::new();
        encode::backend_key_data(&mut buf, 42, &key);
        let frame = decode_frame(&mut buf, MAX).unwrap().unwrap();
        let got = BackendMessage::parse(&frame);
        if (4..=MAX_CANCEL_KEY_LEN).contains(&key_len) {
            assert_eq!(
                got,
                Ok(BackendMessage::BackendKeyData {
                    process_id: 42,
                    secret_key: &key
                })
            );
        } else {
            assert_eq!(
                got,
                Err(WireError::BadCancelKey(key_len)),
                "key of {key_len} bytes"
            );
        }
    }
    // A cancel request too short to hold the process id is malformed, not a panic.
    for body_len in 0..4 {
        let mut buf = startup_packet(CANCEL_REQUEST_CODE, &vec![0; body_len]);
        assert!(matches!(
            decode_startup(&mut buf),
            Err(WireError::Malformed { .. })
        ));
    }
}

#[test]
fn special_requests_are_exact() {
    let mut buf = startup_packet(GSSENC_REQUEST_CODE, b"");
    assert_eq!(
        decode_startup(&mut buf),
        Ok(Some(StartupPacket::GssEncRequest))
    );
    for code in [SSL_REQUEST_CODE, GSSENC_REQUEST_CODE] {
        let mut buf = startup_packet(code, b"\0");
        assert!(matches!(
            decode_startup(&mut buf),
            Err(WireError::Malformed { .. })
        ));
    }
    // A startup packet must end its parameter list.
    let mut buf = startup_packet(PROTOCOL_3_0, b"user\0u\0");
    assert!(matches!(
        decode_startup(&mut buf),
        Err(WireError::Malformed { .. })
    ));
    let mut buf = startup_packet(PROTOCOL_3_0, b"user\0u\0\0extra");
    assert!(matches!(
        decode_startup(&mut buf),
        Err(WireError::Malformed { .. })
    ));
}

#[test]
fn ssl_response_is_one_byte() {
    let mut buf = BytesMut::new();
    encode::ssl_response(&mut buf, true);
    encode::ssl_response(&mut buf, false);
    assert_eq!(&buf[..], b"SN");
}
