//! Rows of the tables serlua shares with SER/Kamailio (Kamailio 5.x
//! schema: `subscriber`, `location`, `aliases`, `domain`, `trusted`,
//! `version`), as plain Rust values independent of the backend.

use chrono::{NaiveDate, NaiveDateTime};
use md5::{Digest, Md5};

/// Kamailio's `ha1` digest of a password: the lower-case hex MD5 of
/// `user:realm:password` (RFC 2617 §3.2.2.2 A1; what `kamctl add` stores in
/// `subscriber.ha1`, with realm = the subscriber's domain).
pub fn ha1(user: &str, realm: &str, password: &str) -> String {
    let digest = Md5::digest(format!("{user}:{realm}:{password}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Kamailio's `ha1b` digest: `ha1` with the user written as
/// `user@domain`, i.e. MD5(`user@domain:realm:password`) — for clients that
/// send the whole AOR as digest username (`kamctl add` stores it in
/// `subscriber.ha1b` with realm = domain).
pub fn ha1b(user: &str, domain: &str, realm: &str, password: &str) -> String {
    ha1(&format!("{user}@{domain}"), realm, password)
}

/// The `expires` serlua writes for a binding that never expires (a
/// permanent alias, `serlua alias add`): 2100-01-01 00:00:00 UTC. Kamailio's
/// own schema default is a fixed date in 2030; this one stays in the future
/// for the life of any deployment and still fits a 32-bit unsigned Unix time.
pub fn permanent_expires() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2100, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("valid date")
}

/// True when `expires` marks a binding that never expires: serlua's
/// [`permanent_expires`] (or later), or Kamailio's `expires = 0`, which its
/// usrloc writes as the Unix epoch (any date before 1970-01-02, to allow for
/// a server writing local time).
pub fn is_permanent(expires: NaiveDateTime) -> bool {
    expires >= permanent_expires()
        || expires
            < NaiveDate::from_ymd_opt(1970, 1, 2)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .expect("valid date")
}

/// A `subscriber` row (auth_db): who may authenticate, with the password
/// in clear and/or its digests. `ha1` = MD5(username:realm:password) with
/// realm = domain; `ha1b` = MD5(username@domain:realm:password)
/// (Kamailio's `calculate_ha1` conventions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscriber {
    /// User part of the AOR.
    pub username: String,
    /// Domain (the digest realm).
    pub domain: String,
    /// Clear-text password; empty when only the digests are stored.
    pub password: String,
    /// MD5(username:domain:password).
    pub ha1: String,
    /// MD5(username@domain:domain:password).
    pub ha1b: String,
}

impl Subscriber {
    /// A subscriber with a clear-text password and both digests computed
    /// the way `kamctl add` does (realm = domain).
    pub fn new(username: &str, domain: &str, password: &str) -> Subscriber {
        Subscriber {
            username: username.to_string(),
            domain: domain.to_string(),
            password: password.to_string(),
            ha1: ha1(username, domain, password),
            ha1b: ha1b(username, domain, domain, password),
        }
    }
}

/// A `domain` row: a domain this proxy is responsible for
/// (`is_uri_host_local`, `is_from_local`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRow {
    /// The domain name, lower-case.
    pub domain: String,
    /// Kamailio's domain id (`did`), when set.
    pub did: Option<String>,
}

/// A `trusted` row (permissions): a peer let in by `allow_trusted()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedRow {
    /// Database id (None before insertion).
    pub id: Option<i64>,
    /// Source IP address of the peer.
    pub src_ip: String,
    /// `udp`, `tcp`, `tls`, `sctp`, `ws`, `wss` or `any`.
    pub proto: String,
    /// Regular expression the From URI must match (None: any).
    pub from_pattern: Option<String>,
    /// Regular expression the Request-URI must match (None: any).
    pub ruri_pattern: Option<String>,
    /// Free text the admin attaches (Kamailio puts it in an AVP).
    pub tag: Option<String>,
    /// Higher first when several rows match.
    pub priority: i32,
}

/// Which usrloc table a binding lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UlTable {
    /// `location`: registered contacts (`save("location")`).
    Location,
    /// `aliases`: alias URIs and their targets (`lookup("aliases")`).
    Aliases,
}

impl UlTable {
    /// The table's name in the database and in ser.cfg.
    pub fn name(self) -> &'static str {
        match self {
            UlTable::Location => "location",
            UlTable::Aliases => "aliases",
        }
    }
}

/// A `location`/`aliases` row (usrloc), column for column.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingRow {
    /// Unique record id (Kamailio's `ruid`).
    pub ruid: String,
    /// User part of the AOR.
    pub username: String,
    /// Domain of the AOR (None when usrloc runs without domains).
    pub domain: Option<String>,
    /// The Contact URI as registered.
    pub contact: String,
    /// Where the REGISTER came from, for NATed contacts
    /// (`sip:192.0.2.1:5060;transport=udp`).
    pub received: Option<String>,
    /// Path header value (RFC 3327), when registered through a Path.
    pub path: Option<String>,
    /// When the binding expires (UTC).
    pub expires: NaiveDateTime,
    /// q-value, 0.0..=1.0 (RFC 3261 §10.2.1.2).
    pub q: f32,
    /// Call-ID of the REGISTER that made or refreshed it.
    pub callid: String,
    /// Its CSeq number.
    pub cseq: i32,
    /// When the row last changed (UTC).
    pub last_modified: NaiveDateTime,
    /// usrloc flags; the registrar's NAT flag is one of them.
    pub flags: i32,
    /// Branch flags.
    pub cflags: i32,
    /// User-Agent of the registering client.
    pub user_agent: String,
    /// Our socket it registered on (`udp:192.0.2.13:5060`).
    pub socket: Option<String>,
    /// Methods the contact accepts (bitmask), when known.
    pub methods: Option<i32>,
    /// `+sip.instance` (RFC 5626).
    pub instance: Option<String>,
    /// `reg-id` (RFC 5626).
    pub reg_id: i32,
}

/// One change to a usrloc table, queued by the write-behind queue and
/// written by [`crate::db::Db::apply`] in batches (one transaction each).
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // the shape the write-behind queue builds; boxing costs an allocation per op
pub enum UlOp {
    /// Insert the binding, or update the row with the same `ruid`.
    Upsert(BindingRow),
    /// Delete the row with this `ruid` (nothing happens when it is gone).
    Delete(String),
}
