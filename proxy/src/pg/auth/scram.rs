//! Server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, used to
//! authenticate the proxy's *clients*.
//!
//! The proxy never holds plaintext passwords: it is configured with verifiers in PostgreSQL's
//! stored format (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, the text of
//! `pg_authid.rolpassword`), from which the exchange can be checked but no password recovered.
//! Unknown users get a [`ScramVerifier::fake`] verifier so the exchange looks the same and fails
//! the same way, revealing nothing about which users exist. Channel binding
//! (SCRAM-SHA-256-PLUS) is not offered.
//!
//! The module is pure: it parses and produces message payloads only (the data of
//! SASLInitialResponse / AuthenticationSASLContinue / SASLResponse / AuthenticationSASLFinal);
//! framing and I/O belong to the caller.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroize;

/// Prefix of a SCRAM-SHA-256 verifier in PostgreSQL's stored format.
const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";
/// PostgreSQL's default iteration count (`scram_iterations`), also used for fake verifiers.
const DEFAULT_ITERATIONS: u32 = 4096;
/// PostgreSQL's default salt length in bytes, also used for fake verifiers.
const DEFAULT_SALT_LEN: usize = 16;
/// Raw length of the server's nonce part, as PostgreSQL (`SCRAM_RAW_NONCE_LEN`).
const SERVER_NONCE_LEN: usize = 18;
/// Length of SHA-256 output: StoredKey, ServerKey, ClientProof.
const KEY_LEN: usize = 32;

/// A parsed SCRAM-SHA-256 verifier. Its `Debug` output is redacted (iterations only).
#[derive(Clone)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
    /// Set for [`ScramVerifier::fake`]: the exchange then always fails, whatever the proof.
    fake: bool,
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Drop for ScramVerifier {
    fn drop(&mut self) {
        self.stored_key.zeroize();
        self.server_key.zeroize();
    }
}

impl FromStr for ScramVerifier {
    type Err = ScramError;

    /// Parses `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
    /// Surrounding whitespace is ignored; anything else out of place is an error naming the part.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix(VERIFIER_PREFIX)
            .ok_or(ScramError::InvalidVerifier(
                "must start with \"SCRAM-SHA-256$\"",
            ))?;
        let (iterations_salt, keys) = rest.split_once('$').ok_or(ScramError::InvalidVerifier(
            "missing '$' between <iterations>:<salt> and <StoredKey>:<ServerKey>",
        ))?;
        let (iterations, salt) =
            iterations_salt
                .split_once(':')
                .ok_or(ScramError::InvalidVerifier(
                    "missing ':' between iteration count and salt",
                ))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(ScramError::InvalidVerifier(
            "missing ':' between StoredKey and ServerKey",
        ))?;

        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ScramError::InvalidVerifier(
                "iteration count is not a decimal number",
            ));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| ScramError::InvalidVerifier("iteration count is out of range"))?;
        if iterations == 0 {
            return Err(ScramError::InvalidVerifier(
                "iteration count must be positive",
            ));
        }

        let salt = BASE64
            .decode(salt)
            .map_err(|_| ScramError::InvalidVerifier("salt is not valid base64"))?;
        if salt.is_empty() {
            return Err(ScramError::InvalidVerifier("salt is empty"));
        }

        let stored_key = decode_key(
            stored_key,
            "StoredKey is not valid base64",
            "StoredKey is not 32 bytes",
        )?;
        let server_key = decode_key(
            server_key,
            "ServerKey is not valid base64",
            "ServerKey is not 32 bytes",
        )?;

        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
            fake: false,
        })
    }
}

impl ScramVerifier {
    /// Prints a verifier for a password, in Postgres's format (4096 iterations, random 16-byte
    /// salt, SASLprep applied as PostgreSQL does).
    pub fn make(password: &[u8]) -> String {
        postgres_protocol::password::scram_sha_256(password)
    }

    /// A stable fake verifier for an unknown user, so the exchange looks the same (same
    /// iteration count and salt length as [`ScramVerifier::make`], same salt on every attempt)
    /// and reveals nothing about which users exist. Salt and keys derive from
    /// HMAC-SHA256(`secret`, `username`); `secret` should be random per process. An exchange
    /// against a fake verifier always ends in [`ScramError::WrongProof`].
    pub fn fake(username: &str, secret: &[u8; 32]) -> ScramVerifier {
        let mut seed = hmac_sha256(secret, &[username.as_bytes()]);
        let mut salt = hmac_sha256(&seed, &[b"sentinel-scram-fake-salt"]);
        let stored_key = hmac_sha256(&seed, &[b"sentinel-scram-fake-stored-key"]);
        let server_key = hmac_sha256(&seed, &[b"sentinel-scram-fake-server-key"]);
        seed.zeroize();
        let verifier = ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: salt[..DEFAULT_SALT_LEN].to_vec(),
            stored_key,
            server_key,
            fake: true,
        };
        salt.zeroize();
        verifier
    }
}

