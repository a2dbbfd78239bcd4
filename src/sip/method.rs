//! SIP request methods (RFC 3261 §7.1, §27.4 and the extension RFCs).

use std::fmt;

/// A request method (RFC 3261 §7.1, §25.1 `Method`). Methods are
/// case-sensitive (RFC 3261 §7.1): `invite`
/// is an extension method, not INVITE.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `INVITE` (RFC 3261 §13).
    Invite,
    /// `ACK` (RFC 3261 §17.1.1.3).
    Ack,
    /// `BYE` (RFC 3261 §15).
    Bye,
    /// `CANCEL` (RFC 3261 §9).
    Cancel,
    /// `REGISTER` (RFC 3261 §10).
    Register,
    /// `OPTIONS` (RFC 3261 §11).
    Options,
    /// `INFO` (RFC 6086).
    Info,
    /// `PRACK` (RFC 3262).
    Prack,
    /// `UPDATE` (RFC 3311).
    Update,
    /// `SUBSCRIBE` (RFC 6665).
    Subscribe,
    /// `NOTIFY` (RFC 6665).
    Notify,
    /// `REFER` (RFC 3515).
    Refer,
    /// `MESSAGE` (RFC 3428).
    Message,
    /// `PUBLISH` (RFC 3903).
    Publish,
    /// Any other token (RFC 3261 §25.1 `extension-method`).
    Other(String),
}

impl Method {
    /// Parses a method token exactly as written (case-sensitive, RFC 3261
    /// §7.1).
    pub fn from_token(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "PRACK" => Method::Prack,
            "UPDATE" => Method::Update,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_string()),
        }
    }

    /// The method as it appears on the wire (RFC 3261 §25.1 `Method`).
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
