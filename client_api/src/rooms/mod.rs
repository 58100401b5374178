//! Rooms (spec: "Rooms", "Room membership", "Events", "Room Upgrades", "Reporting content"):
//! creating, joining, sending, reading, upgrading, reporting.

pub mod create;
pub mod members;
pub mod membership;
pub mod messages;
pub mod redact;
pub mod relations;
pub mod report;
pub mod send;
pub mod state;
pub mod upgrade;

use ruma::serde::Raw;
use serde_json::value::RawValue as RawJsonValue;

use crate::error::{ApiError, ApiResult};

/// Stream tokens are `s<position>`; extra `_`-separated parts are reserved for other streams.
pub(crate) fn parse_token(token: &str) -> ApiResult<u64> {
    let first = token.split('_').next().unwrap_or_default();
    first
        .strip_prefix('s')
        .unwrap_or(first)
        .parse()
        .map_err(|_| ApiError::invalid_param(format!("Invalid pagination token: {token}")))
}

pub(crate) fn token(pos: u64) -> String {
    format!("s{pos}")
}

pub(crate) fn raw<T>(json: Box<RawJsonValue>) -> Raw<T> {
    Raw::from_json(json)
}
