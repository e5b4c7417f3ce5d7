//! A protocol-level Postgres client, for what tokio-postgres cannot do or show: the exact bytes a
//! test specifies (pipelines, COPY, partial reads), any startup parameters (`sentinel.tenant`),
//! SCRAM or cleartext (token) passwords, and every reply as sent, so that transcripts through
//! Sentinel and straight to Postgres can be compared message by message.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// === frontend messages ===

/// Frontend messages, built up in order and sent in one write.
#[derive(Default, Clone, Debug)]
pub struct Wire(pub Vec<u8>);

fn put_cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

impl Wire {
    pub fn new() -> Wire {
        Wire::default()
    }

    pub fn msg(mut self, tag: u8, body: &[u8]) -> Wire {
        self.0.push(tag);
        self.0
            .extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        self.0.extend_from_slice(body);
        self
    }

    pub fn query(self, sql: &str) -> Wire {
        let mut b = Vec::new();
        put_cstr(&mut b, sql);
        self.msg(b'Q', &b)
    }

    pub fn parse(self, name: &str, sql: &str, types: &[u32]) -> Wire {
        let mut b = Vec::new();
        put_cstr(&mut b, name);
        put_cstr(&mut b, sql);
        b.extend_from_slice(&(types.len() as i16).to_be_bytes());
        for t in types {
            b.extend_from_slice(&t.to_be_bytes());
        }
        self.msg(b'P', &b)
    }

    /// Bind with text-format parameters and results.
    pub fn bind(self, portal: &str, stmt: &str, params: &[Option<&str>]) -> Wire {
        let mut b = Vec::new();
        put_cstr(&mut b, portal);
        put_cstr(&mut b, stmt);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        self.msg(b'B', &b)
    }

    /// Describe; `kind` is `b'S'` (statement) or `b'P'` (portal).
    pub fn describe(self, kind: u8, name: &str) -> Wire {
        let mut b = vec![kind];
        put_cstr(&mut b, name);
        self.msg(b'D', &b)
    }

    pub fn describe_statement(self, name: &str) -> Wire {
        self.describe(b'S', name)
    }

    pub fn describe_portal(self, name: &str) -> Wire {
        self.describe(b'P', name)
    }

    pub fn execute(self, portal: &str, max_rows: i32) -> Wire {
        let mut b = Vec::new();
        put_cstr(&mut b, portal);
        b.extend_from_slice(&max_rows.to_be_bytes());
        self.msg(b'E', &b)
    }

    /// Close; `kind` is `b'S'` (statement) or `b'P'` (portal).
    pub fn close(self, kind: u8, name: &str) -> Wire {
        let mut b = vec![kind];
        put_cstr(&mut b, name);
        self.msg(b'C', &b)
    }

    pub fn close_statement(self, name: &str) -> Wire {
        self.close(b'S', name)
    }

    pub fn close_portal(self, name: &str) -> Wire {
        self.close(b'P', name)
    }

    pub fn sync(self) -> Wire {
        self.msg(b'S', &[])
    }

    pub fn flush(self) -> Wire {
        self.msg(b'H', &[])
    }

    pub fn copy_data(self, data: &[u8]) -> Wire {
        self.msg(b'd', data)
    }

    pub fn copy_done(self) -> Wire {
        self.msg(b'c', &[])
    }

    pub fn copy_fail(self, why: &str) -> Wire {
        let mut b = Vec::new();
        put_cstr(&mut b, why);
        self.msg(b'f', &b)
    }
}

// === backend replies ===

/// A backend message, decoded far enough to compare Sentinel's replies with Postgres's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    EmptyQuery,
    PortalSuspended,
    ParamDesc(Vec<u32>),
    /// (column name, type oid)
    RowDesc(Vec<(String, u32)>),
    Row(Vec<Option<String>>),
    Complete(String),
    Error(Fields),
    Notice(Fields),
    Ready(char),
    CopyIn,
    CopyOut,
    CopyData(String),
    CopyDone,
    Notification {
        channel: String,
        payload: String,
    },
    ParamStatus(String, String),
    Other(char),
}

