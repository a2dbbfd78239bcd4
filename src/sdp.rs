//! TEMPORARY STUB of the agreed SDP API (the real module lands from wip-sdp).
#![allow(missing_docs, dead_code)]
use std::net::{IpAddr, SocketAddr};
#[derive(Clone, Debug)]
pub struct Sdp {
    pub origin_addr: Option<IpAddr>,
    pub session_conn: Option<IpAddr>,
    pub media: Vec<Media>,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}
#[derive(Clone, Debug)]
pub struct Media {
    pub media: String,
    pub port: u16,
    pub proto: String,
    pub fmts: Vec<String>,
    pub conn: Option<IpAddr>,
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    pub direction: Direction,
    pub codecs: Vec<String>,
}
impl Media {
    pub fn is_hold(&self) -> bool {
        false
    }
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SdpError(pub String);
pub fn parse(_body: &[u8]) -> Result<Sdp, SdpError> {
    Err(SdpError("stub".into()))
}
pub fn rewrite(_body: &[u8], _t: &[Option<SocketAddr>]) -> Result<Vec<u8>, SdpError> {
    Err(SdpError("stub".into()))
}
