//! A bounds-checked cursor over a message body.

/// Reads fields from a message body; every read fails instead of panicking on short input.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

pub(crate) type ReadResult<T> = Result<T, crate::WireError>;

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], message: &'static str) -> Self {
        Reader { buf, message }
    }

    fn short(&self) -> crate::WireError {
        crate::WireError::malformed(self.message, "truncated")
    }

    pub(crate) fn u8(&mut self) -> ReadResult<u8> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.short())?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn i16(&mut self) -> ReadResult<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> ReadResult<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> ReadResult<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> ReadResult<[u8; N]> {
        let bytes = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> ReadResult<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string, without its terminator. Postgres strings are in the client
    /// encoding; anything that is not UTF-8 is refused rather than guessed at.
    pub(crate) fn cstr(&mut self) -> ReadResult<&'a str> {
        let nul = self.buf.iter().position(|&b| b == 0).ok_or_else(|| {
            crate::WireError::malformed(self.message, "missing string terminator")
        })?;
        let s = std::str::from_utf8(&self.buf[..nul])
            .map_err(|_| crate::WireError::malformed(self.message, "string is not UTF-8"))?;
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    /// A length-prefixed value: -1 is NULL.
    pub(crate) fn nullable(&mut self) -> ReadResult<Option<&'a [u8]>> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len)
            .map_err(|_| crate::WireError::malformed(self.message, "negative value length"))?;
        self.bytes(len).map(Some)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn finish(self) -> ReadResult<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(crate::WireError::malformed(self.message, "trailing bytes"))
        }
    }
}
