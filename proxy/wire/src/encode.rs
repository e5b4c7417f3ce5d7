//! Encoders: each appends one whole message to the caller's buffer.

use bytes::{BufMut, BytesMut};

use crate::{CANCEL_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE, TargetKind, TransactionStatus};

/// Writes a message with a type byte, back-patching its length after `body` has written.
fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    patch_len(buf, at);
}

/// A startup-phase packet has no type byte.
fn untagged(buf: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    patch_len(buf, at);
}

fn patch_len(buf: &mut BytesMut, at: usize) {
    let len = i32::try_from(buf.len() - at).expect("message longer than 2 GiB");
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// Any message from its type byte and body.
pub fn raw(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    message(buf, tag, |b| b.put_slice(body));
}

// === frontend ===

pub fn startup(buf: &mut BytesMut, params: &[(&str, &str)]) {
    untagged(buf, |b| {
        b.put_u32(PROTOCOL_3_0);
        for (k, v) in params {
            cstr(b, k);
            cstr(b, v);
        }
        b.put_u8(0);
    });
}

pub fn ssl_request(buf: &mut BytesMut) {
    untagged(buf, |b| b.put_u32(SSL_REQUEST_CODE));
}

pub fn cancel_request(buf: &mut BytesMut, process_id: u32, secret_key: &[u8]) {
    untagged(buf, |b| {
        b.put_u32(CANCEL_REQUEST_CODE);
        b.put_u32(process_id);
        b.put_slice(secret_key);
    });
}

pub fn password(buf: &mut BytesMut, password: &[u8]) {
    message(buf, b'p', |b| {
        b.put_slice(password);
        b.put_u8(0);
    });
}

pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    message(buf, b'p', |b| {
        cstr(b, mechanism);
        b.put_i32(i32::try_from(data.len()).expect("SASL data fits"));
        b.put_slice(data);
    });
}

pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'p', |b| b.put_slice(data));
}

pub fn query(buf: &mut BytesMut, sql: &str) {
    message(buf, b'Q', |b| cstr(b, sql));
}

pub fn parse(buf: &mut BytesMut, name: &str, sql: &str, param_types: &[u32]) {
    message(buf, b'P', |b| {
        cstr(b, name);
        cstr(b, sql);
        b.put_i16(i16::try_from(param_types.len()).expect("parameter count fits"));
        for oid in param_types {
            b.put_u32(*oid);
        }
    });
}

/// A Parse whose parameter types are already encoded (count and OIDs, as in a client's Parse).
pub fn parse_raw_types(buf: &mut BytesMut, name: &str, sql: &str, param_types: &[u8]) {
    message(buf, b'P', |b| {
        cstr(b, name);
        cstr(b, sql);
        b.put_slice(param_types);
    });
}

pub fn bind(
    buf: &mut BytesMut,
    portal: &str,
    statement: &str,
    param_formats: &[i16],
    values: &[Option<&[u8]>],
    result_formats: &[i16],
) {
    message(buf, b'B', |b| {
        cstr(b, portal);
        cstr(b, statement);
        put_formats(b, param_formats);
        b.put_i16(i16::try_from(values.len()).expect("parameter count fits"));
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(i32::try_from(v.len()).expect("value fits"));
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
        put_formats(b, result_formats);
    });
}

/// A Bind whose parameter part is already encoded (as in a client's Bind), with new names.
pub fn bind_raw_params(buf: &mut BytesMut, portal: &str, statement: &str, rest: &[u8]) {
    message(buf, b'B', |b| {
        cstr(b, portal);
        cstr(b, statement);
        b.put_slice(rest);
    });
}

fn put_formats(b: &mut BytesMut, formats: &[i16]) {
    b.put_i16(i16::try_from(formats.len()).expect("format count fits"));
    for f in formats {
        b.put_i16(*f);
    }
}

pub fn describe(buf: &mut BytesMut, kind: TargetKind, name: &str) {
    message(buf, b'D', |b| {
        b.put_u8(kind.as_byte());
        cstr(b, name);
    });
}

pub fn execute(buf: &mut BytesMut, portal: &str, max_rows: i32) {
    message(buf, b'E', |b| {
        cstr(b, portal);
        b.put_i32(max_rows);
    });
}

pub fn close(buf: &mut BytesMut, kind: TargetKind, name: &str) {
    message(buf, b'C', |b| {
        b.put_u8(kind.as_byte());
        cstr(b, name);
    });
}

pub fn sync(buf: &mut BytesMut) {
    message(buf, b'S', |_| {});
}

pub fn flush(buf: &mut BytesMut) {
    message(buf, b'H', |_| {});
}

pub fn terminate(buf: &mut BytesMut) {
    message(buf, b'X', |_| {});
}

pub fn copy_data(buf: &mut BytesMut, data: &[u8]) {
    raw(buf, b'd', data);
}

pub fn copy_done(buf: &mut BytesMut) {
    message(buf, b'c', |_| {});
}

pub fn copy_fail(buf: &mut BytesMut, reason: &str) {
    message(buf, b'f', |b| cstr(b, reason));
}

// === backend ===

