use crate::read::Reader;
use crate::tag::frontend as t;
use crate::{Frame, WireError};

/// What a Describe or Close refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Statement,
    Portal,
}

impl TargetKind {
    fn parse(b: u8, message: &'static str) -> Result<Self, WireError> {
        match b {
            b'S' => Ok(TargetKind::Statement),
            b'P' => Ok(TargetKind::Portal),
            _ => Err(WireError::malformed(
                message,
                "target is neither 'S' nor 'P'",
            )),
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TargetKind::Statement => b'S',
            TargetKind::Portal => b'P',
        }
    }
}

/// A typed view of a message sent by a client after startup. Borrowed from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    Query {
        sql: &'a str,
    },
    Parse {
        name: &'a str,
        sql: &'a str,
        /// The parameter type count and OIDs exactly as sent (validated).
        param_types: &'a [u8],
    },
    Bind {
        portal: &'a str,
        statement: &'a str,
        /// Formats, values and result formats exactly as sent; see [`BindParams`].
        rest: &'a [u8],
    },
    Describe {
        kind: TargetKind,
        name: &'a str,
    },
    Execute {
        portal: &'a str,
        max_rows: i32,
    },
    Close {
        kind: TargetKind,
        name: &'a str,
    },
    Sync,
    Flush,
    Terminate,
    CopyData(&'a [u8]),
    CopyDone,
    CopyFail {
        message: &'a str,
    },
    FunctionCall,
    /// PasswordMessage, SASLInitialResponse or SASLResponse: which one depends on the
    /// authentication exchange in progress, so the body is left raw.
    Password(&'a [u8]),
}

impl<'a> FrontendMessage<'a> {
    pub fn parse(frame: &'a Frame) -> Result<Self, WireError> {
        let body = frame.body();
        let msg = match frame.tag {
            t::QUERY => {
                let mut r = Reader::new(body, "Query");
                let sql = r.cstr()?;
                r.finish()?;
                FrontendMessage::Query { sql }
            }
            t::PARSE => {
                let mut r = Reader::new(body, "Parse");
                let name = r.cstr()?;
                let sql = r.cstr()?;
                let param_types = r.rest();
                let mut types = Reader::new(param_types, "Parse");
                let count = types.i16()?;
                let count = usize::try_from(count)
                    .map_err(|_| WireError::malformed("Parse", "negative parameter count"))?;
                types.bytes(count * 4)?;
                types.finish()?;
                FrontendMessage::Parse {
                    name,
                    sql,
                    param_types,
                }
            }
            t::BIND => {
                let mut r = Reader::new(body, "Bind");
                let portal = r.cstr()?;
                let statement = r.cstr()?;
                let rest = r.rest();
                BindParams::parse(rest)?;
                FrontendMessage::Bind {
                    portal,
                    statement,
                    rest,
                }
            }
            t::DESCRIBE | t::CLOSE => {
                let label = if frame.tag == t::DESCRIBE {
                    "Describe"
                } else {
                    "Close"
                };
                let mut r = Reader::new(body, label);
                let kind = TargetKind::parse(r.u8()?, label)?;
                let name = r.cstr()?;
                r.finish()?;
                if frame.tag == t::DESCRIBE {
                    FrontendMessage::Describe { kind, name }
                } else {
                    FrontendMessage::Close { kind, name }
                }
            }
            t::EXECUTE => {
                let mut r = Reader::new(body, "Execute");
                let portal = r.cstr()?;
                let max_rows = r.i32()?;
                r.finish()?;
                FrontendMessage::Execute { portal, max_rows }
            }
            t::SYNC => empty(body, "Sync", FrontendMessage::Sync)?,
            t::FLUSH => empty(body, "Flush", FrontendMessage::Flush)?,
            t::TERMINATE => empty(body, "Terminate", FrontendMessage::Terminate)?,
            t::COPY_DONE => empty(body, "CopyDone", FrontendMessage::CopyDone)?,
            t::COPY_DATA => FrontendMessage::CopyData(body),
            t::COPY_FAIL => {
                let mut r = Reader::new(body, "CopyFail");
                let message = r.cstr()?;
                r.finish()?;
                FrontendMessage::CopyFail { message }
            }
            t::FUNCTION_CALL => FrontendMessage::FunctionCall,
            t::PASSWORD => FrontendMessage::Password(body),
            other => return Err(WireError::UnexpectedTag(other as char)),
        };
        Ok(msg)
    }
}

fn empty<'a>(
    body: &[u8],
    label: &'static str,
    msg: FrontendMessage<'a>,
) -> Result<FrontendMessage<'a>, WireError> {
    if body.is_empty() {
        Ok(msg)
    } else {
        Err(WireError::malformed(label, "unexpected body"))
    }
}

