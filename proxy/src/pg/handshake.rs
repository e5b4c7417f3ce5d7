//! The client's side of connection start: SSL/GSS negotiation, the startup packet, cancel
//! requests, and authentication. Ends when the client is authenticated (AuthenticationOk sent);
//! the session then sets up its server-side state.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sentinel_wire::{StartupPacket, decode_startup, encode, parse_sasl_initial_response, tag};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::auth::scram::{ScramServer, ScramVerifier};
use super::conn::{BoxStream, Conn, ReadError};
use super::error::{PgError, PgResult};
use super::{PgLive, PgShared};
use crate::config::{ClientAuth, Source};
use sentinel_policy::keys::verify_tenant_token;
use sentinel_policy::tenant::{ContextError, TenantId};

use super::tenancy::Refusal;

/// Startup parameters that describe the connection rather than settings to apply.
const CONNECTION_PARAMS: &[&str] = &["user", "database", "options", "replication"];

pub struct ClientLogin {
    pub conn: Conn,
    pub user: String,
    pub server_user: String,
    pub database: String,
    /// Settings the client asked for at startup, applied on whichever server it uses.
    pub params: BTreeMap<String, String>,
    /// The tenant the whole connection is bound to, by its token or startup parameter.
    pub bound: Option<(TenantId, Source)>,
    /// The client connection is encrypted.
    pub tls: bool,
}

pub enum Accepted {
    Login(Box<ClientLogin>),
    Cancel { process_id: u32, secret_key: Bytes },
}

/// Runs the startup phase. Not cancel safe (the caller bounds it with client_login_timeout).
pub async fn accept(
    mut stream: BoxStream,
    peer: Option<IpAddr>,
    shared: &PgShared,
    live: &PgLive,
) -> PgResult<Accepted> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut encrypted = false;
    let (minor, startup) = loop {
        let packet = loop {
            match decode_startup(&mut buf) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => return Err(refuse(&mut stream, e.into()).await),
            }
            if stream.read_buf(&mut buf).await.map_err(PgError::ClientIo)? == 0 {
                return Err(PgError::ClientIo(std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if encrypted => {
                return Err(refuse(
                    &mut stream,
                    PgError::Unexpected("second encryption request"),
                )
                .await);
            }
            StartupPacket::SslRequest => {
                // Bytes sent after the request but before the handshake would be read as if
                // they had been encrypted: refuse them (the CVE-2021-23222 class of bug).
                if !buf.is_empty() {
                    return Err(
                        refuse(&mut stream, PgError::Unexpected("data after SSLRequest")).await,
                    );
                }
                let accept = shared.tls.clone();
                let mut answer = BytesMut::new();
                encode::ssl_response(&mut answer, accept.is_some());
                stream.write_all(&answer).await.map_err(PgError::ClientIo)?;
                stream.flush().await.map_err(PgError::ClientIo)?;
                if let Some(acceptor) = accept {
                    let tls = acceptor.accept(stream).await.map_err(PgError::ClientIo)?;
                    stream = Box::new(tls);
                    encrypted = true;
                }
            }
            StartupPacket::GssEncRequest => {
                let mut answer = BytesMut::new();
                encode::ssl_response(&mut answer, false);
                stream.write_all(&answer).await.map_err(PgError::ClientIo)?;
                stream.flush().await.map_err(PgError::ClientIo)?;
            }
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                return Ok(Accepted::Cancel {
                    process_id,
                    secret_key,
                });
            }
            StartupPacket::Startup { minor, params } => break (minor, params),
        }
    };

    let mut conn = Conn::new(stream, live.config.postgres.max_message_bytes);
    conn.rbuf = buf;
    let secure = encrypted || peer.is_some_and(|ip| ip.is_loopback());
    match login(&mut conn, minor, &startup, peer, secure, shared, live).await {
        Ok(ClientParams {
            user,
            server_user,
            database,
            params,
            bound,
        }) => Ok(Accepted::Login(Box::new(ClientLogin {
            conn,
            user,
            server_user,
            database,
            params,
            bound,
            tls: encrypted,
        }))),
        Err(e) => {
            if !matches!(e, PgError::ClientIo(_)) {
                e.encode(&mut conn.wbuf, "FATAL");
                conn.shutdown().await;
            }
            Err(e)
        }
    }
}