/// Why a verifier or an exchange was refused. Messages never echo client input or key material.
///
/// Suggested SQLSTATEs, as PostgreSQL: `MalformedMessage`, `ChannelBindingNotSupported` and
/// `NonceMismatch` → 08P01 (protocol violation); `WrongProof` → 28P01 (invalid password, reported
/// to the client as "password authentication failed for user ..."). `InvalidVerifier` is a
/// configuration error; `OutOfOrder` is a caller bug.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    /// The configured verifier string is not a valid SCRAM-SHA-256 verifier.
    #[error("invalid SCRAM-SHA-256 verifier: {0}")]
    InvalidVerifier(&'static str),
    /// A client message does not follow the SCRAM grammar; the payload names the part.
    #[error("malformed SCRAM message: {0}")]
    MalformedMessage(&'static str),
    /// The client asked for channel binding (gs2 flag `p=`), i.e. SCRAM-SHA-256-PLUS, which is
    /// not offered.
    #[error(
        "malformed SCRAM message: the client requested channel binding ('p=' gs2 flag), but \
         SCRAM-SHA-256-PLUS is not offered"
    )]
    ChannelBindingNotSupported,
    /// The nonce in client-final-message is not the one the server sent.
    #[error("malformed SCRAM message: nonce does not match")]
    NonceMismatch,
    /// The client proof is wrong (wrong password, or unknown user with a fake verifier).
    #[error("password authentication failed")]
    WrongProof,
    /// A step was called out of order (e.g. `client_final` before `client_first`, twice, or
    /// after a failed step).
    #[error("SCRAM exchange step called out of order")]
    OutOfOrder,
}

/// Where one exchange stands.
enum State {
    AwaitingClientFirst,
    AwaitingClientFinal(Pending),
    /// Succeeded or failed: no further step is accepted.
    Finished,
}

/// What `client_first` leaves for `client_final`. None of it is secret (all of it crosses the
/// wire).
struct Pending {
    /// The gs2 header exactly as the client sent it (e.g. `n,,`); `c=` must encode it.
    gs2_header: Vec<u8>,
    client_first_bare: Vec<u8>,
    server_first: Vec<u8>,
    /// Client nonce followed by server nonce.
    nonce: Vec<u8>,
}

/// The server side of one SCRAM-SHA-256 exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    state: State,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::AwaitingClientFirst => "awaiting client-first-message",
            State::AwaitingClientFinal(_) => "awaiting client-final-message",
            State::Finished => "finished",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// The SASL mechanism name to offer in AuthenticationSASL.
    pub const MECHANISM: &'static str = "SCRAM-SHA-256";

    pub fn new(verifier: ScramVerifier) -> Self {
        ScramServer {
            verifier,
            state: State::AwaitingClientFirst,
        }
    }

    /// Takes the client-first-message (the data of the client's SASLInitialResponse), returns
    /// the server-first-message to send in AuthenticationSASLContinue.
    ///
    /// Accepts gs2 headers `n,,` and `y,,`, with an optional authzid `a=...` that is ignored;
    /// the username in `n=` is ignored too (the startup user is the one authenticated).
    /// Refuses `p=` (channel binding) and mandatory extensions (`m=`).
    pub fn client_first(&mut self, client_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::AwaitingClientFirst) {
            self.state = State::Finished;
            return Err(ScramError::OutOfOrder);
        }
        // Any failure ends the exchange.
        self.state = State::Finished;

        let parsed = parse_client_first(client_first)?;

        let mut raw_nonce = [0u8; SERVER_NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut raw_nonce);
        let server_nonce = BASE64.encode(raw_nonce);

        let mut nonce = parsed.client_nonce.to_vec();
        nonce.extend_from_slice(server_nonce.as_bytes());

        let mut server_first = Vec::with_capacity(nonce.len() + 64);
        server_first.extend_from_slice(b"r=");
        server_first.extend_from_slice(&nonce);
        server_first.extend_from_slice(b",s=");
        server_first.extend_from_slice(BASE64.encode(&self.verifier.salt).as_bytes());
        server_first.extend_from_slice(b",i=");
        server_first.extend_from_slice(self.verifier.iterations.to_string().as_bytes());

        self.state = State::AwaitingClientFinal(Pending {
            gs2_header: parsed.gs2_header.to_vec(),
            client_first_bare: parsed.bare.to_vec(),
            server_first: server_first.clone(),
            nonce,
        });
        Ok(server_first)
    }

    /// Takes the client-final-message (the data of the client's SASLResponse), checks the
    /// channel-binding attribute, the nonce and the proof, and returns the server-final-message
    /// `v=<base64 ServerSignature>` for AuthenticationSASLFinal. `Ok` means authenticated.
    pub fn client_final(&mut self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let pending = match std::mem::replace(&mut self.state, State::Finished) {
            State::AwaitingClientFinal(pending) => pending,
            State::AwaitingClientFirst | State::Finished => return Err(ScramError::OutOfOrder),
        };

        let parsed = parse_client_final(client_final)?;

        let channel_binding = BASE64.decode(parsed.channel_binding).map_err(|_| {
            ScramError::MalformedMessage("channel-binding attribute 'c=' is not valid base64")
        })?;
        if channel_binding != pending.gs2_header {
            return Err(ScramError::MalformedMessage(
                "channel-binding attribute 'c=' does not match the gs2 header",
            ));
        }

        if parsed.nonce != pending.nonce.as_slice() {
            return Err(ScramError::NonceMismatch);
        }

        let mut proof = BASE64
            .decode(parsed.proof)
            .map_err(|_| ScramError::MalformedMessage("client proof 'p=' is not valid base64"))?;
        if proof.len() != KEY_LEN {
            proof.zeroize();
            return Err(ScramError::MalformedMessage(
                "client proof 'p=' is not 32 bytes",
            ));
        }

        // AuthMessage = client-first-message-bare "," server-first-message ","
        //               client-final-message-without-proof
        let mut auth_message = Vec::with_capacity(
            pending.client_first_bare.len()
                + pending.server_first.len()
                + parsed.without_proof.len()
                + 2,
        );
        auth_message.extend_from_slice(&pending.client_first_bare);
        auth_message.push(b',');
        auth_message.extend_from_slice(&pending.server_first);
        auth_message.push(b',');
        auth_message.extend_from_slice(parsed.without_proof);

        // ClientSignature = HMAC(StoredKey, AuthMessage); ClientKey = proof XOR ClientSignature;
        // the proof is right iff SHA256(ClientKey) == StoredKey.
        let mut client_signature = hmac_sha256(&self.verifier.stored_key, &[&auth_message]);
        let mut client_key = [0u8; KEY_LEN];
        for ((key, p), s) in client_key.iter_mut().zip(&proof).zip(&client_signature) {
            *key = p ^ s;
        }
        let mut computed_stored_key: [u8; KEY_LEN] = Sha256::digest(client_key).into();
        let matches: Choice = computed_stored_key.ct_eq(&self.verifier.stored_key)
            & Choice::from(u8::from(!self.verifier.fake));
        client_signature.zeroize();
        client_key.zeroize();
        computed_stored_key.zeroize();
        proof.zeroize();

        if !bool::from(matches) {
            return Err(ScramError::WrongProof);
        }

        // ServerSignature = HMAC(ServerKey, AuthMessage)
        let server_signature = hmac_sha256(&self.verifier.server_key, &[&auth_message]);
        let mut server_final = b"v=".to_vec();
        server_final.extend_from_slice(BASE64.encode(server_signature).as_bytes());
        Ok(server_final)
    }
}

