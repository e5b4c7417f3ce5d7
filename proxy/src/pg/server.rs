//! Server connections: connecting and logging into the upstream Postgres, and the state Sentinel
//! keeps about each connection (reported parameters, parameters applied for clients, prepared
//! statements) so it can hand the connection from one client to the next safely.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use sentinel_wire::{AuthRequest, BackendMessage, encode};
use tokio::net::TcpStream;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::conn::{BoxStream, Conn, ReadError};
use super::error::{PgError, PgResult};
use crate::config::PasswordSource;
use crate::secrets::Secrets;

/// Identifies a server connection in logs and the admin views.
static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// How to reach the upstream Postgres.
#[derive(Clone)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub connect_timeout: Duration,
    pub max_message: usize,
    /// Opens sealed upstream passwords.
    pub secrets: Arc<Secrets>,
}

/// Who Sentinel logs in as. `Debug` shows where the password comes from, never the password.
#[derive(Clone, Debug)]
pub struct Login {
    pub database: String,
    pub user: String,
    pub password: PasswordSource,
}

/// Where a CancelRequest for this connection must go.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub process_id: u32,
    pub secret_key: Bytes,
}

pub struct ServerConn {
    pub conn: Conn,
    pub id: u64,
    pub cancel: CancelTarget,
    pub created: Instant,
    pub last_used: Instant,
    /// Values the server reported with ParameterStatus.
    pub reported: HashMap<String, String>,
    /// Startup parameters of a client applied with SET, which the next client may not want.
    pub applied: BTreeMap<String, String>,
    /// Server-side names of the statements prepared on this connection.
    pub prepared: HashSet<Arc<str>>,
}

impl ServerConn {
    pub fn record_parameter(&mut self, name: &str, value: &str) {
        match self.reported.get_mut(name) {
            Some(v) if v == value => {}
            Some(v) => value.clone_into(v),
            None => {
                self.reported.insert(name.to_owned(), value.to_owned());
            }
        }
    }
}

impl Upstream {
    /// Connects and logs in; returns once the server is ready for queries.
    pub async fn connect(&self, login: &Login) -> PgResult<ServerConn> {
        tokio::time::timeout(self.connect_timeout, self.connect_inner(login))
            .await
            .map_err(|_| {
                PgError::UpstreamUnreachable(format!(
                    "no answer from {}:{} within server_connect_timeout",
                    self.host, self.port
                ))
            })?
    }

