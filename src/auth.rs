//! auth and auth_db: digest authentication of requests (RFC 2617,
//! RFC 7616, RFC 8760) against the `subscriber` table.
//!
//! Script functions, as SER's auth/auth_db modules export them:
//! `www_authorize(realm, table)`, `proxy_authorize(realm, table)`,
//! `www_challenge(realm, qop)`, `proxy_challenge(realm, qop)` and
//! `consume_credentials()`. `check_to()`/`check_from()` (SER's uri_db) read
//! what an authorize call recorded here; see [`crate::uri_db`].
//!
//! **Nonces** are self-verifying, so no table is needed to check one and
//! every worker can check a nonce another worker issued: the nonce is
//! `base64url(version ‖ expiry ‖ index ‖ mac)`, 29 bytes (39 characters),
//! where `expiry` is a signed 64-bit count of Unix milliseconds on the
//! core's clock (`Shared::epoch` maps its `Instant`s, virtual in the tests,
//! to wall-clock time), `index` a 32-bit counter shared by the whole
//! process, and `mac` the first 128 bits of HMAC-SHA256 over the
//! preceding 13 bytes. The HMAC key is SHA-256 over 32 random bytes drawn
//! once per process and the proxy's per-process `Shared::secret`: every
//! worker of one proxy derives the same key, two proxies in one process
//! (tests) get different ones, and a restart invalidates every nonce.
//!
//! **Replay protection** (RFC 2617 §3.2.2 `nonce-count`, RFC 7616 §3.4):
//! with `qop=auth` the nonce-count of a nonce must grow from one request
//! to the next. The highest count seen is kept in a fixed table of
//! 2^20 atomic slots (4 MiB of zero pages, touched only as used) indexed
//! by the nonce's index; a nonce whose slot has since been reused by a
//! newer nonce is answered as stale, so the client retries with a fresh
//! nonce without asking its user.

use std::rc::Rc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use mlua::Lua;
use sha2::{Digest, Sha256};

use crate::config::ModParams;
use crate::core::{Env, MsgCtx, lua_err};
use crate::script::args::StrArg;
use crate::script::export::{Export, LitArg, RouteMask};
use crate::script::register as reg;
use crate::sip::{HeaderName, Method};

/// Which header field carried the credentials (RFC 3261 §22.2 for
/// `Authorization`, §22.3 for `Proxy-Authorization`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredField {
    /// `Authorization` (answers a 401; `www_authorize`).
    Authorization,
    /// `Proxy-Authorization` (answers a 407; `proxy_authorize`).
    ProxyAuthorization,
}

impl CredField {
    /// The header name of this field.
    pub fn header(self) -> HeaderName {
        match self {
            CredField::Authorization => HeaderName::Authorization,
            CredField::ProxyAuthorization => HeaderName::ProxyAuthorization,
        }
    }
}

/// Credentials that proved correct (what `www_authorize`/`proxy_authorize`
/// leave for `consume_credentials`, `check_to` and `check_from`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    /// The digest `username` as sent (may be `user@domain`).
    pub username: String,
    /// The user part of `username` (before any `@`): what `check_to` and
    /// `check_from` compare with the URI's user.
    pub user: String,
    /// The realm the request authenticated for.
    pub realm: String,
    /// The header field the credentials came in.
    pub field: CredField,
    /// That field's value, to find it again for `consume_credentials`.
    pub value: Vec<u8>,
    /// The digest algorithm the client used.
    pub algorithm: Algorithm,
}

/// Why the last `www_authorize`/`proxy_authorize` returned false (SER
/// auth's `auth_result_t`, with the cases told apart for the logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials for the realm (the normal first request).
    NoCredentials,
    /// Credentials that do not parse (RFC 2617 §3.2.2 syntax).
    Malformed,
    /// An algorithm, qop or option this proxy does not accept
    /// (`auth-int`, `userhash`, an algorithm not offered, SHA-256 without
    /// a clear-text password).
    Unsupported,
    /// No realm: it was empty and the URI it derives from has no host.
    NoRealm,
    /// The username is not in the subscriber table.
    UnknownUser,
    /// The subscriber row has no usable password or ha1.
    NoPassword,
    /// The response digest is wrong (wrong password, or a tampered request).
    WrongResponse,
    /// The nonce was not issued by this proxy (forged, damaged, or from
    /// before a restart).
    BadNonce,
    /// A correct response with an expired nonce (RFC 2617 §3.2.1 `stale`).
    StaleNonce,
    /// A correct response whose nonce is too old for its nonce-count to be
    /// tracked any longer (treated as stale).
    NcWindow,
    /// The nonce-count did not grow (a replayed request, RFC 2617 §3.2.2).
    ReplayedNc,
}

impl AuthFailure {
    /// True when the next challenge says `stale=true` (RFC 2617 §3.2.1:
    /// the client knew the password, only the nonce was old).
    pub fn is_stale(self) -> bool {
        matches!(self, AuthFailure::StaleNonce | AuthFailure::NcWindow)
    }