/// HMAC-SHA-256 with a 32-byte key over the concatenation of `parts`.
fn hmac_sha256(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC pads a key shorter than the hash block (64 bytes for SHA-256) with zeros (RFC 2104
    // section 2), so the zero-padded block is the same key, and the infallible `new` applies.
    let mut block = [0u8; 64];
    block[..KEY_LEN].copy_from_slice(key);
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
    block.zeroize();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Decodes a base64 key of exactly 32 bytes (StoredKey or ServerKey).
fn decode_key(
    text: &str,
    not_base64: &'static str,
    wrong_len: &'static str,
) -> Result<[u8; KEY_LEN], ScramError> {
    let mut decoded = BASE64
        .decode(text)
        .map_err(|_| ScramError::InvalidVerifier(not_base64))?;
    let key = <[u8; KEY_LEN]>::try_from(decoded.as_slice())
        .map_err(|_| ScramError::InvalidVerifier(wrong_len));
    decoded.zeroize();
    key
}

/// The parts of a client-first-message the exchange needs.
struct ClientFirst<'a> {
    gs2_header: &'a [u8],
    bare: &'a [u8],
    client_nonce: &'a [u8],
}

/// client-first-message = gs2-header client-first-message-bare
/// gs2-header = gs2-cbind-flag "," [ authzid ] ","
/// client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>, ScramError> {
    if msg.is_empty() {
        return Err(ScramError::MalformedMessage(
            "client-first-message is empty",
        ));
    }
    if msg.contains(&0) {
        return Err(ScramError::MalformedMessage(
            "client-first-message contains a NUL byte",
        ));
    }

    let after_flag = match msg {
        [b'n' | b'y', b',', rest @ ..] => rest,
        [b'p', b'=', ..] => return Err(ScramError::ChannelBindingNotSupported),
        _ => {
            return Err(ScramError::MalformedMessage(
                "gs2 header: channel-binding flag must be 'n' or 'y' followed by ','",
            ));
        }
    };
    let authzid_end =
        after_flag
            .iter()
            .position(|&b| b == b',')
            .ok_or(ScramError::MalformedMessage(
                "gs2 header: missing final ','",
            ))?;
    let authzid = &after_flag[..authzid_end];
    if !authzid.is_empty() && !authzid.starts_with(b"a=") {
        return Err(ScramError::MalformedMessage(
            "gs2 header: authorization identity must be 'a=...'",
        ));
    }
    let bare = &after_flag[authzid_end + 1..];
    let gs2_header = &msg[..msg.len() - bare.len()];

    let mut attributes = bare.split(|&b| b == b',');
    let username = attributes.next().unwrap_or_default();
    if username.starts_with(b"m=") {
        return Err(ScramError::MalformedMessage(
            "mandatory extension 'm=' is not supported",
        ));
    }
    // The username is ignored: the startup message's user is the one authenticated.
    attribute(username, b'n').ok_or(ScramError::MalformedMessage(
        "client-first-message-bare: username 'n=' expected",
    ))?;
    let client_nonce =
        attributes
            .next()
            .and_then(|a| attribute(a, b'r'))
            .ok_or(ScramError::MalformedMessage(
                "client-first-message-bare: nonce 'r=' expected after the username",
            ))?;
    if client_nonce.is_empty() || !client_nonce.iter().all(|&b| is_printable(b)) {
        return Err(ScramError::MalformedMessage(
            "client nonce is empty or not printable",
        ));
    }
    // Optional extensions are ignored, but must look like attributes.
    if !attributes.all(is_any_attribute) {
        return Err(ScramError::MalformedMessage(
            "client-first-message-bare: malformed attribute after the nonce",
        ));
    }

    Ok(ClientFirst {
        gs2_header,
        bare,
        client_nonce,
    })
}

