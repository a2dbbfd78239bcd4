//! TEMPORARY STUB (the real module lands from wip-ng).
#![allow(missing_docs)]
use super::{MediaRelay, OfferAnswer, RelayError, SessionInfo};
pub struct NgClient;
impl NgClient {
    pub fn new(_relays: &[&str], _timeout: std::time::Duration) -> Result<NgClient, RelayError> {
        Err(RelayError::Unreachable("stub".into()))
    }
}
impl MediaRelay for NgClient {
    fn offer(&self, _req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        Err(RelayError::NoSdp)
    }
    fn answer(&self, _req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        Err(RelayError::NoSdp)
    }
    fn delete(&self, c: &str, _f: Option<&str>, _t: Option<&str>) -> Result<(), RelayError> {
        Err(RelayError::NotFound(c.into()))
    }
    fn query(&self, c: &str) -> Result<SessionInfo, RelayError> {
        Err(RelayError::NotFound(c.into()))
    }
    fn list(&self) -> Result<Vec<SessionInfo>, RelayError> {
        Ok(vec![])
    }
    fn ping(&self) -> Result<(), RelayError> {
        Ok(())
    }
    fn name(&self) -> String {
        String::new()
    }
}