pub fn auth_ok(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(0));
}

pub fn auth_cleartext_password(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(3));
}

pub fn auth_md5_password(buf: &mut BytesMut, salt: [u8; 4]) {
    message(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    message(buf, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            cstr(b, m);
        }
        b.put_u8(0);
    });
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, b'S', |b| {
        cstr(b, name);
        cstr(b, value);
    });
}

pub fn backend_key_data(buf: &mut BytesMut, process_id: u32, secret_key: &[u8]) {
    message(buf, b'K', |b| {
        b.put_u32(process_id);
        b.put_slice(secret_key);
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: TransactionStatus) {
    message(buf, b'Z', |b| b.put_u8(status.as_byte()));
}

/// An ErrorResponse with severity, SQLSTATE, message and optional hint.
pub fn error_response(
    buf: &mut BytesMut,
    severity: &str,
    code: &str,
    msg: &str,
    hint: Option<&str>,
) {
    notice_like(buf, b'E', severity, code, msg, None, hint);
}

/// An ErrorResponse with a DETAIL field too.
pub fn error_response_detail(
    buf: &mut BytesMut,
    severity: &str,
    code: &str,
    msg: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    notice_like(buf, b'E', severity, code, msg, detail, hint);
}

pub fn notice_response(buf: &mut BytesMut, severity: &str, code: &str, msg: &str) {
    notice_like(buf, b'N', severity, code, msg, None, None);
}

fn notice_like(
    buf: &mut BytesMut,
    tag: u8,
    severity: &str,
    code: &str,
    msg: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    message(buf, tag, |b| {
        for (field, value) in [
            (b'S', Some(severity)),
            (b'V', Some(severity)),
            (b'C', Some(code)),
        ]
        .into_iter()
        .chain([(b'M', Some(msg)), (b'D', detail), (b'H', hint)])
        {
            if let Some(value) = value {
                b.put_u8(field);
                cstr(b, value);
            }
        }
        b.put_u8(0);
    });
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    message(buf, b'C', |b| cstr(b, tag));
}

pub fn parse_complete(buf: &mut BytesMut) {
    message(buf, b'1', |_| {});
}

pub fn bind_complete(buf: &mut BytesMut) {
    message(buf, b'2', |_| {});
}

pub fn close_complete(buf: &mut BytesMut) {
    message(buf, b'3', |_| {});
}

pub fn no_data(buf: &mut BytesMut) {
    message(buf, b'n', |_| {});
}

pub fn empty_query_response(buf: &mut BytesMut) {
    message(buf, b'I', |_| {});
}

/// A RowDescription of text columns with no table origin (what a `SELECT` of literals gets).
pub fn row_description_text(buf: &mut BytesMut, columns: &[&str]) {
    let columns: Vec<(&str, i16)> = columns.iter().map(|name| (*name, 0)).collect();
    row_description_text_formats(buf, &columns);
}

/// Like [`row_description_text`], with a format code (0 text, 1 binary) for each column.
pub fn row_description_text_formats(buf: &mut BytesMut, columns: &[(&str, i16)]) {
    const TEXT_OID: u32 = 25;
    message(buf, b'T', |b| {
        b.put_i16(i16::try_from(columns.len()).expect("column count fits"));
        for (name, format) in columns {
            cstr(b, name);
            b.put_u32(0); // table oid
            b.put_i16(0); // column number
            b.put_u32(TEXT_OID);
            b.put_i16(-1); // type size: varlena
            b.put_i32(-1); // type modifier
            b.put_i16(*format);
        }
    });
}

/// A ParameterDescription: the type oid of each parameter of a statement.
pub fn parameter_description(buf: &mut BytesMut, type_oids: &[u32]) {
    message(buf, b't', |b| {
        b.put_i16(i16::try_from(type_oids.len()).expect("parameter count fits"));
        for oid in type_oids {
            b.put_u32(*oid);
        }
    });
}

/// An ErrorResponse or NoticeResponse (`tag` `E` or `N`) with the given fields, in order.
pub fn error_fields(buf: &mut BytesMut, tag: u8, fields: &[(u8, &str)]) {
    message(buf, tag, |b| {
        for (code, value) in fields {
            b.put_u8(*code);
            cstr(b, value);
        }
        b.put_u8(0);
    });
}

pub fn data_row(buf: &mut BytesMut, values: &[Option<&[u8]>]) {
    message(buf, b'D', |b| {
        b.put_i16(i16::try_from(values.len()).expect("column count fits"));
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(i32::try_from(v.len()).expect("value fits"));
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// The single byte a server answers an SSLRequest or GSSENCRequest with.
pub fn ssl_response(buf: &mut BytesMut, accept: bool) {
    buf.put_u8(if accept { b'S' } else { b'N' });
}

/// Tells a client which protocol minor version and which `_pq_.` options the server speaks.
pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_minor: u32, unrecognized: &[&str]) {
    message(buf, b'v', |b| {
        b.put_u32(newest_minor);
        b.put_u32(u32::try_from(unrecognized.len()).expect("option count fits"));
        for name in unrecognized {
            cstr(b, name);
        }
    });
}