/// The fields of an ErrorResponse or NoticeResponse that tests look at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fields {
    /// `S`: ERROR, FATAL, WARNING, NOTICE, …
    pub severity: String,
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Reply {
    /// The same reply with error/notice fields other than severity and code blanked, for
    /// comparing transcripts where the wording may differ.
    pub fn codes_only(&self) -> Reply {
        self.map_fields(|f| Fields {
            severity: f.severity.clone(),
            code: f.code.clone(),
            ..Fields::default()
        })
    }

    /// The same reply with error/notice fields other than code and message blanked, for
    /// comparing transcripts where severity and hint may differ.
    pub fn code_and_message(&self) -> Reply {
        self.map_fields(|f| Fields {
            code: f.code.clone(),
            message: f.message.clone(),
            ..Fields::default()
        })
    }

    fn map_fields(&self, keep: impl Fn(&Fields) -> Fields) -> Reply {
        match self {
            Reply::Error(f) => Reply::Error(keep(f)),
            Reply::Notice(f) => Reply::Notice(keep(f)),
            other => other.clone(),
        }
    }
}

struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        ensure!(self.0.len() >= n, "message too short");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into()?))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }
    fn cstr(&mut self) -> Result<String> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .context("unterminated string")?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(s)
    }
}

fn decode_fields(r: &mut Rd<'_>) -> Result<Fields> {
    let mut f = Fields::default();
    loop {
        let field = r.u8()?;
        if field == 0 {
            return Ok(f);
        }
        let value = r.cstr()?;
        match field {
            b'S' => f.severity = value,
            b'C' => f.code = value,
            b'M' => f.message = value,
            b'H' => f.hint = Some(value),
            _ => {}
        }
    }
}

/// Decodes one backend message (`tag`, and the body after the length).
pub fn decode(tag: u8, body: &[u8]) -> Result<Reply> {
    let mut r = Rd(body);
    Ok(match tag {
        b'1' => Reply::ParseComplete,
        b'2' => Reply::BindComplete,
        b'3' => Reply::CloseComplete,
        b'n' => Reply::NoData,
        b'I' => Reply::EmptyQuery,
        b's' => Reply::PortalSuspended,
        b'c' => Reply::CopyDone,
        b'G' => Reply::CopyIn,
        b'H' => Reply::CopyOut,
        b'd' => Reply::CopyData(String::from_utf8_lossy(body).into_owned()),
        b't' => {
            let n = r.i16()?;
            Reply::ParamDesc(
                (0..n)
                    .map(|_| r.i32().map(|v| v as u32))
                    .collect::<Result<_>>()?,
            )
        }
        b'T' => {
            let n = r.i16()?;
            let mut cols = Vec::new();
            for _ in 0..n {
                let name = r.cstr()?;
                r.take(6)?; // table oid, column number
                let oid = r.i32()? as u32;
                r.take(8)?; // type size, modifier, format
                cols.push((name, oid));
            }
            Reply::RowDesc(cols)
        }
        b'D' => {
            let n = r.i16()?;
            let mut vals = Vec::new();
            for _ in 0..n {
                let len = r.i32()?;
                vals.push(if len < 0 {
                    None
                } else {
                    Some(String::from_utf8_lossy(r.take(len as usize)?).into_owned())
                });
            }
            Reply::Row(vals)
        }
        b'C' => Reply::Complete(r.cstr()?),
        b'E' => Reply::Error(decode_fields(&mut r)?),
        b'N' => Reply::Notice(decode_fields(&mut r)?),
        b'Z' => Reply::Ready(r.u8()? as char),
        b'A' => {
            r.i32()?;
            Reply::Notification {
                channel: r.cstr()?,
                payload: r.cstr()?,
            }
        }
        b'S' => Reply::ParamStatus(r.cstr()?, r.cstr()?),
        other => Reply::Other(other as char),
    })
}

/// The first ErrorResponse in a transcript.
pub fn first_error(replies: &[Reply]) -> Option<&Fields> {
    replies.iter().find_map(|r| match r {
        Reply::Error(f) => Some(f),
        _ => None,
    })
}