    /// A short description for the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => "no credentials for the realm",
            AuthFailure::Malformed => "malformed credentials",
            AuthFailure::Unsupported => "unsupported algorithm, qop or option",
            AuthFailure::NoRealm => "no realm",
            AuthFailure::UnknownUser => "unknown user",
            AuthFailure::NoPassword => "subscriber has no usable password for this algorithm",
            AuthFailure::WrongResponse => "wrong response",
            AuthFailure::BadNonce => "bad nonce",
            AuthFailure::StaleNonce => "stale nonce",
            AuthFailure::NcWindow => "nonce too old for nonce-count tracking",
            AuthFailure::ReplayedNc => "replayed nonce-count",
        }
    }
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request proved with its credentials (filled by
/// `www_authorize`/`proxy_authorize`, read by `consume_credentials`,
/// `check_to`, `check_from` and the challenge functions).
#[derive(Clone, Debug, Default)]
pub struct AuthState {
    /// The credentials that verified, when an authorize call succeeded.
    pub authorized: Option<Authorized>,
    /// Why the last authorize call failed (`None` after a success).
    pub failure: Option<AuthFailure>,
}

/// Digest algorithms (RFC 2617 §3.2.1, RFC 7616 §3.2, RFC 8760 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// `MD5`.
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256`.
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl Algorithm {
    /// Parses an `algorithm` value (case-insensitive, RFC 7616 §3.3).
    pub fn parse(s: &str) -> Option<Algorithm> {
        const ALL: [Algorithm; 4] = [Algorithm::Md5, Algorithm::Md5Sess, Algorithm::Sha256, Algorithm::Sha256Sess];
        ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The name as written in a challenge.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// True for the `-sess` variants (RFC 2617 §3.2.2.2).
    pub fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// The hash without the session variant (`MD5-sess` → `MD5`).
    pub fn base(self) -> Algorithm {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => Algorithm::Md5,
            Algorithm::Sha256 | Algorithm::Sha256Sess => Algorithm::Sha256,
        }
    }

    /// `H(data)` as lower-case hex (RFC 7616 §3.4.1 `H`).
    pub fn hash_hex(self, data: &[u8]) -> String {
        match self.base() {
            Algorithm::Sha256 => hex(&Sha256::digest(data)),
            _ => hex(&Md5::digest(data)),
        }
    }

    /// Length of `H(…)` in hex characters.
    pub fn hex_len(self) -> usize {
        match self.base() {
            Algorithm::Sha256 => 64,
            _ => 32,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// `H(username ":" realm ":" password)`: the HA1 of RFC 2617 §3.2.2.2 /
/// RFC 7616 §3.4.2 before the `-sess` step (what the subscriber table's
/// `ha1` column stores for MD5, and `ha1b` with `username@domain`).
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    alg.hash_hex(format!("{username}:{realm}:{password}").as_bytes())
}

/// The request-digest of RFC 2617 §3.2.2.1 / RFC 7616 §3.4.1 for
/// `qop` absent or `auth`. `ha1` is `H(username:realm:password)`; for a
/// `-sess` algorithm the session HA1 `H(ha1:nonce:cnonce)` is derived
/// here (RFC 2617 §3.2.2.2). `nc_cnonce_qop` is `Some((nc, cnonce, qop))`
/// when the client sent a qop; for `-sess` without a qop, `cnonce` comes
/// from `sess_cnonce`.
pub fn digest_response(
    alg: Algorithm,
    ha1: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    nc_cnonce_qop: Option<(&str, &str, &str)>,
    sess_cnonce: Option<&str>,
) -> String {
    let session_ha1;
    let ha1 = if alg.is_sess() {
        let cnonce = nc_cnonce_qop.map(|(_, c, _)| c).or(sess_cnonce).unwrap_or("");
        session_ha1 = alg.hash_hex(format!("{ha1}:{nonce}:{cnonce}").as_bytes());
        session_ha1.as_str()
    } else {
        ha1
    };
    let ha2 = alg.hash_hex(format!("{method}:{uri}").as_bytes());
    match nc_cnonce_qop {
        Some((nc, cnonce, qop)) => alg.hash_hex(format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}").as_bytes()),
        None => alg.hash_hex(format!("{ha1}:{nonce}:{ha2}").as_bytes()),
    }
}

/// Equal lengths and bytes, in time independent of where they differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---- credentials parsing ----------------------------------------------------

/// Longest credentials header value looked at, and longest single value:
/// anything longer is refused as malformed before any work.
const MAX_CRED_LEN: usize = 4096;
const MAX_VALUE_LEN: usize = 1024;
const MAX_PARAMS: usize = 32;
/// At most this many credentials header fields are examined per request.
const MAX_CRED_FIELDS: usize = 16;

/// Parsed `Digest` credentials (RFC 2617 §3.2.2 `digest-response`,
/// RFC 7616 §3.4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// `username` (quoted-string, unescaped).
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri` (digest-uri).
    pub uri: String,
    /// `response` (request-digest).
    pub response: String,
    /// `algorithm`, when given (MD5 when absent, RFC 2617 §3.2.2).
    pub algorithm: Option<String>,
    /// `cnonce`.
    pub cnonce: Option<String>,
    /// `opaque`.
    pub opaque: Option<String>,
    /// `qop` (message-qop).
    pub qop: Option<String>,
    /// `nc` (nonce-count), 8 hex digits.
    pub nc: Option<String>,
    /// `userhash` (RFC 7616 §3.4.4).
    pub userhash: Option<String>,
}

fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// Parses a credentials header value. Strict where the RFC is: the
/// scheme must be `Digest`, each parameter may appear once, `username`,
/// `realm`, `nonce`, `uri`, `response`, `cnonce` and `opaque` must be
/// quoted-strings; `algorithm`, `qop` and `nc` are tokens (a quoted `qop`
/// or `algorithm`, which some phones send, is accepted).
pub fn parse_credentials(value: &[u8]) -> Result<Credentials, &'static str> {
    if value.len() > MAX_CRED_LEN {
        return Err("credentials too long");
    }
    let b = value;
    let mut i = skip_ws(b, 0);
    let start = i;
    while i < b.len() && is_token(b[i]) {
        i += 1;
    }
    if !b[start..i].eq_ignore_ascii_case(b"Digest") {
        return Err("not a Digest scheme");
    }
    if i >= b.len() || !matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        return Err("no parameters after Digest");
    }
    let mut params: Vec<(String, String, bool)> = Vec::new();
    loop {
        i = skip_ws(b, i);
        if i >= b.len() {
            break;
        }
        if b[i] == b',' {
            i += 1;
            continue;
        }
        let ns = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        if ns == i {
            return Err("expected a parameter name");
        }
        let name = String::from_utf8_lossy(&b[ns..i]).to_ascii_lowercase();
        i = skip_ws(b, i);
        if i >= b.len() || b[i] != b'=' {
            return Err("expected '=' after a parameter name");
        }
        i = skip_ws(b, i + 1);
        let (val, quoted) = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut v = Vec::new();
            loop {
                match b.get(i) {
                    None => return Err("unterminated quoted-string"),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = *b.get(i + 1).ok_or("unterminated quoted-string")?;
                        v.push(c);
                        i += 2;
                    }
                    Some(&c) => {
                        v.push(c);
                        i += 1;
                    }
                }
                if v.len() > MAX_VALUE_LEN {
                    return Err("parameter value too long");
                }
            }
            (v, true)
        } else {
            let vs = i;
            while i < b.len() && is_token(b[i]) {
                i += 1;
            }
            if vs == i {
                return Err("empty parameter value");
            }
            (b[vs..i].to_vec(), false)
        };
        if val.len() > MAX_VALUE_LEN {
            return Err("parameter value too long");
        }
        let val = String::from_utf8(val).map_err(|_| "parameter value is not UTF-8")?;
        if params.iter().any(|(n, _, _)| *n == name) {
            return Err("duplicate parameter");
        }
        if params.len() >= MAX_PARAMS {
            return Err("too many parameters");
        }
        params.push((name, val, quoted));
        i = skip_ws(b, i);
        if i < b.len() {
            if b[i] != b',' {
                return Err("expected ',' between parameters");
            }
            i += 1;
        }
    }
    let mut c = Credentials::default();
    let mut have = (false, false, false, false, false);
    for (name, val, quoted) in params {
        let must_quote = |v: String| if quoted { Ok(v) } else { Err("parameter must be a quoted-string") };
        match name.as_str() {
            "username" => {
                c.username = must_quote(val)?;
                have.0 = true;
            }
            "realm" => {
                c.realm = must_quote(val)?;
                have.1 = true;
            }
            "nonce" => {
                c.nonce = must_quote(val)?;
                have.2 = true;
            }
            "uri" => {
                c.uri = must_quote(val)?;
                have.3 = true;
            }
            "response" => {
                c.response = must_quote(val)?;
                have.4 = true;
            }
            "cnonce" => c.cnonce = Some(must_quote(val)?),
            "opaque" => c.opaque = Some(must_quote(val)?),
            "algorithm" => c.algorithm = Some(val),
            "qop" => c.qop = Some(val),
            "nc" if quoted => return Err("nc must not be quoted"),
            "nc" => c.nc = Some(val),
            "userhash" => c.userhash = Some(val),
            _ => {}
        }
    }
    match have {
        (false, ..) => Err("no username"),
        (_, false, ..) => Err("no realm"),
        (_, _, false, ..) => Err("no nonce"),
        (_, _, _, false, _) => Err("no uri"),
        (_, _, _, _, false) => Err("no response"),
        _ if c.username.is_empty() => Err("empty username"),
        _ => Ok(c),
    }
}

// ---- nonces -----------------------------------------------------------------

const NONCE_VERSION: u8 = 1;
const NONCE_MAC_LEN: usize = 16;
const NONCE_BODY_LEN: usize = 1 + 8 + 4;
const NONCE_LEN: usize = NONCE_BODY_LEN + NONCE_MAC_LEN;

/// Slots of the nonce-count table (a power of two).
const NC_SLOTS: usize = 1 << 20;
static NC_TABLE: [AtomicU32; NC_SLOTS] = [const { AtomicU32::new(0) }; NC_SLOTS];
static NEXT_INDEX: AtomicU32 = AtomicU32::new(0);
static PROCESS_KEY: OnceLock<[u8; 32]> = OnceLock::new();

/// `now` on the core's clock (virtual in tests) as Unix milliseconds,
/// through the proxy's `Shared::epoch` pair: the time base of nonce
/// expiry.
pub fn unix_ms(epoch: (Instant, SystemTime), now: Instant) -> i64 {
    let (base, wall) = epoch;
    let wall_ms = match wall.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    };
    let delta = match now.checked_duration_since(base) {
        Some(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        None => -i64::try_from(base.saturating_duration_since(now).as_millis()).unwrap_or(i64::MAX),
    };
    wall_ms.saturating_add(delta)
}

/// What a nonce carries once its MAC checks out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonceInfo {
    /// Expiry in Unix milliseconds on the core's clock ([`unix_ms`]).
    pub expires_ms: i64,
    /// The nonce's index (nonce-count slot).
    pub index: u32,
}

/// Issues and checks nonces with one proxy's HMAC key.
#[derive(Clone)]
pub struct NonceKey {
    mac: Hmac<Sha256>,
}