/// The body of a SASLInitialResponse: the mechanism and the client's first message.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), WireError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = r.cstr()?;
    let data = r.nullable()?.unwrap_or_default();
    r.finish()?;
    Ok((mechanism, data))
}

/// The parameter part of a Bind message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindParams<'a> {
    pub param_formats: Vec<i16>,
    pub values: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
}

impl<'a> BindParams<'a> {
    /// Decodes the bytes after the statement name of a Bind.
    pub fn parse(rest: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(rest, "Bind");
        let param_formats = formats(&mut r)?;
        let count = count(r.i16()?)?;
        let mut values = Vec::with_capacity(count.min(rest.len() / 4));
        for _ in 0..count {
            values.push(r.nullable()?);
        }
        let result_formats = formats(&mut r)?;
        r.finish()?;
        Ok(BindParams {
            param_formats,
            values,
            result_formats,
        })
    }
}

fn count(n: i16) -> Result<usize, WireError> {
    usize::try_from(n).map_err(|_| WireError::malformed("Bind", "negative count"))
}

fn formats(r: &mut Reader<'_>) -> Result<Vec<i16>, WireError> {
    let n = count(r.i16()?)?;
    (0..n).map(|_| r.i16()).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::encode;
    use bytes::BytesMut;

    fn frame(build: impl FnOnce(&mut BytesMut)) -> Frame {
        let mut buf = BytesMut::new();
        build(&mut buf);
        crate::decode_frame(&mut buf, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn parse_and_bind_views() {
        let f = frame(|b| encode::parse(b, "s1", "select $1", &[23]));
        assert_eq!(
            FrontendMessage::parse(&f).unwrap(),
            FrontendMessage::Parse {
                name: "s1",
                sql: "select $1",
                param_types: &[0, 1, 0, 0, 0, 23]
            }
        );
        let f = frame(|b| encode::bind(b, "", "s1", &[0], &[Some(b"42")], &[1]));
        let FrontendMessage::Bind {
            portal,
            statement,
            rest,
        } = FrontendMessage::parse(&f).unwrap()
        else {
            panic!("not a bind")
        };
        assert_eq!((portal, statement), ("", "s1"));
        let params = BindParams::parse(rest).unwrap();
        assert_eq!(params.values, vec![Some(&b"42"[..])]);
        assert_eq!(params.result_formats, vec![1]);
    }

    #[test]
    fn rejects_garbage() {
        let f = frame(|b| encode::raw(b, b'D', b"X\0"));
        assert!(FrontendMessage::parse(&f).is_err());
        let f = frame(|b| encode::raw(b, b'Q', b"no terminator"));
        assert!(FrontendMessage::parse(&f).is_err());
        let f = frame(|b| encode::raw(b, b'P', b"s\0q\0\xff\xff"));
        assert!(FrontendMessage::parse(&f).is_err());
        let f = frame(|b| encode::raw(b, b'z', b""));
        assert_eq!(
            FrontendMessage::parse(&f),
            Err(WireError::UnexpectedTag('z'))
        );
    }
}
