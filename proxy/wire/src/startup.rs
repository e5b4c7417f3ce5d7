use bytes::{Bytes, BytesMut};

use crate::frame::peek_len;
use crate::read::Reader;
use crate::{
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_CANCEL_KEY_LEN, MAX_STARTUP_PACKET_LEN,
    SSL_REQUEST_CODE, WireError,
};

/// A packet of the startup phase: these have no type byte, only a length and a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        process_id: u32,
        /// 4 bytes before protocol 3.2, up to 256 after.
        secret_key: Bytes,
    },
    Startup {
        /// Protocol minor version the client asked for (major is always 3).
        minor: u16,
        /// Parameters in the order the client sent them (`user`, `database`, `options`, ...).
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// The value of a startup parameter.
    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Takes one startup-phase packet off the front of `buf`; `Ok(None)` while incomplete.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, WireError> {
    let Some(declared) = peek_len(buf) else {
        return Ok(None);
    };
    let len = usize::try_from(declared).map_err(|_| WireError::BadLength(declared.into()))?;
    if len < 8 {
        return Err(WireError::BadLength(declared.into()));
    }
    if len > MAX_STARTUP_PACKET_LEN {
        return Err(WireError::TooLong {
            len,
            max: MAX_STARTUP_PACKET_LEN,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let packet = buf.split_to(len).freeze();
    parse_startup(&packet[4..], &packet).map(Some)
}

fn parse_startup(body: &[u8], packet: &Bytes) -> Result<StartupPacket, WireError> {
    let mut r = Reader::new(body, "startup");
    let code = r.u32()?;
    match code {
        SSL_REQUEST_CODE => r.finish().map(|()| StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => r.finish().map(|()| StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let process_id = r.u32()?;
            let key_len = body.len() - 8;
            if !(4..=MAX_CANCEL_KEY_LEN).contains(&key_len) {
                return Err(WireError::BadCancelKey(key_len));
            }
            Ok(StartupPacket::Cancel {
                process_id,
                secret_key: packet.slice(12..),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(WireError::UnsupportedVersion { major, minor });
            }
            let mut params = Vec::new();
            loop {
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                params.push((name.to_owned(), value.to_owned()));
            }
            r.finish()?;
            Ok(StartupPacket::Startup { minor, params })
        }
    }
}