impl NonceKey {
    /// The key for a proxy whose `Shared::secret` is `secret`: the same in
    /// every worker of that proxy.
    pub fn new(secret: u64) -> NonceKey {
        let process = PROCESS_KEY.get_or_init(rand::random::<[u8; 32]>);
        let mut h = Sha256::new();
        h.update(b"serlua auth nonce key v1");
        h.update(process);
        h.update(secret.to_be_bytes());
        let key = h.finalize();
        // HMAC takes keys of any length: this cannot fail.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap_or_else(|_| unreachable!());
        NonceKey { mac }
    }

    fn tag(&self, body: &[u8]) -> [u8; NONCE_MAC_LEN] {
        let mut m = self.mac.clone();
        m.update(body);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; NONCE_MAC_LEN];
        out.copy_from_slice(&full[..NONCE_MAC_LEN]);
        out
    }

    /// Encodes a nonce expiring at `expires_ms` with `index`.
    pub fn encode(&self, expires_ms: i64, index: u32) -> String {
        let mut raw = [0u8; NONCE_LEN];
        raw[0] = NONCE_VERSION;
        raw[1..9].copy_from_slice(&expires_ms.to_be_bytes());
        raw[9..13].copy_from_slice(&index.to_be_bytes());
        let tag = self.tag(&raw[..NONCE_BODY_LEN]);
        raw[NONCE_BODY_LEN..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// A fresh nonce valid for `expire_ms` from `now_ms` (Unix
    /// milliseconds); claims a new index and resets its nonce-count slot.
    pub fn issue(&self, now_ms: i64, expire_ms: i64) -> String {
        let index = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
        NC_TABLE[index as usize % NC_SLOTS].store(0, Ordering::Relaxed);
        self.encode(now_ms.saturating_add(expire_ms), index)
    }

    /// Decodes a nonce and checks its MAC (in constant time). None when it
    /// was not issued with this key.
    pub fn open(&self, nonce: &str) -> Option<NonceInfo> {
        if nonce.len() > 64 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(nonce.as_bytes()).ok()?;
        if raw.len() != NONCE_LEN || raw[0] != NONCE_VERSION {
            return None;
        }
        let mut m = self.mac.clone();
        m.update(&raw[..NONCE_BODY_LEN]);
        m.verify_truncated_left(&raw[NONCE_BODY_LEN..]).ok()?;
        let expires_ms = i64::from_be_bytes(raw[1..9].try_into().ok()?);
        let index = u32::from_be_bytes(raw[9..13].try_into().ok()?);
        Some(NonceInfo { expires_ms, index })
    }
}

/// Records nonce-count `nc` for the nonce with `index` (RFC 2617 §3.2.2:
/// the server detects replays by the count). Ok when it is higher than
/// every count seen before for that nonce.
fn check_nc(index: u32, nc: u32) -> Result<(), AuthFailure> {
    let current = NEXT_INDEX.load(Ordering::Relaxed);
    if current.wrapping_sub(index) as usize > NC_SLOTS {
        return Err(AuthFailure::NcWindow);
    }
    let slot = &NC_TABLE[index as usize % NC_SLOTS];
    let mut seen = slot.load(Ordering::Relaxed);
    loop {
        if nc <= seen {
            return Err(AuthFailure::ReplayedNc);
        }
        match slot.compare_exchange_weak(seen, nc, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(now) => seen = now,
        }
    }
}

// ---- module configuration -----------------------------------------------------

/// Which nonces a response may answer (RFC 2617 §3.2.1: the nonce is
/// "uniquely generated each time a 401 response is made"; the server
/// checks it is one of its own and not stale).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NoncePolicy {
    /// Only nonces this proxy issued, unexpired, with a growing
    /// nonce-count: the only policy of a running proxy.
    #[default]
    Issued,
    /// Test-only (`serlua test`): a nonce this proxy did not issue — one
    /// recorded in a trace, issued by the proxy that was captured — is
    /// taken as fresh, with no expiry and no nonce-count tracking, so a
    /// recorded 401/REGISTER exchange replays. The response digest is still
    /// computed and checked against the subscriber table.
    AcceptRecorded,
}

/// Kamailio's default `nonce_expire`, seconds.
pub const DEFAULT_NONCE_EXPIRE: i64 = 300;

/// auth's module parameters and key, per worker (the same in every one).
#[derive(Clone)]
pub struct AuthConfig {
    /// The nonce key.
    pub key: NonceKey,
    /// `modparam("auth", "nonce_expire", s)` in milliseconds.
    pub expire_ms: i64,
    /// `modparam("auth", "algorithms", "SHA-256,MD5")`: the algorithms
    /// challenged with, preferred first (RFC 8760 §2: one challenge per
    /// algorithm).
    pub algorithms: Vec<Algorithm>,
    /// Which nonces are accepted ([`NoncePolicy`]).
    pub nonce_policy: NoncePolicy,
}