/// The parts of a client-final-message the exchange needs.
struct ClientFinal<'a> {
    channel_binding: &'a [u8],
    nonce: &'a [u8],
    proof: &'a [u8],
    without_proof: &'a [u8],
}

/// client-final-message = channel-binding "," nonce ["," extensions] "," proof
fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>, ScramError> {
    if msg.is_empty() {
        return Err(ScramError::MalformedMessage(
            "client-final-message is empty",
        ));
    }
    if msg.contains(&0) {
        return Err(ScramError::MalformedMessage(
            "client-final-message contains a NUL byte",
        ));
    }

    let mut attributes = msg.split(|&b| b == b',');
    let channel_binding =
        attributes
            .next()
            .and_then(|a| attribute(a, b'c'))
            .ok_or(ScramError::MalformedMessage(
                "client-final-message: channel binding 'c=' expected first",
            ))?;
    let nonce =
        attributes
            .next()
            .and_then(|a| attribute(a, b'r'))
            .ok_or(ScramError::MalformedMessage(
                "client-final-message: nonce 'r=' expected after channel binding",
            ))?;

    let mut proof = None;
    for attr in attributes {
        if proof.is_some() {
            return Err(ScramError::MalformedMessage(
                "client-final-message: data after the proof 'p='",
            ));
        }
        if !is_any_attribute(attr) {
            return Err(ScramError::MalformedMessage(
                "client-final-message: malformed attribute before the proof",
            ));
        }
        proof = attribute(attr, b'p');
    }
    let proof = proof.ok_or(ScramError::MalformedMessage(
        "client-final-message: proof 'p=' missing",
    ))?;
    // The proof is the last attribute: strip ",p=<proof>".
    let without_proof = &msg[..msg.len() - proof.len() - ",p=".len()];

    Ok(ClientFinal {
        channel_binding,
        nonce,
        proof,
        without_proof,
    })
}

/// The value of `attr` if it is `<name>=<value>`.
fn attribute(attr: &[u8], name: u8) -> Option<&[u8]> {
    match attr {
        [n, b'=', value @ ..] if *n == name => Some(value),
        _ => None,
    }
}

/// Whether `attr` has the shape of any attribute: an ASCII letter, '=', a value.
fn is_any_attribute(attr: &[u8]) -> bool {
    matches!(attr, [n, b'=', ..] if n.is_ascii_alphabetic())
}