/// Tells the client why it is refused before the connection is closed.
async fn refuse(stream: &mut BoxStream, e: PgError) -> PgError {
    let mut out = BytesMut::new();
    e.encode(&mut out, "FATAL");
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    e
}

async fn login(
    conn: &mut Conn,
    minor: u16,
    startup: &[(String, String)],
    peer: Option<IpAddr>,
    secure: bool,
    shared: &PgShared,
    live: &PgLive,
) -> PgResult<ClientParams> {
    let mut login = read_startup(startup, peer, live)?;

    // Sentinel speaks protocol 3.0 and no `_pq_` extensions; say so, as Postgres does.
    let extensions: Vec<&str> = startup
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("_pq_."))
        .collect();
    if minor > 0 || !extensions.is_empty() {
        encode::negotiate_protocol_version(&mut conn.wbuf, 0, &extensions);
    }

    if let Some(token_tenant) = authenticate(conn, &login.user, peer, secure, shared, live).await? {
        if login
            .bound
            .as_ref()
            .is_some_and(|(tenant, _)| tenant != &token_tenant)
        {
            return Err(PgError::Tenancy(Refusal::Context(
                ContextError::BoundSwitch,
            )));
        }
        login.bound = Some((token_tenant, Source::Token));
    }
    Ok(login)
}

struct ClientParams {
    user: String,
    server_user: String,
    database: String,
    params: BTreeMap<String, String>,
    bound: Option<(TenantId, Source)>,
}

fn read_startup(
    startup: &[(String, String)],
    peer: Option<IpAddr>,
    live: &PgLive,
) -> PgResult<ClientParams> {
    let get = |name| StartupPacket::param(startup, name);
    let user = get("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| PgError::InvalidParameter("no user name given".into()))?
        .to_owned();
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err(PgError::FeatureNotSupported(
            "replication connections are not supported",
        ));
    }
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();
    let mut params = BTreeMap::new();
    for (name, value) in startup {
        if CONNECTION_PARAMS.contains(&name.as_str()) || name.starts_with("_pq_.") {
            continue;
        }
        params.insert(checked_name(name)?, value.clone());
    }
    if let Some(options) = get("options") {
        for (name, value) in parse_options(options)? {
            params.insert(checked_name(&name)?, value);
        }
    }
    if let Some(encoding) = params.get("client_encoding") {
        // Sentinel reads query text and server messages as UTF-8 (SQL_ASCII, which C-locale
        // psql asks for, passes bytes unconverted and so is UTF-8 in practice).
        // Postgres ignores everything but letters and digits in encoding names ('utf-8' too).
        let normalized: String = encoding
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        if !matches!(normalized.as_str(), "utf8" | "unicode" | "sqlascii") {
            return Err(PgError::FeatureNotSupported(
                "Sentinel supports client_encoding UTF8 only",
            ));
        }
    }
    let bound = startup_tenant(&mut params, &user, peer, live)?.map(|t| (t, Source::Startup));
    let server_user = live
        .users
        .get(&user)
        .map(|u| u.config.server_user().to_owned())
        .unwrap_or_else(|| user.clone());
    Ok(ClientParams {
        user,
        server_user,
        database,
        params,
        bound,
    })
}

