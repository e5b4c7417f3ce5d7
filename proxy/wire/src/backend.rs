use crate::read::Reader;
use crate::tag::backend as t;
use crate::{Frame, WireError};

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block; statements are refused until it ends.
    Failed,
}

impl TransactionStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InTransaction),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// What an Authentication message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<&'a str>,
    },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// Kerberos, GSS, SSPI: methods Sentinel does not speak.
    Unsupported(i32),
}

/// The fields of an ErrorResponse or NoticeResponse, by their one-byte codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    pub fields: Vec<(u8, &'a str)>,
}

impl<'a> ErrorFields<'a> {
    pub fn get(&self, code: u8) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| *v)
    }

    /// SQLSTATE (`C`).
    pub fn code(&self) -> Option<&'a str> {
        self.get(b'C')
    }

    /// Primary message (`M`).
    pub fn message(&self) -> Option<&'a str> {
        self.get(b'M')
    }

    /// Non-localized severity (`V`), falling back to the localized one (`S`).
    pub fn severity(&self) -> Option<&'a str> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }

    fn parse(body: &'a [u8], label: &'static str) -> Result<Self, WireError> {
        let mut r = Reader::new(body, label);
        let mut fields = Vec::new();
        loop {
            let code = r.u8()?;
            if code == 0 {
                break;
            }
            fields.push((code, r.cstr()?));
        }
        r.finish()?;
        Ok(ErrorFields { fields })
    }
}

/// A typed view of the backend messages a proxy needs to look inside; the rest are `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    Authentication(AuthRequest<'a>),
    ParameterStatus {
        name: &'a str,
        value: &'a str,
    },
    BackendKeyData {
        process_id: u32,
        secret_key: &'a [u8],
    },
    ReadyForQuery(TransactionStatus),
    ErrorResponse(ErrorFields<'a>),
    NoticeResponse(ErrorFields<'a>),
    CommandComplete {
        tag: &'a str,
    },
    NegotiateProtocolVersion {
        newest_minor: u32,
        unrecognized: Vec<&'a str>,
    },
    /// Any other message, by type byte; forwarded as bytes.
    Other(u8),
}

impl<'a> BackendMessage<'a> {
    pub fn parse(frame: &'a Frame) -> Result<Self, WireError> {
        let body = frame.body();
        let msg = match frame.tag {
            t::AUTHENTICATION => BackendMessage::Authentication(parse_auth(body)?),
            t::PARAMETER_STATUS => {
                let mut r = Reader::new(body, "ParameterStatus");
                let name = r.cstr()?;
                let value = r.cstr()?;
                r.finish()?;
                BackendMessage::ParameterStatus { name, value }
            }
            t::BACKEND_KEY_DATA => {
                let mut r = Reader::new(body, "BackendKeyData");
                let process_id = r.u32()?;
                let secret_key = r.rest();
                if !(4..=crate::MAX_CANCEL_KEY_LEN).contains(&secret_key.len()) {
                    return Err(WireError::BadCancelKey(secret_key.len()));
                }
                BackendMessage::BackendKeyData {
                    process_id,
                    secret_key,
                }
            }
            t::READY_FOR_QUERY => {
                let mut r = Reader::new(body, "ReadyForQuery");
                let status = TransactionStatus::from_byte(r.u8()?).ok_or(WireError::malformed(
                    "ReadyForQuery",
                    "unknown transaction status",
                ))?;
                r.finish()?;
                BackendMessage::ReadyForQuery(status)
            }
            t::ERROR_RESPONSE => {
                BackendMessage::ErrorResponse(ErrorFields::parse(body, "ErrorResponse")?)
            }
            t::NOTICE_RESPONSE => {
                BackendMessage::NoticeResponse(ErrorFields::parse(body, "NoticeResponse")?)
            }
            t::COMMAND_COMPLETE => {
                let mut r = Reader::new(body, "CommandComplete");
                let tag = r.cstr()?;
                r.finish()?;
                BackendMessage::CommandComplete { tag }
            }
            t::NEGOTIATE_PROTOCOL_VERSION => {
                let mut r = Reader::new(body, "NegotiateProtocolVersion");
                let newest_minor = r.u32()?;
                let n = r.u32()?;
                let mut unrecognized = Vec::new();
                for _ in 0..n {
                    unrecognized.push(r.cstr()?);
                }
                r.finish()?;
                BackendMessage::NegotiateProtocolVersion {
                    newest_minor,
                    unrecognized,
                }
            }
            other => BackendMessage::Other(other),
        };
        Ok(msg)
    }
}

fn parse_auth(body: &[u8]) -> Result<AuthRequest<'_>, WireError> {
    let mut r = Reader::new(body, "Authentication");
    let kind = r.i32()?;
    let req = match kind {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => {
            let salt = r.bytes(4)?;
            AuthRequest::Md5Password {
                salt: [salt[0], salt[1], salt[2], salt[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => return Ok(AuthRequest::SaslContinue(r.rest())),
        12 => return Ok(AuthRequest::SaslFinal(r.rest())),
        other => return Ok(AuthRequest::Unsupported(other)),
    };
    r.finish()?;
    Ok(req)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::encode;
    use bytes::BytesMut;

    fn one(buf: &mut BytesMut) -> Frame {
        crate::decode_frame(buf, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn error_fields_round_trip() {
        let mut buf = BytesMut::new();
        encode::error_response(
            &mut buf,
            "ERROR",
            "42501",
            "tenant context required",
            Some("hint"),
        );
        let f = one(&mut buf);
        let BackendMessage::ErrorResponse(e) = BackendMessage::parse(&f).unwrap() else {
            panic!("not an error")
        };
        assert_eq!(e.code(), Some("42501"));
        assert_eq!(e.message(), Some("tenant context required"));
        assert_eq!(e.get(b'H'), Some("hint"));
        assert_eq!(e.severity(), Some("ERROR"));
    }

    #[test]
    fn key_data_bounds() {
        let mut buf = BytesMut::new();
        encode::backend_key_data(&mut buf, 7, &[1; 32]);
        let f = one(&mut buf);
        assert_eq!(
            BackendMessage::parse(&f).unwrap(),
            BackendMessage::BackendKeyData {
                process_id: 7,
                secret_key: &[1; 32]
            }
        );
        encode::raw(&mut buf, b'K', &[0, 0, 0, 7, 1]);
        let f = one(&mut buf);
        assert_eq!(BackendMessage::parse(&f), Err(WireError::BadCancelKey(1)));
    }
}