    async fn open_stream(&self) -> PgResult<BoxStream> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                PgError::UpstreamUnreachable(format!("{}:{}: {e}", self.host, self.port))
            })?;
        let _ = tcp.set_nodelay(true);
        let Some((config, name)) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let mut tcp = tcp;
        let mut buf = bytes::BytesMut::new();
        encode::ssl_request(&mut buf);
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let lost = |e: std::io::Error| PgError::UpstreamUnreachable(e.to_string());
        tcp.write_all(&buf).await.map_err(lost)?;
        let answer = tcp.read_u8().await.map_err(lost)?;
        if answer != b'S' {
            return Err(PgError::UpstreamUnreachable(
                "upstream Postgres does not accept TLS (tls = \"verify-full\")".into(),
            ));
        }
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| PgError::UpstreamUnreachable(format!("TLS handshake: {e}")))?;
        Ok(Box::new(tls))
    }

    async fn connect_inner(&self, login: &Login) -> PgResult<ServerConn> {
        let stream = self.open_stream().await?;
        let mut conn = Conn::new(stream, self.max_message);
        encode::startup(
            &mut conn.wbuf,
            &[("user", &login.user), ("database", &login.database)],
        );
        conn.flush()
            .await
            .map_err(|e| PgError::UpstreamUnreachable(e.to_string()))?;

        let mut reported = HashMap::new();
        let mut key = None;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = conn.read_frame().await.map_err(lost_during_login)?;
            match BackendMessage::parse(&frame)? {
                BackendMessage::Authentication(req) => match req {
                    AuthRequest::Ok => {}
                    AuthRequest::CleartextPassword => {
                        let password = read_password(login, &self.secrets)?;
                        encode::password(&mut conn.wbuf, password.as_bytes());
                    }
                    AuthRequest::Md5Password { salt } => {
                        let password = read_password(login, &self.secrets)?;
                        let hash = md5_hash(login.user.as_bytes(), password.as_bytes(), salt);
                        encode::password(&mut conn.wbuf, hash.as_bytes());
                    }
                    AuthRequest::Sasl { mechanisms } => {
                        if !mechanisms.contains(&SCRAM_SHA_256) {
                            return Err(PgError::UpstreamLogin(format!(
                                "no supported SASL mechanism among {mechanisms:?}"
                            )));
                        }
                        let password = read_password(login, &self.secrets)?;
                        let client =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        encode::sasl_initial_response(
                            &mut conn.wbuf,
                            SCRAM_SHA_256,
                            client.message(),
                        );
                        scram = Some(client);
                    }
                    AuthRequest::SaslContinue(data) => {
                        let client = scram.as_mut().ok_or(PgError::Unexpected("SASLContinue"))?;
                        client
                            .update(data)
                            .map_err(|e| PgError::UpstreamLogin(format!("SCRAM: {e}")))?;
                        encode::sasl_response(&mut conn.wbuf, client.message());
                    }
                    AuthRequest::SaslFinal(data) => {
                        let mut client = scram.take().ok_or(PgError::Unexpected("SASLFinal"))?;
                        client.finish(data).map_err(|e| {
                            PgError::UpstreamLogin(format!("server signature: {e}"))
                        })?;
                    }
                    AuthRequest::Unsupported(code) => {
                        return Err(PgError::UpstreamLogin(format!(
                            "unsupported authentication method {code}"
                        )));
                    }
                },
                BackendMessage::ParameterStatus { name, value } => {
                    reported.insert(name.to_owned(), value.to_owned());
                }
                BackendMessage::BackendKeyData {
                    process_id,
                    secret_key,
                } => {
                    key = Some((process_id, Bytes::copy_from_slice(secret_key)));
                }
                BackendMessage::ErrorResponse(e) => {
                    return Err(PgError::UpstreamLogin(format!(
                        "{} ({})",
                        e.message().unwrap_or("error"),
                        e.code().unwrap_or("?????")
                    )));
                }
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::NoticeResponse(_)
                | BackendMessage::NegotiateProtocolVersion { .. } => {}
                _ => return Err(PgError::Unexpected("login-phase")),
            }
            conn.flush()
                .await
                .map_err(|e| PgError::UpstreamUnreachable(e.to_string()))?;
        }
        let (process_id, secret_key) = key.ok_or(PgError::UpstreamLogin(
            "server sent no BackendKeyData".into(),
        ))?;
        let now = Instant::now();
        Ok(ServerConn {
            conn,
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            cancel: CancelTarget {
                host: self.host.clone(),
                port: self.port,
                process_id,
                secret_key,
            },
            created: now,
            last_used: now,
            reported,
            applied: BTreeMap::new(),
            prepared: HashSet::new(),
        })
    }

    /// Sends a CancelRequest for a server connection. The postmaster closes the connection once
    /// it has signalled the backend.
    pub async fn cancel(&self, target: &CancelTarget) -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let mut buf = bytes::BytesMut::new();
        encode::cancel_request(&mut buf, target.process_id, &target.secret_key);
        tcp.write_all(&buf).await?;
        let mut sink = [0u8; 16];
        let _ = tokio::time::timeout(self.connect_timeout, tcp.read(&mut sink)).await;
        Ok(())
    }
}

fn lost_during_login(e: ReadError) -> PgError {
    match e {
        ReadError::Wire(w) => PgError::Protocol(w),
        ReadError::Io(e) => PgError::UpstreamUnreachable(e.to_string()),
        ReadError::Eof => PgError::UpstreamUnreachable("connection closed during login".into()),
    }
}

/// Reads the upstream password at connect time, so a rotated secret file is picked up without
/// a restart. A sealed value (in the config, or as the content of the variable or file) is
/// opened with the keyring. The value is wiped from memory when dropped; errors never hold it.
fn read_password(login: &Login, secrets: &Secrets) -> PgResult<Zeroizing<String>> {
    tracing::trace!(
        server.user = %login.user,
        source = ?login.password,
        keys = ?secrets,
        "reading the upstream password"
    );
    match secrets.read_password(&login.password) {
        Ok(Some(password)) => Ok(password),
        Ok(None) => Err(PgError::UpstreamLogin(format!(
            "Postgres asks for a password for \"{}\" but none is configured \
             (server_password_sealed, server_password_env or server_password_file)",
            login.user
        ))),
        Err(e) => Err(PgError::UpstreamLogin(e.to_string())),
    }
}