impl AuthConfig {
    /// Reads the module parameters; an unknown algorithm or a
    /// non-positive `nonce_expire` is an error.
    pub fn from_params(params: &ModParams, secret: u64) -> Result<AuthConfig, String> {
        let expire = params.int("auth", "nonce_expire", DEFAULT_NONCE_EXPIRE);
        if !(1..=365 * 86400).contains(&expire) {
            return Err(format!("modparam auth.nonce_expire must be 1..31536000 seconds, got {expire}"));
        }
        let text = params.str("auth", "algorithms", "MD5");
        let mut algorithms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let a = Algorithm::parse(part)
                .ok_or_else(|| format!("modparam auth.algorithms: unknown algorithm '{part}' (MD5, MD5-sess, SHA-256, SHA-256-sess)"))?;
            if !algorithms.contains(&a) {
                algorithms.push(a);
            }
        }
        if algorithms.is_empty() {
            return Err("modparam auth.algorithms names no algorithm".to_string());
        }
        Ok(AuthConfig {
            key: NonceKey::new(secret),
            expire_ms: expire * 1000,
            algorithms,
            nonce_policy: NoncePolicy::Issued,
        })
    }

    /// True when a response computed with `alg` is accepted: the
    /// algorithm, or its non-session base, was configured.
    fn accepts(&self, alg: Algorithm) -> bool {
        self.algorithms.iter().any(|a| *a == alg || a.base() == alg.base())
    }
}

// ---- authorize ----------------------------------------------------------------

/// Which authorize/challenge pair is running: `www_*` (401,
/// `Authorization`, RFC 3261 §22.2) or `proxy_*` (407,
/// `Proxy-Authorization`, §22.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `www_authorize` / `www_challenge`.
    Www,
    /// `proxy_authorize` / `proxy_challenge`.
    Proxy,
}

impl Kind {
    fn field(self) -> CredField {
        match self {
            Kind::Www => CredField::Authorization,
            Kind::Proxy => CredField::ProxyAuthorization,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Www => "www_authorize",
            Kind::Proxy => "proxy_authorize",
        }
    }
}

/// The realm to use: `realm` when given, else (SER auth's `get_realm`)
/// the host of the To URI for a REGISTER answered with 401, otherwise the
/// host of the From URI.
pub fn effective_realm(ctx: &MsgCtx, realm: &str, kind: Kind) -> Option<String> {
    if !realm.is_empty() {
        return Some(realm.to_string());
    }
    let na = if kind == Kind::Www && ctx.msg.method() == Some(&Method::Register) {
        ctx.msg.to()
    } else {
        ctx.msg.from()
    };
    let host = &na.uri.host.text;
    (!host.is_empty()).then(|| host.clone())
}

/// SER's `www_authorize`/`proxy_authorize` (auth_db): true when the
/// request carries credentials for the realm whose response verifies
/// against the subscriber table with a nonce this proxy issued, unexpired,
/// and (with qop) a fresh nonce-count. ACK and CANCEL are always
/// authorized: they cannot be challenged (RFC 3261 §22.1, §26.2.2).
pub fn authorize(cfg: &AuthConfig, env: &Env, ctx: &mut MsgCtx, realm: &str, kind: Kind) -> bool {
    let method = match ctx.msg.method() {
        Some(Method::Ack | Method::Cancel) => return true,
        Some(m) => m.as_str().to_string(),
        None => return false,
    };
    let Some(realm) = effective_realm(ctx, realm, kind) else {
        tracing::debug!("{}: refused: no realm (empty, and no host to derive it from)", kind.name());
        ctx.auth.failure = Some(AuthFailure::NoRealm);
        return false;
    };
    match verify(cfg, env, ctx, &realm, kind, &method) {
        Ok(a) => {
            tracing::debug!(user = %a.username, realm = %a.realm, algorithm = a.algorithm.name(), "{}: authorized", kind.name());
            ctx.auth.authorized = Some(a);
            ctx.auth.failure = None;
            true
        }
        Err((why, user)) => {
            tracing::debug!(user = %user, realm = %realm, "{}: refused: {why}", kind.name());
            ctx.auth.failure = Some(why);
            false
        }
    }
}

type Refusal = (AuthFailure, String);

