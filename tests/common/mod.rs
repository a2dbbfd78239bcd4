//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod corpus;
pub mod db;
pub mod net;
pub mod ports;