/// The startup source: `sentinel.tenant` (or the tenant setting itself) as a startup parameter
/// or `-c` option, trusted only from `startup_networks`. Never passed on as a setting. Startup
/// settings that would change whose row-level security applies are refused.
fn startup_tenant(
    params: &mut BTreeMap<String, String>,
    user: &str,
    peer: Option<IpAddr>,
    live: &PgLive,
) -> PgResult<Option<TenantId>> {
    let tenancy = &live.config.tenancy;
    if !tenancy.enabled || tenancy.bypass_users.iter().any(|u| u == user) {
        return Ok(None);
    }
    for forbidden in ["role", "session_authorization"] {
        if params.contains_key(forbidden) {
            return Err(PgError::Tenancy(Refusal::StartupRole));
        }
    }
    // Statements are checked as Postgres reads them with standard-conforming strings.
    if params
        .get("standard_conforming_strings")
        .is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "1" | "yes"))
    {
        return Err(PgError::Tenancy(Refusal::Forbidden(
            sentinel_policy::sql::Forbidden::StringSyntax,
        )));
    }
    let setting = tenancy.setting.to_ascii_lowercase();
    let mut value = None;
    for name in ["sentinel.tenant", setting.as_str()] {
        if let Some(v) = params.remove(name) {
            if value.as_ref().is_some_and(|prev| prev != &v) {
                return Err(PgError::Tenancy(Refusal::Context(
                    ContextError::BoundSwitch,
                )));
            }
            value = Some(v);
        }
    }
    let Some(value) = value else {
        return Ok(None);
    };
    let trusted = peer.is_some_and(|ip| tenancy.startup_networks.iter().any(|n| n.contains(&ip)));
    if !tenancy.allows(Source::Startup) || !trusted {
        return Err(PgError::Tenancy(Refusal::SourceRefused(
            "a tenant in the startup parameters is not accepted from this address \
             (tenancy.sources and tenancy.startup_networks)",
        )));
    }
    let tenant = live
        .tenancy
        .pattern
        .parse(&value)
        .map_err(|_| PgError::Tenancy(Refusal::InvalidTenant))?;
    Ok(Some(tenant))
}

/// Setting names end up in `SET` statements: allow only what Postgres names look like.
fn checked_name(name: &str) -> PgResult<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(PgError::InvalidParameter(format!(
            "invalid parameter name {name:?}"
        )))
    }
}

/// Splits the `options` startup parameter (`-c name=value`, `-cname=value`, `--name=value`),
/// honouring libpq's backslash escapes.
fn parse_options(options: &str) -> PgResult<Vec<(String, String)>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words
                .next()
                .ok_or_else(|| PgError::InvalidParameter("-c without a setting".into()))?
        } else if let Some(s) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            s.to_owned()
        } else {
            return Err(PgError::InvalidParameter(format!(
                "unsupported option {w:?}"
            )));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| PgError::InvalidParameter(format!("option {setting:?} has no value")))?;
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

/// Authenticates the client; with a tenant token, returns the tenant it names.
async fn authenticate(
    conn: &mut Conn,
    user: &str,
    peer: Option<IpAddr>,
    secure: bool,
    shared: &PgShared,
    live: &PgLive,
) -> PgResult<Option<TenantId>> {
    let entry = live.users.get(user);
    let mut tenant = None;
    match entry.map(|e| e.config.auth) {
        Some(ClientAuth::TenantToken) => {
            if !secure {
                // The token travels in clear text: never over an unencrypted network hop.
                return Err(PgError::Tenancy(Refusal::SourceRefused(
                    "a tenant token is accepted only over TLS or from loopback",
                )));
            }
            tenant = Some(token_exchange(conn, user, shared, live).await?);
        }
        Some(ClientAuth::Trust) => {
            let trusted = peer.is_some_and(|ip| {
                live.config
                    .postgres
                    .trust_networks
                    .iter()
                    .any(|net| net.contains(&ip))
            });
            if !trusted {
                return Err(PgError::TrustRefused {
                    user: user.to_owned(),
                });
            }
        }
        Some(ClientAuth::ScramSha256) | None => {
            // Unknown users go through the same exchange with a fake verifier and fail at the
            // end, so the answer does not tell which user names exist.
            let verifier = match entry.and_then(|e| e.verifier.clone()) {
                Some(v) => v,
                None => ScramVerifier::fake(user, &shared.fake_secret),
            };
            scram_exchange(conn, user, verifier, entry.is_some()).await?;
        }
    }
    encode::auth_ok(&mut conn.wbuf);
    Ok(tenant)
}