fn verify(cfg: &AuthConfig, env: &Env, ctx: &MsgCtx, realm: &str, kind: Kind, method: &str) -> Result<Authorized, Refusal> {
    let refuse = |why: AuthFailure, user: &str| -> Refusal { (why, user.to_string()) };
    let field = kind.field();
    let mut malformed = false;
    let mut found = None;
    for v in ctx.msg.headers(&field.header()).into_iter().take(MAX_CRED_FIELDS) {
        match parse_credentials(&v) {
            Ok(c) if c.realm.eq_ignore_ascii_case(realm) => {
                found = Some((c, v.into_owned()));
                break;
            }
            Ok(_) => {}
            Err(why) => {
                tracing::debug!("{}: skipping credentials: {why}", kind.name());
                malformed = true;
            }
        }
    }
    let Some((c, raw)) = found else {
        let why = if malformed {
            AuthFailure::Malformed
        } else {
            AuthFailure::NoCredentials
        };
        return Err(refuse(why, ""));
    };
    let who = c.username.as_str();

    let alg = match &c.algorithm {
        None => Algorithm::Md5,
        Some(a) => Algorithm::parse(a).ok_or_else(|| refuse(AuthFailure::Unsupported, who))?,
    };
    if !cfg.accepts(alg) || c.userhash.as_deref().is_some_and(|u| u.eq_ignore_ascii_case("true")) {
        return Err(refuse(AuthFailure::Unsupported, who));
    }
    let qop = match c.qop.as_deref() {
        None => None,
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            let nc = c.nc.as_deref().ok_or_else(|| refuse(AuthFailure::Malformed, who))?;
            if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(refuse(AuthFailure::Malformed, who));
            }
            let n = u32::from_str_radix(nc, 16).map_err(|_| refuse(AuthFailure::Malformed, who))?;
            let cnonce = c.cnonce.as_deref().ok_or_else(|| refuse(AuthFailure::Malformed, who))?;
            Some((nc, n, cnonce, q))
        }
        // auth-int (and anything else) is not offered.
        Some(_) => return Err(refuse(AuthFailure::Unsupported, who)),
    };
    if alg.is_sess() && c.cnonce.is_none() {
        return Err(refuse(AuthFailure::Malformed, who));
    }
    let response = c.response.to_ascii_lowercase();
    if response.len() != alg.hex_len() {
        return Err(refuse(AuthFailure::WrongResponse, who));
    }

    // A recorded nonce (test policy) has no expiry or count to check; the
    // digest below is checked all the same.
    let nonce = match cfg.key.open(&c.nonce) {
        Some(n) => Some(n),
        None if cfg.nonce_policy == NoncePolicy::AcceptRecorded => None,
        None => return Err(refuse(AuthFailure::BadNonce, who)),
    };

    // use_domain: the subscriber is (user part of username, realm).
    let user = c.username.split_once('@').map_or(c.username.as_str(), |(u, _)| u);
    let sub = env
        .shared
        .store
        .subscriber(user, realm)
        .ok_or_else(|| refuse(AuthFailure::UnknownUser, who))?;
    let base_ha1 = if !sub.password.is_empty() {
        ha1(alg, &c.username, &c.realm, &sub.password)
    } else if alg.base() == Algorithm::Md5 {
        // Kamailio: ha1b when the username carries a domain.
        let stored = if c.username.contains('@') { &sub.ha1b } else { &sub.ha1 };
        let stored = stored.trim();
        if stored.len() != 32 || !stored.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refuse(AuthFailure::NoPassword, who));
        }
        stored.to_ascii_lowercase()
    } else {
        return Err(refuse(AuthFailure::NoPassword, who));
    };
    let expected = digest_response(
        alg,
        &base_ha1,
        &c.nonce,
        method,
        &c.uri,
        qop.map(|(nc, _, cnonce, q)| (nc, cnonce, q)),
        c.cnonce.as_deref(),
    );
    if !ct_eq(expected.as_bytes(), response.as_bytes()) {
        return Err(refuse(AuthFailure::WrongResponse, who));
    }
    // The client knows the password: from here on a refusal is about the
    // nonce only (stale), or a replay.
    if let Some(nonce) = nonce {
        if unix_ms(env.shared.epoch, env.now()) > nonce.expires_ms {
            return Err(refuse(AuthFailure::StaleNonce, who));
        }
        if let Some((_, n, _, _)) = qop {
            check_nc(nonce.index, n).map_err(|why| refuse(why, who))?;
        }
    }
    Ok(Authorized {
        username: c.username.clone(),
        user: user.to_string(),
        realm: realm.to_string(),
        field,
        value: raw,
        algorithm: alg,
    })
}

// ---- challenge ------------------------------------------------------------------

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for ch in s.chars() {
        if ch == '"' || ch == '\\' {
            q.push('\\');
        }
        if ch != '\r' && ch != '\n' {
            q.push(ch);
        }
    }
    q.push('"');
    q
}

/// The challenge header values for `realm`: one per configured algorithm,
/// preferred first (RFC 8760 §2), sharing one nonce (RFC 7616 §3.7).
pub fn challenge_values(cfg: &AuthConfig, now_ms: i64, realm: &str, qop: bool, stale: bool) -> Vec<String> {
    let nonce = cfg.key.issue(now_ms, cfg.expire_ms);
    cfg.algorithms
        .iter()
        .map(|a| {
            let mut v = format!("Digest realm={}, nonce=\"{nonce}\"", quote(realm));
            if qop {
                v.push_str(", qop=\"auth\"");
            }
            v.push_str(", algorithm=");
            v.push_str(a.name());
            if stale {
                v.push_str(", stale=true");
            }
            v
        })
        .collect()
}

/// SER's `www_challenge`/`proxy_challenge`: replies 401 with
/// `WWW-Authenticate` or 407 with `Proxy-Authenticate` (RFC 3261 §22.1,
/// §22.3), statelessly; `stale=true` when the last authorize failed on an
/// old nonce. False when no reply could be sent.
pub fn challenge(cfg: &AuthConfig, env: &Env, ctx: &mut MsgCtx, realm: &str, qop: bool, kind: Kind) -> bool {
    let Some(realm) = effective_realm(ctx, realm, kind) else {
        tracing::warn!("{}: no realm (empty realm and no host to derive it from)", kind.name());
        ctx.fail(500, "Server Internal Error - no realm");
        return false;
    };
    let stale = ctx.auth.failure.is_some_and(AuthFailure::is_stale);
    let values = challenge_values(cfg, unix_ms(env.shared.epoch, env.now()), &realm, qop, stale);
    let (code, reason, name) = match kind {
        Kind::Www => (401, "Unauthorized", HeaderName::WwwAuthenticate),
        Kind::Proxy => (407, "Proxy Authentication Required", HeaderName::ProxyAuthenticate),
    };
    let extra: Vec<(HeaderName, &[u8])> = values.iter().map(|v| (name.clone(), v.as_bytes())).collect();
    crate::sl::send_reply(env, ctx, code, reason, &extra)
}