/// The rows of a transcript.
pub fn reply_rows(replies: &[Reply]) -> Vec<Vec<Option<String>>> {
    replies
        .iter()
        .filter_map(|r| match r {
            Reply::Row(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

// === steps ===

/// What to read after a step's messages are sent.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// This many ReadyForQuery messages.
    Ready(usize),
    /// Exactly this many messages.
    Messages(usize),
    /// Up to CopyInResponse, or ReadyForQuery if the COPY failed to start.
    CopyIn,
}

/// Messages to send and how far to read the replies: one step of a script.
#[derive(Clone, Debug)]
pub struct Step {
    pub wire: Wire,
    pub until: Until,
    /// Sent first on a second connection of the same kind (through Sentinel or straight to
    /// Postgres) and read to its ReadyForQuery: another client using the server in between.
    pub other: Option<Wire>,
}

pub fn step(wire: Wire, until: Until) -> Step {
    Step {
        wire,
        until,
        other: None,
    }
}

impl Step {
    pub fn after_other(mut self, other: Wire) -> Step {
        self.other = Some(other);
        self
    }
}

/// A simple Query, read to its ReadyForQuery.
pub fn q(sql: &str) -> Step {
    step(Wire::new().query(sql), Until::Ready(1))
}

/// Where two transcripts (the replies of each step) first differ, briefly, after `norm` maps
/// every reply (`None` drops it): the caller says which differences count.
pub fn first_difference(
    via: &[Vec<Reply>],
    direct: &[Vec<Reply>],
    norm: impl Fn(&Reply) -> Option<Reply>,
) -> Option<String> {
    let norm = |t: &[Vec<Reply>]| -> Vec<Vec<Reply>> {
        t.iter()
            .map(|step| step.iter().filter_map(&norm).collect())
            .collect()
    };
    let (via, direct) = (norm(via), norm(direct));
    for (i, (a, b)) in via.iter().zip(&direct).enumerate() {
        if a != b {
            let at = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            let show = |v: &[Reply]| {
                let end = (at + 4).min(v.len());
                format!("{:?}", &v[at.min(end)..end])
            };
            return Some(format!(
                "step {i}, reply {at}:\n      Sentinel: {} ({} replies)\n      Postgres: {} ({} replies)",
                show(a),
                a.len(),
                show(b),
                b.len()
            ));
        }
    }
    (via.len() != direct.len()).then(|| format!("{} vs {} steps", via.len(), direct.len()))
}

// === the connection ===

/// A protocol-level client: startup with any parameters, SCRAM or cleartext password, then
/// whatever bytes a test sends. Every read and write fails after `timeout` (a hang).
pub struct RawConn {
    stream: TcpStream,
    rbuf: BytesMut,
    timeout: Duration,
    /// ParameterStatus, BackendKeyData and notices seen during startup.
    pub startup_replies: Vec<Reply>,
}

async fn within<F: Future>(timeout: Duration, what: &str, fut: F) -> Result<F::Output> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {timeout:?} (hung)"))
}

impl RawConn {
    /// Logs in to 127.0.0.1:`port` with these startup parameters (`user`, `database`, and e.g.
    /// `sentinel.tenant` or `options`). A refused login is an `Err` whose text holds the
    /// ErrorResponse (see [`RawConn::login`] for the fields).
    pub async fn connect(
        port: u16,
        params: &[(&str, &str)],
        password: &str,
        timeout: Duration,
    ) -> Result<RawConn> {
        match Self::login(port, params, password, timeout).await? {
            Ok(conn) => Ok(conn),
            Err(fields) => bail!("login refused: {fields:?}"),
        }
    }

    /// Like [`connect`](Self::connect), but a refused login is `Ok(Err(fields))`.
    pub async fn login(
        port: u16,
        params: &[(&str, &str)],
        password: &str,
        timeout: Duration,
    ) -> Result<Result<RawConn, Fields>> {
        let stream = within(
            timeout,
            "TCP connect",
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await??;
        stream.set_nodelay(true)?;
        let mut conn = RawConn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            timeout,
            startup_replies: Vec::new(),
        };
        let mut body = Vec::new();
        body.extend_from_slice(&196_608u32.to_be_bytes());
        for (k, v) in params {
            put_cstr(&mut body, k);
            put_cstr(&mut body, v);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        conn.write(&Wire(startup)).await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = conn.read_frame().await?;
            match tag {
                b'R' => {
                    let mut r = Rd(&body);
                    let code = r.i32()?;
                    let data = r.0;
                    match code {
                        0 => {}
                        3 => {
                            let mut b = Vec::new();
                            put_cstr(&mut b, password);
                            conn.write(&Wire::new().msg(b'p', &b)).await?;
                        }
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let mut b = Vec::new();
                            put_cstr(&mut b, "SCRAM-SHA-256");
                            b.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                            b.extend_from_slice(s.message());
                            conn.write(&Wire::new().msg(b'p', &b)).await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().context("SASLContinue before SASL")?;
                            s.update(data)?;
                            let msg = s.message().to_vec();
                            conn.write(&Wire::new().msg(b'p', &msg)).await?;
                        }
                        12 => scram
                            .as_mut()
                            .context("SASLFinal before SASL")?
                            .finish(data)?,
                        other => bail!("unsupported authentication request {other}"),
                    }
                }
                b'E' => return Ok(Err(decode_fields(&mut Rd(&body))?)),
                b'Z' => return Ok(Ok(conn)),
                _ => conn.startup_replies.push(decode(tag, &body)?),
            }
        }
    }

    pub async fn write(&mut self, wire: &Wire) -> Result<()> {
        within(self.timeout, "sending", self.stream.write_all(&wire.0)).await??;
        Ok(())
    }

    /// A whole message already in the buffer, if any: (tag, body).
    pub fn buffered_frame(&mut self) -> Result<Option<(u8, Bytes)>> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.rbuf[1..5].try_into()?) as usize;
        ensure!(len >= 4, "bad message length {len}");
        if self.rbuf.len() < 1 + len {
            self.rbuf.reserve(1 + len - self.rbuf.len());
            return Ok(None);
        }
        let frame = self.rbuf.split_to(1 + len).freeze();
        Ok(Some((frame[0], frame.slice(5..))))
    }

    /// Reads at most `max` more bytes from the socket into the buffer (a slow reader); returns
    /// how many.
    pub async fn read_some(&mut self, max: usize) -> Result<usize> {
        let mut chunk = vec![0u8; max];
        let n = within(self.timeout, "reading", self.stream.read(&mut chunk)).await??;
        ensure!(n > 0, "connection closed by the server");
        self.rbuf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn read_frame(&mut self) -> Result<(u8, Bytes)> {
        loop {
            if let Some(f) = self.buffered_frame()? {
                return Ok(f);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
                self.rbuf.reserve(64 * 1024);
            }
            let n = within(
                self.timeout,
                "reading a reply",
                self.stream.read_buf(&mut self.rbuf),
            )
            .await??;
            ensure!(n > 0, "connection closed by the server");
        }
    }

    pub async fn recv(&mut self) -> Result<Reply> {
        let (tag, body) = self.read_frame().await?;
        decode(tag, &body)
    }

    pub async fn read_until(&mut self, until: Until) -> Result<Vec<Reply>> {
        let mut out = Vec::new();
        let mut readies = 0;
        loop {
            match until {
                Until::Ready(n) if readies == n => return Ok(out),
                Until::Messages(n) if out.len() == n => return Ok(out),
                _ => {}
            }
            let reply = self
                .recv()
                .await
                .with_context(|| format!("waiting for {until:?}; replies so far: {out:?}"))?;
            let stop =
                matches!(until, Until::CopyIn) && matches!(reply, Reply::CopyIn | Reply::Ready(_));
            if matches!(reply, Reply::Ready(_)) {
                readies += 1;
            }
            out.push(reply);
            if stop {
                return Ok(out);
            }
        }
    }

    /// Sends `wire` and reads the replies `until`.
    pub async fn exchange(&mut self, wire: &Wire, until: Until) -> Result<Vec<Reply>> {
        self.write(wire).await?;
        self.read_until(until).await
    }

    /// A simple Query, read to its ReadyForQuery.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Reply>> {
        self.exchange(&Wire::new().query(sql), Until::Ready(1))
            .await
    }

    /// Runs the steps; `other` is the second connection for steps that use one.
    pub async fn run_with(
        &mut self,
        mut other: Option<&mut RawConn>,
        steps: &[Step],
    ) -> Result<Vec<Vec<Reply>>> {
        let mut out = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            if let Some(wire) = &s.other {
                let other = other.as_deref_mut().context("no second connection")?;
                other
                    .exchange(wire, Until::Ready(1))
                    .await
                    .with_context(|| format!("the other client before step {i}"))?;
            }
            let replies = self
                .exchange(&s.wire, s.until)
                .await
                .with_context(|| format!("step {i}; earlier steps got {out:?}"))?;
            out.push(replies);
        }
        Ok(out)
    }

    pub async fn run(&mut self, steps: &[Step]) -> Result<Vec<Vec<Reply>>> {
        self.run_with(None, steps).await
    }
}
