//! A framed connection: a byte stream with a read buffer that yields whole messages and a write
//! buffer that is flushed in one write.

use bytes::BytesMut;
use sentinel_wire::{Frame, WireError, decode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

pub type BoxStream = Box<dyn AsyncStream>;

const READ_CHUNK: usize = 16 * 1024;

pub struct Conn {
    pub stream: BoxStream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    max_message: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Eof,
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl Conn {
    pub fn new(stream: BoxStream, max_message: usize) -> Self {
        Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            max_message,
        }
    }

    /// Takes a whole message from what has been read, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        decode_frame(&mut self.rbuf, self.max_message)
    }

    /// Reads more bytes. Cancel safe: if the future is dropped, nothing was consumed.
    pub async fn fill(&mut self) -> Result<(), ReadError> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => Err(ReadError::Eof),
            _ => Ok(()),
        }
    }

    /// Waits for one whole message. Not cancel safe across the frame boundary only in the sense
    /// that partial bytes stay buffered, which is what the next call wants.
    pub async fn read_frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Writes everything buffered.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.stream.flush().await
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