/// SER's `consume_credentials()`: removes the header field whose
/// credentials authorized the request (RFC 3261 §22.3: a proxy MUST NOT
/// forward credentials meant for it); other fields of the same name
/// (credentials for proxies further on) are kept, in order. False when no
/// authorize call succeeded on this request.
///
/// In a failure route the request route's authorize result is not at
/// hand (tm keeps the request, not its auth state), so there every
/// `Authorization`/`Proxy-Authorization` field answering a nonce this
/// proxy issued is removed: those credentials were meant for us.
pub fn consume(cfg: &AuthConfig, ctx: &mut MsgCtx) -> bool {
    if let Some(a) = &ctx.auth.authorized {
        let (name, used) = (a.field.header(), a.value.clone());
        let mut first = true;
        return remove_fields(ctx, &name, |v| {
            let hit = first && v == used.as_slice();
            first &= !hit;
            hit
        }) > 0;
    }
    if ctx.kind == crate::script::export::RouteKind::Failure {
        let ours = |v: &[u8]| parse_credentials(v).is_ok_and(|c| cfg.key.open(&c.nonce).is_some());
        let n = remove_fields(ctx, &HeaderName::Authorization, ours) + remove_fields(ctx, &HeaderName::ProxyAuthorization, ours);
        return n > 0;
    }
    tracing::debug!("consume_credentials: no authorized credentials on this request");
    false
}

/// Removes the fields named `name` whose value `remove` picks, keeping
/// the others in their order (RFC 3261 §7.3.1); returns how many went.
fn remove_fields(ctx: &mut MsgCtx, name: &HeaderName, mut remove: impl FnMut(&[u8]) -> bool) -> usize {
    let values: Vec<Vec<u8>> = ctx.msg.headers(name).into_iter().map(|v| v.into_owned()).collect();
    let drop: Vec<bool> = values.iter().map(|v| remove(v)).collect();
    let gone = drop.iter().filter(|d| **d).count();
    if gone == 0 {
        return 0;
    }
    if drop.iter().take_while(|d| **d).count() == gone {
        // Only leading fields go: remove them in place.
        for _ in 0..gone {
            ctx.msg.remove_first_value(name);
        }
        return gone;
    }
    ctx.msg.remove_header(name);
    for (v, d) in values.iter().zip(&drop) {
        if !d {
            ctx.msg.append_header(name.clone(), v);
        }
    }
    gone
}

// ---- exports ----------------------------------------------------------------------

/// auth's script functions (SER auth / auth_db module docs; Kamailio
/// allows them in request routes, `consume_credentials` here also in
/// failure routes).
pub const EXPORTS: &[Export] = &[
    Export::new("www_authorize", 2, 2, RouteMask::REQUEST).with_fixup(fix_authorize),
    Export::new("proxy_authorize", 2, 2, RouteMask::REQUEST).with_fixup(fix_authorize),
    Export::new("www_challenge", 2, 2, RouteMask::REQUEST).with_fixup(fix_challenge),
    Export::new("proxy_challenge", 2, 2, RouteMask::REQUEST).with_fixup(fix_challenge),
    Export::new("consume_credentials", 0, 0, RouteMask::REQUEST.or(RouteMask::FAILURE)),
];

fn check_table(table: &str) -> Result<(), String> {
    if table == "subscriber" {
        Ok(())
    } else {
        Err(format!("table '{table}' is not served (auth_db reads \"subscriber\")"))
    }
}

fn fix_authorize(args: &[Option<LitArg>]) -> Result<(), String> {
    match args.get(1) {
        Some(Some(LitArg::Str(t))) => check_table(t),
        Some(Some(other)) => Err(format!("table must be a string, not {other:?}")),
        _ => Ok(()),
    }
}

fn parse_qop(s: &str) -> Result<bool, String> {
    match s.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(format!("qop must be \"0\" or \"1\", got \"{other}\"")),
    }
}

fn fix_challenge(args: &[Option<LitArg>]) -> Result<(), String> {
    match args.get(1) {
        Some(Some(LitArg::Str(s))) => parse_qop(s).map(|_| ()),
        Some(Some(LitArg::Int(i))) => parse_qop(&i.to_string()).map(|_| ()),
        Some(Some(other)) => Err(format!("qop must be \"0\" or \"1\", not {other:?}")),
        _ => Ok(()),
    }
}