/// Asks for the password in clear text and checks it as a tenant token.
async fn token_exchange(
    conn: &mut Conn,
    user: &str,
    shared: &PgShared,
    live: &PgLive,
) -> PgResult<TenantId> {
    encode::auth_cleartext_password(&mut conn.wbuf);
    conn.flush().await.map_err(PgError::ClientIo)?;
    let frame = read_password_message(conn).await?;
    let body = frame.body();
    let token = body.strip_suffix(&[0]).unwrap_or(body);
    let token = std::str::from_utf8(token).map_err(|_| PgError::AuthFailed(user.to_owned()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = verify_tenant_token(shared.secrets.keyring(), shared.secrets.salt(), token, now)
        .map_err(|e| {
        tracing::info!(user, reason = e.label(), "tenant token refused");
        PgError::AuthFailed(user.to_owned())
    })?;
    live.tenancy
        .pattern
        .parse(&claims.tenant)
        .map_err(|_| PgError::Tenancy(Refusal::InvalidTenant))
}

async fn scram_exchange(
    conn: &mut Conn,
    user: &str,
    verifier: ScramVerifier,
    known: bool,
) -> PgResult<()> {
    let failed = || PgError::AuthFailed(user.to_owned());
    let mut server = ScramServer::new(verifier);
    encode::auth_sasl(&mut conn.wbuf, &[ScramServer::MECHANISM]);
    conn.flush().await.map_err(PgError::ClientIo)?;

    let frame = read_password_message(conn).await?;
    let (mechanism, first) = parse_sasl_initial_response(frame.body())?;
    if mechanism != ScramServer::MECHANISM {
        return Err(PgError::FeatureNotSupported(
            "only SCRAM-SHA-256 is supported",
        ));
    }
    let server_first = server.client_first(first).map_err(|_| failed())?;
    encode::auth_sasl_continue(&mut conn.wbuf, &server_first);
    conn.flush().await.map_err(PgError::ClientIo)?;

    let frame = read_password_message(conn).await?;
    let server_final = server.client_final(frame.body()).map_err(|_| failed())?;
    if !known {
        return Err(failed());
    }
    encode::auth_sasl_final(&mut conn.wbuf, &server_final);
    Ok(())
}

async fn read_password_message(conn: &mut Conn) -> PgResult<sentinel_wire::Frame> {
    let frame = conn.read_frame().await.map_err(|e| match e {
        ReadError::Wire(w) => PgError::Protocol(w),
        ReadError::Io(e) => PgError::ClientIo(e),
        ReadError::Eof => PgError::ClientIo(std::io::ErrorKind::UnexpectedEof.into()),
    })?;
    if frame.tag != tag::frontend::PASSWORD {
        return Err(PgError::Unexpected(
            "non-password message during authentication",
        ));
    }
    Ok(frame)
}

/// Known users and their parsed verifiers, built once from the config.
pub struct UserEntry {
    pub config: crate::config::UserConfig,
    pub verifier: Option<ScramVerifier>,
}

pub type Users = std::collections::HashMap<String, Arc<UserEntry>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_forms() {
        let parsed = parse_options(r"-c search_path=a\,b -capplication_name=x\ y --work-mem=4MB")
            .expect("valid");
        assert_eq!(
            parsed,
            vec![
                ("search_path".into(), "a,b".into()),
                ("application_name".into(), "x y".into()),
                ("work_mem".into(), "4MB".into()),
            ]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-c novalue").is_err());
    }

    #[test]
    fn parameter_names_are_checked() {
        assert_eq!(checked_name("DateStyle").expect("valid"), "datestyle");
        assert!(checked_name("a;drop table x").is_err());
        assert!(checked_name("").is_err());
    }
}