/// RFC 5802 `printable`: %x21-2B / %x2D-7E (visible ASCII except ',').
fn is_printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A verifier from PostgreSQL's own regression suite (src/test/regress/sql/password.sql,
    /// role regress_passwd_sha_len0); its password is "password".
    const PG_REGRESS_VERIFIER: &str = "SCRAM-SHA-256$4096:A6xHKoH/494E941doaPOYg==$Ky+A30sewHIH3VHQLRN9vYsuzlgNyGNKCh37dy96Rqw=:COPdlNiIkrsacU5QoxydEuOH6e/KfiipeETb/bPw8ZI=";

    /// Runs a whole exchange between the real client implementation and a server.
    fn exchange(
        verifier: ScramVerifier,
        password: &[u8],
        channel_binding: ChannelBinding,
    ) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password, channel_binding);
        let mut server = ScramServer::new(verifier);
        let server_first = server.client_first(client.message())?;
        client.update(&server_first).unwrap();
        let server_final = server.client_final(client.message())?;
        client.finish(&server_final).unwrap();
        Ok(())
    }

    /// Drives a server to the point of the real client's client-final-message.
    fn started(verifier: ScramVerifier, password: &[u8]) -> (ScramServer, String) {
        let mut client = ScramSha256::new(password, ChannelBinding::unsupported());
        let mut server = ScramServer::new(verifier);
        let server_first = server.client_first(client.message()).unwrap();
        client.update(&server_first).unwrap();
        let client_final = String::from_utf8(client.message().to_vec()).unwrap();
        (server, client_final)
    }

    fn hmac_slice(key: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// PBKDF2-HMAC-SHA256 with one output block (RFC 5802 `Hi`), written out by hand.
    fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut first = salt.to_vec();
        first.extend_from_slice(&[0, 0, 0, 1]);
        let mut u = hmac_slice(password, &first);
        let mut out = u;
        for _ in 1..iterations {
            u = hmac_slice(password, &u);
            for (o, x) in out.iter_mut().zip(u) {
                *o ^= x;
            }
        }
        out
    }

    /// Independently computes (StoredKey, ServerKey, SaltedPassword) for a password.
    fn keys(password: &[u8], salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32], [u8; 32]) {
        let salted = hi(password, salt, iterations);
        let client_key = hmac_slice(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac_slice(&salted, b"Server Key");
        (stored_key, server_key, salted)
    }

    /// A hand-written client-final-message for a given gs2 header (the real client can only
    /// send `n,,` / `y,,` / `p=`), with the proof computed independently.
    fn manual_client_final(
        password: &[u8],
        gs2_header: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> String {
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = fields[0].strip_prefix("r=").unwrap();
        let salt = BASE64
            .decode(fields[1].strip_prefix("s=").unwrap())
            .unwrap();
        let iterations: u32 = fields[2].strip_prefix("i=").unwrap().parse().unwrap();
        let (stored_key, _, salted) = keys(password, &salt, iterations);
        let client_key = hmac_slice(&salted, b"Client Key");
        let without_proof = format!("c={},r={nonce}", BASE64.encode(gs2_header));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_slice(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    #[test]
    fn real_client_succeeds_with_right_password() {
        let verifier: ScramVerifier = ScramVerifier::make(b"correct horse").parse().unwrap();
        exchange(verifier, b"correct horse", ChannelBinding::unsupported()).unwrap();
    }

    #[test]
    fn real_client_succeeds_with_y_flag() {
        // "y,,": the client supports channel binding but sees the server does not offer it.
        let verifier: ScramVerifier = ScramVerifier::make(b"pw").parse().unwrap();
        exchange(verifier, b"pw", ChannelBinding::unrequested()).unwrap();
    }

    #[test]
    fn real_client_succeeds_with_non_ascii_password() {
        // make() and the client both apply SASLprep.
        let verifier: ScramVerifier = ScramVerifier::make("pässwörd\u{00A0}".as_bytes())
            .parse()
            .unwrap();
        exchange(
            verifier,
            "pässwörd\u{00A0}".as_bytes(),
            ChannelBinding::unsupported(),
        )
        .unwrap();
    }

    #[test]
    fn wrong_password_fails_with_wrong_proof() {
        let verifier: ScramVerifier = ScramVerifier::make(b"right").parse().unwrap();
        let err = exchange(verifier, b"wrong", ChannelBinding::unsupported()).unwrap_err();
        assert!(matches!(err, ScramError::WrongProof), "{err:?}");
        assert_eq!(err.to_string(), "password authentication failed");
    }

    #[test]
    fn server_first_message_shape() {
        let verifier: ScramVerifier = ScramVerifier::make(b"pw").parse().unwrap();
        let salt_b64 = BASE64.encode(&verifier.salt);
        let mut server = ScramServer::new(verifier);
        let server_first = server.client_first(b"n,,n=,r=clientnonce").unwrap();
        let server_first = String::from_utf8(server_first).unwrap();
        let fields: Vec<&str> = server_first.split(',').collect();
        assert_eq!(fields.len(), 3);
        let nonce = fields[0].strip_prefix("r=clientnonce").unwrap();
        // 18 random bytes, base64: 24 characters.
        assert_eq!(BASE64.decode(nonce).unwrap().len(), 18);
        assert_eq!(fields[1], format!("s={salt_b64}"));
        assert_eq!(fields[2], "i=4096");
    }

    #[test]
    fn server_nonces_are_fresh() {
        let verifier: ScramVerifier = ScramVerifier::make(b"pw").parse().unwrap();
        let a = ScramServer::new(verifier.clone())
            .client_first(b"n,,n=,r=x")
            .unwrap();
        let b = ScramServer::new(verifier)
            .client_first(b"n,,n=,r=x")
            .unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn tampered_nonce_is_refused() {
        let verifier: ScramVerifier = ScramVerifier::make(b"pw").parse().unwrap();
        let (mut server, client_final) = started(verifier, b"pw");
        // Change the last character of the nonce (the server's part).
        let (head, rest) = client_final.split_once(",p=").unwrap();
        let mut head = head.to_string();
        let last = head.pop().unwrap();
        head.push(if last == 'A' { 'B' } else { 'A' });
        let tampered = format!("{head},p={rest}");
        let err = server.client_final(tampered.as_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::NonceMismatch), "{err:?}");
    }

    #[test]
    fn tampered_proof_is_refused() {
        let verifier: ScramVerifier = ScramVerifier::make(b"pw").parse().unwrap();
        let (mut server, client_final) = started(verifier, b"pw");
        let (head, proof) = client_final.split_once(",p=").unwrap();
        let mut proof = BASE64.decode(proof).unwrap();
        proof[0] ^= 1;
        let tampered = format!("{head},p={}", BASE64.encode(proof));
        let err = server.client_final(tampered.as_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::WrongProof), "{err:?}");
    }

    #[test]
    fn channel_binding_mismatch_is_refused() {
        let verifier: ScramVerifier = ScramVerifier::make(b"pw").parse().unwrap();
        let (mut server, client_final) = started(verifier, b"pw");
        // The client sent "n,,"; claim "y,," (eSws) in c=.
        let tampered = client_final.replacen("c=biws", "c=eSws", 1);
        assert_ne!(tampered, client_final);
        let err = server.client_final(tampered.as_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::MalformedMessage(_)), "{err:?}");
    }

    #[test]
    fn channel_binding_p_flag_is_refused() {
        let verifier: ScramVerifier = ScramVerifier::make(b"pw").parse().unwrap();
        let client = ScramSha256::new(b"pw", ChannelBinding::tls_server_end_point(vec![1, 2, 3]));
        let mut server = ScramServer::new(verifier);
        let err = server.client_first(client.message()).unwrap_err();
        assert!(
            matches!(err, ScramError::ChannelBindingNotSupported),
            "{err:?}"
        );
        // The exchange is over.
        let err = server.client_final(b"c=biws,r=x,p=AAAA").unwrap_err();
        assert!(matches!(err, ScramError::OutOfOrder), "{err:?}");
    }

    #[test]
    fn malformed_client_first_messages_are_refused() {
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"x,,n=,r=abc",
            b"n,,",
            b"n,,r=abc",
            b"n,,n=",
            b"n,,n=,",
            b"n,,n=,r=",
            b"n,,n=,x=abc",
            b"n,,n=,r=ab\x7fc",
            b"n,,n=,r=ab c",
            b"n,,n=,r=abc\0",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=abc,",
            b"n,,n=,r=abc,1=x",
            b"n,b=x,n=,r=abc",
            b"n,a=x",
        ];
        for case in cases {
            let verifier: ScramVerifier = ScramVerifier::make(b"pw").parse().unwrap();
            let mut server = ScramServer::new(verifier);
            let err = server.client_first(case).unwrap_err();
            assert!(
                matches!(err, ScramError::MalformedMessage(_)),
                "{:?}: {err:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn malformed_client_final_messages_are_refused() {
        let verifier: ScramVerifier = ScramVerifier::make(b"pw").parse().unwrap();
        let (_, good) = started(verifier.clone(), b"pw");
        let (head, proof) = good.split_once(",p=").unwrap();
        let nonce = head.split_once(",r=").unwrap().1;
        let cases = vec![
            String::new(),
            "garbage".to_string(),
            format!("r={nonce},c=biws,p={proof}"),
            format!("c=biws,p={proof}"),
            format!("c=biws,r={nonce}"),
            format!("c=biws,r={nonce},p={proof},x=y"),
            format!("c=biws,r={nonce},p={proof},"),
            format!("c=biws,r={nonce},,p={proof}"),
            format!("c=!!!,r={nonce},p={proof}"),
            format!("c=biws,r={nonce},p=!!!"),
            format!("c=biws,r={nonce},p=AAAA"),
            format!("c=biws,r={nonce},p={proof}\0"),
        ];
        for case in cases {
            // A fresh server at the same point each time (the nonce is per-server).
            let (mut server, good) = started(verifier.clone(), b"pw");
            let (head, _) = good.split_once(",p=").unwrap();
            let fresh_nonce = head.split_once(",r=").unwrap().1;
            let case = case.replace(nonce, fresh_nonce);
            let err = server.client_final(case.as_bytes()).unwrap_err();
            assert!(
                matches!(err, ScramError::MalformedMessage(_)),
                "{case:?}: {err:?}"
            );
        }
    }

    #[test]
    fn extensions_in_client_final_are_ignored() {
        let verifier: ScramVerifier = PG_REGRESS_VERIFIER.parse().unwrap();
        let mut server = ScramServer::new(verifier);
        let bare = "n=someone,r=fyko+d2lbbFgONRv9qkxdawL,x=ext";
        let server_first = server
            .client_first(format!("n,,{bare}").as_bytes())
            .unwrap();
        let server_first = String::from_utf8(server_first).unwrap();
        let client_final = manual_client_final(b"password", "n,,", bare, &server_first);
        // Insert an extension between the nonce and the proof; it is part of the
        // without-proof text, so recompute with it present.
        let (head, _) = client_final.split_once(",p=").unwrap();
        let without_proof = format!("{head},y=ext");
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let fields: Vec<&str> = server_first.split(',').collect();
        let salt = BASE64
            .decode(fields[1].strip_prefix("s=").unwrap())
            .unwrap();
        let (stored_key, _, salted) = keys(b"password", &salt, 4096);
        let client_key = hmac_slice(&salted, b"Client Key");
        let signature = hmac_slice(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let message = format!("{without_proof},p={}", BASE64.encode(proof));
        server.client_final(message.as_bytes()).unwrap();
    }

    #[test]
    fn authzid_is_accepted_and_ignored() {
        let verifier: ScramVerifier = PG_REGRESS_VERIFIER.parse().unwrap();
        let mut server = ScramServer::new(verifier);
        let bare = "n=,r=abcdef";
        let server_first = server
            .client_first(format!("n,a=admin,{bare}").as_bytes())
            .unwrap();
        let server_first = String::from_utf8(server_first).unwrap();
        // c= must carry the header as sent, authzid included.
        let client_final = manual_client_final(b"password", "n,a=admin,", bare, &server_first);
        let server_final = server.client_final(client_final.as_bytes()).unwrap();
        assert!(server_final.starts_with(b"v="));
    }

    #[test]
    fn out_of_order_calls_are_refused() {
        let verifier: ScramVerifier = ScramVerifier::make(b"pw").parse().unwrap();

        // client_final before client_first.
        let mut server = ScramServer::new(verifier.clone());
        let err = server.client_final(b"c=biws,r=abc,p=AAAA").unwrap_err();
        assert!(matches!(err, ScramError::OutOfOrder), "{err:?}");
        // ... and that ends the exchange.
        let err = server.client_first(b"n,,n=,r=abc").unwrap_err();
        assert!(matches!(err, ScramError::OutOfOrder), "{err:?}");

        // client_first twice.
        let mut server = ScramServer::new(verifier.clone());
        server.client_first(b"n,,n=,r=abc").unwrap();
        let err = server.client_first(b"n,,n=,r=abc").unwrap_err();
        assert!(matches!(err, ScramError::OutOfOrder), "{err:?}");

        // Anything after a completed exchange.
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let mut server = ScramServer::new(verifier.clone());
        let server_first = server.client_first(client.message()).unwrap();
        client.update(&server_first).unwrap();
        let client_final = client.message().to_vec();
        server.client_final(&client_final).unwrap();
        let err = server.client_final(&client_final).unwrap_err();
        assert!(matches!(err, ScramError::OutOfOrder), "{err:?}");

        // No second try after a wrong proof.
        let (mut server, client_final) = started(verifier.clone(), b"wrong");
        let err = server.client_final(client_final.as_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::WrongProof), "{err:?}");
        let err = server.client_final(client_final.as_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::OutOfOrder), "{err:?}");

        // No second client_first after a malformed one.
        let mut server = ScramServer::new(verifier);
        server.client_first(b"garbage").unwrap_err();
        let err = server.client_first(b"n,,n=,r=abc").unwrap_err();
        assert!(matches!(err, ScramError::OutOfOrder), "{err:?}");
    }

    #[test]
    fn postgres_regression_verifier_parses_and_authenticates() {
        let verifier: ScramVerifier = PG_REGRESS_VERIFIER.parse().unwrap();
        assert_eq!(verifier.iterations, 4096);
        assert_eq!(verifier.salt.len(), 16);
        // The keys match an independent computation from the password.
        let (stored_key, server_key, _) = keys(b"password", &verifier.salt, 4096);
        assert_eq!(verifier.stored_key, stored_key);
        assert_eq!(verifier.server_key, server_key);

        exchange(verifier.clone(), b"password", ChannelBinding::unsupported()).unwrap();
        let err = exchange(verifier, b"passw0rd", ChannelBinding::unsupported()).unwrap_err();
        assert!(matches!(err, ScramError::WrongProof), "{err:?}");
    }

    #[test]
    fn independently_built_verifier_parses_and_authenticates() {
        let salt = b"0123456789abcdef";
        let (stored_key, server_key, _) = keys(b"hunter2", salt, 4096);
        let text = format!(
            "SCRAM-SHA-256$4096:{}${}:{}",
            BASE64.encode(salt),
            BASE64.encode(stored_key),
            BASE64.encode(server_key)
        );
        let verifier: ScramVerifier = text.parse().unwrap();
        assert_eq!(verifier.salt, salt);
        exchange(verifier, b"hunter2", ChannelBinding::unsupported()).unwrap();

        // A different iteration count is carried through to the client.
        let (stored_key, server_key, _) = keys(b"hunter2", salt, 10);
        let text = format!(
            "SCRAM-SHA-256$10:{}${}:{}",
            BASE64.encode(salt),
            BASE64.encode(stored_key),
            BASE64.encode(server_key)
        );
        let verifier: ScramVerifier = text.parse().unwrap();
        exchange(verifier, b"hunter2", ChannelBinding::unsupported()).unwrap();
    }

    #[test]
    fn made_verifier_has_postgres_shape() {
        let text = ScramVerifier::make(b"pw");
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        let verifier: ScramVerifier = text.parse().unwrap();
        assert_eq!(verifier.iterations, 4096);
        assert_eq!(verifier.salt.len(), 16);
        // Random salt: two verifiers for one password differ.
        assert_ne!(ScramVerifier::make(b"pw"), ScramVerifier::make(b"pw"));
    }

    #[test]
    fn malformed_verifiers_are_refused() {
        let key = BASE64.encode([7u8; 32]);
        let salt = BASE64.encode([1u8; 16]);
        let cases = vec![
            String::new(),
            "md5cd3578025fe2c3d7ed1b9a9b26238b70".to_string(),
            // From PostgreSQL's regression suite: not a verifier.
            "SCRAM-SHA-256$1234".to_string(),
            format!("SCRAM-SHA-1$4096:{salt}${key}:{key}"),
            format!("scram-sha-256$4096:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$4096{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}${key}{key}"),
            format!("SCRAM-SHA-256$:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$+4096:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$-1:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$0:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$99999999999:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$4096:${key}:{key}"),
            format!("SCRAM-SHA-256$4096:not*base64${key}:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}$not*base64:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}${key}:not*base64"),
            format!("SCRAM-SHA-256$4096:{salt}${}:{key}", BASE64.encode([7u8; 31])),
            format!("SCRAM-SHA-256$4096:{salt}${key}:{}", BASE64.encode([7u8; 33])),
            format!("SCRAM-SHA-256$4096:{salt}${key}:{key}$"),
            format!("SCRAM-SHA-256$4096:{salt}${key}:{key}:{key}"),
            // From PostgreSQL's regression suite: keys too long.
            "SCRAM-SHA-256$4096:A6xHKoH/494E941doaPOYg==$Ky+A30sewHIH3VHQLRN9vYsuzlgNyGNKCh37dy96RqwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:COPdlNiIkrsacU5QoxydEuOH6e/KfiipeETb/bPw8ZI=".to_string(),
            "SCRAM-SHA-256$4096:A6xHKoH/494E941doaPOYg==$Ky+A30sewHIH3VHQLRN9vYsuzlgNyGNKCh37dy96Rqw=:COPdlNiIkrsacU5QoxydEuOH6e/KfiipeETb/bPw8ZIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(),
        ];
        for case in cases {
            let err = case.parse::<ScramVerifier>().unwrap_err();
            assert!(
                matches!(err, ScramError::InvalidVerifier(_)),
                "{case:?}: {err:?}"
            );
            // The message never echoes the input.
            assert!(!err.to_string().contains(&key));
        }
        // Surrounding whitespace (e.g. a trailing newline from a file) is tolerated.
        format!("  SCRAM-SHA-256$4096:{salt}${key}:{key}\n")
            .parse::<ScramVerifier>()
            .unwrap();
    }

    #[test]
    fn fake_verifiers_are_stable_and_distinct() {
        let secret = [42u8; 32];
        let other_secret = [43u8; 32];
        let a1 = ScramVerifier::fake("alice", &secret);
        let a2 = ScramVerifier::fake("alice", &secret);
        let b = ScramVerifier::fake("bob", &secret);
        let a_other = ScramVerifier::fake("alice", &other_secret);

        assert_eq!(a1.salt, a2.salt);
        assert_eq!(a1.stored_key, a2.stored_key);
        assert_eq!(a1.server_key, a2.server_key);
        assert_ne!(a1.salt, b.salt);
        assert_ne!(a1.stored_key, b.stored_key);
        assert_ne!(a1.server_key, b.server_key);
        assert_ne!(a1.salt, a_other.salt);
        assert_ne!(a1.stored_key, a_other.stored_key);

        // Same shape as a real verifier from make().
        assert_eq!(a1.iterations, 4096);
        assert_eq!(a1.salt.len(), 16);
        assert_ne!(a1.stored_key, a1.server_key);
    }

    #[test]
    fn fake_verifier_exchange_looks_normal_and_fails() {
        let secret = [9u8; 32];
        let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
        let mut server = ScramServer::new(ScramVerifier::fake("ghost", &secret));
        let server_first = server.client_first(client.message()).unwrap();
        let text = String::from_utf8(server_first.clone()).unwrap();
        assert!(text.ends_with(",i=4096"), "{text}");
        client.update(&server_first).unwrap();
        let err = server.client_final(client.message()).unwrap_err();
        assert!(matches!(err, ScramError::WrongProof), "{err:?}");
    }

    #[test]
    fn fake_verifier_fails_even_if_its_keys_were_guessed() {
        // Belt and braces: a fake verifier never authenticates, even with matching keys.
        let real: ScramVerifier = PG_REGRESS_VERIFIER.parse().unwrap();
        let mut fake = ScramVerifier::fake("ghost", &[9; 32]);
        fake.salt = real.salt.clone();
        fake.stored_key = real.stored_key;
        fake.server_key = real.server_key;
        let err = exchange(fake, b"password", ChannelBinding::unsupported()).unwrap_err();
        assert!(matches!(err, ScramError::WrongProof), "{err:?}");
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let verifier: ScramVerifier = PG_REGRESS_VERIFIER.parse().unwrap();
        let debug = format!("{verifier:?}");
        assert_eq!(debug, "ScramVerifier { iterations: 4096, .. }");
        for secret in [
            "A6xHKoH/494E941doaPOYg==",
            "Ky+A30sewHIH3VHQLRN9vYsuzlgNyGNKCh37dy96Rqw=",
            "COPdlNiIkrsacU5QoxydEuOH6e/KfiipeETb/bPw8ZI=",
        ] {
            assert!(!debug.contains(secret));
        }
        let alternate = format!("{verifier:#?}");
        assert!(!alternate.contains("salt") && !alternate.contains("key"));

        let fake = format!("{:?}", ScramVerifier::fake("ghost", &[1; 32]));
        assert_eq!(fake, "ScramVerifier { iterations: 4096, .. }");

        let server = format!("{:?}", ScramServer::new(verifier));
        assert!(
            !server.contains("Ky+A30") && !server.contains("COPdl"),
            "{server}"
        );
    }

    #[test]
    fn padded_key_hmac_matches_reference() {
        for key in [[0u8; 32], [0xffu8; 32], [0x5au8; 32]] {
            assert_eq!(
                hmac_sha256(&key, &[b"Client ", b"Key"]),
                hmac_slice(&key, b"Client Key")
            );
        }
    }

    #[test]
    fn mechanism_name() {
        assert_eq!(ScramServer::MECHANISM, "SCRAM-SHA-256");
        assert_eq!(
            ScramServer::MECHANISM,
            postgres_protocol::authentication::sasl::SCRAM_SHA_256
        );
    }
}