/// Registers auth's primitives. The module parameters are read here, so a
/// bad `algorithms` or `nonce_expire` stops the script from loading.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    let mut cfg = AuthConfig::from_params(&env.shared.cfg.params, env.shared.secret).map_err(lua_err)?;
    cfg.nonce_policy = env.shared.cfg.nonce_policy;
    let cfg = Rc::new(cfg);
    for (name, kind) in [("www_authorize", Kind::Www), ("proxy_authorize", Kind::Proxy)] {
        let c = cfg.clone();
        reg(lua, env, EXPORTS, name, move |_, env, ctx, (realm, table): (StrArg, StrArg)| {
            check_table(&table.0).map_err(|e| lua_err(format!("{name}: {e}")))?;
            Ok(authorize(&c, env, ctx, &realm.0, kind))
        })?;
    }
    for (name, kind) in [("www_challenge", Kind::Www), ("proxy_challenge", Kind::Proxy)] {
        let c = cfg.clone();
        reg(lua, env, EXPORTS, name, move |_, env, ctx, (realm, qop): (StrArg, StrArg)| {
            let qop = parse_qop(&qop.0).map_err(|e| lua_err(format!("{name}: {e}")))?;
            Ok(challenge(&c, env, ctx, &realm.0, qop, kind))
        })?;
    }
    reg(lua, env, EXPORTS, "consume_credentials", move |_, _, ctx, ()| {
        Ok(consume(&cfg, ctx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_section_3_5_example() {
        let h = ha1(Algorithm::Md5, "Mufasa", "testrealm@host.com", "Circle Of Life");
        let r = digest_response(
            Algorithm::Md5,
            &h,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "GET",
            "/dir/index.html",
            Some(("00000001", "0a4f113b", "auth")),
            None,
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_section_3_9_1_examples() {
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let q = Some(("00000001", cnonce, "auth"));
        let md5 = ha1(Algorithm::Md5, "Mufasa", "http-auth@example.org", "Circle of Life");
        assert_eq!(
            digest_response(Algorithm::Md5, &md5, nonce, "GET", "/dir/index.html", q, None),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
        let sha = ha1(Algorithm::Sha256, "Mufasa", "http-auth@example.org", "Circle of Life");
        assert_eq!(
            digest_response(Algorithm::Sha256, &sha, nonce, "GET", "/dir/index.html", q, None),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn parses_credentials() {
        let c = parse_credentials(
            br#"Digest username="alice", realm="example.com", nonce="abc", uri="sip:example.com", response="0123", algorithm=MD5, qop=auth, nc=00000001, cnonce="x\"y""#,
        )
        .unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(c.cnonce.as_deref(), Some("x\"y"));
        assert_eq!(c.nc.as_deref(), Some("00000001"));
        assert_eq!(c.algorithm.as_deref(), Some("MD5"));
        let ok = r#"Digest realm="r",nonce="n",uri="u",response="x",username="a""#;
        assert!(parse_credentials(ok.as_bytes()).is_ok());
    }

    #[test]
    fn refuses_malformed_credentials() {
        let huge = format!(
            r#"Digest username="{}", realm="r", nonce="n", uri="u", response="x""#,
            "a".repeat(5000)
        );
        let long_value = format!(
            r#"Digest username="{}", realm="r", nonce="n", uri="u", response="x""#,
            "a".repeat(2000)
        );
        let bad: Vec<&[u8]> = vec![
            b"",
            b"Digest",
            b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
            br#"Digest username=alice, realm="r", nonce="n", uri="u", response="x""#,
            br#"Digest username="alice", username="bob", realm="r", nonce="n", uri="u", response="x""#,
            br#"Digest realm="r", nonce="n", uri="u", response="x""#,
            br#"Digest username="", realm="r", nonce="n", uri="u", response="x""#,
            br#"Digest username="alice, realm="r", nonce="n", uri="u", response="x""#,
            br#"Digest username="alice" realm="r""#,
            br#"Digest username="a", realm="r", nonce="n", uri="u", response="x", nc="00000001""#,
            br#"Digest username="a", realm="r", nonce="n", uri="u", response="x", ="y""#,
            br#"Digest username="a", realm="r", nonce="n", uri="u", response="x\"#,
            b"Digest username=\"\xff\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\"",
            huge.as_bytes(),
            long_value.as_bytes(),
        ];
        for b in bad {
            assert!(parse_credentials(b).is_err(), "accepted {:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn nonces_verify_and_tampering_is_caught() {
        let k = NonceKey::new(42);
        let n = k.encode(1234, 7);
        assert_eq!(n.len(), 39);
        assert_eq!(
            k.open(&n),
            Some(NonceInfo {
                expires_ms: 1234,
                index: 7
            })
        );
        assert_eq!(NonceKey::new(43).open(&n), None, "another proxy's key");
        let mut raw = URL_SAFE_NO_PAD.decode(&n).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 1;
            assert_eq!(k.open(&URL_SAFE_NO_PAD.encode(&raw)), None, "byte {i} flipped");
            raw[i] ^= 1;
        }
        assert_eq!(k.open("not base64 at all!"), None);
        assert_eq!(k.open(""), None);
    }

    #[test]
    fn nonce_counts_must_grow() {
        let k = NonceKey::new(1);
        let n = k.issue(0, 1000);
        let idx = k.open(&n).unwrap().index;
        assert_eq!(check_nc(idx, 1), Ok(()));
        assert_eq!(check_nc(idx, 1), Err(AuthFailure::ReplayedNc));
        assert_eq!(check_nc(idx, 3), Ok(()));
        assert_eq!(check_nc(idx, 2), Err(AuthFailure::ReplayedNc));
        // An index older than the table is stale, not replayed.
        let old = NEXT_INDEX.load(Ordering::Relaxed).wrapping_sub(NC_SLOTS as u32 + 5);
        assert_eq!(check_nc(old, 1), Err(AuthFailure::NcWindow));
    }

    #[test]
    fn algorithms_parameter() {
        let mut p = ModParams::default();
        p.set("auth", "algorithms", crate::config::ParamValue::Str("SHA-256, md5".into()))
            .unwrap();
        let c = AuthConfig::from_params(&p, 1).unwrap();
        assert_eq!(c.algorithms, vec![Algorithm::Sha256, Algorithm::Md5]);
        assert!(c.accepts(Algorithm::Md5Sess));
        let mut p = ModParams::default();
        p.set("auth", "algorithms", crate::config::ParamValue::Str("SHA-1".into())).unwrap();
        assert!(AuthConfig::from_params(&p, 1).is_err());
        let mut p = ModParams::default();
        p.set("auth", "nonce_expire", crate::config::ParamValue::Int(0)).unwrap();
        assert!(AuthConfig::from_params(&p, 1).is_err());
        assert_eq!(AuthConfig::from_params(&ModParams::default(), 1).unwrap().expire_ms, 300_000);
    }
}
