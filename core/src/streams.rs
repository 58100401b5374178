//! The streams a sync token covers, and the token itself.
//!
//! Persisted data (events, receipts, account data, to-device messages) takes positions in the
//! store's one global stream. Typing and presence live in memory only; their changes take serials
//! of the ephemeral stream, which starts at the boot time in microseconds, so serials keep growing
//! across restarts and an old token never claims to be ahead of a new server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hearth_storage::StreamPos;

/// Where a client stands in every stream: what its next sync starts after.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncToken {
    /// Global stream position (events, receipts, account data).
    pub pos: StreamPos,
    /// Ephemeral serial (typing, presence).
    pub ephemeral: u64,
    /// The last to-device message handed to the device. Separate from `pos` because a sync hands
    /// out at most a page of them: the rest wait for the next sync.
    pub to_device: StreamPos,
}

impl SyncToken {
    /// `s<pos>_<ephemeral>_<to_device>`; a bare `s<pos>` (a pagination token, or a token from
    /// before these streams) means the same position in every stream.
    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.strip_prefix('s').unwrap_or(token).split('_');
        let pos = parts.next()?.parse().ok()?;
        let ephemeral = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
        let to_device = parts
            .next()
            .map(str::parse)
            .transpose()
            .ok()?
            .unwrap_or(pos);
        Some(Self {
            pos,
            ephemeral,
            to_device,
        })
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}_{}_{}", self.pos, self.ephemeral, self.to_device)
    }
}

/// The serial counter of the ephemeral stream.
pub struct EphemeralSerial(AtomicU64);

impl Default for EphemeralSerial {
    fn default() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Self(AtomicU64::new(micros))
    }
}

impl EphemeralSerial {
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::AcqRel) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_old_forms_parse() {
        let t = SyncToken {
            pos: 12,
            ephemeral: 99,
            to_device: 7,
        };
        assert_eq!(SyncToken::parse(&t.to_string()), Some(t));
        let bare = SyncToken::parse("s5").unwrap();
        assert_eq!((bare.pos, bare.ephemeral, bare.to_device), (5, 0, 5));
        assert_eq!(SyncToken::parse("sx_1"), None);
        assert_eq!(SyncToken::parse("s1_y"), None);
    }
}

/// Fuzzing: a token from a client is any string; it parses or is refused, never panics, and what
/// the server writes reads back the same.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_string_parses_or_is_refused(token in any::<String>()) {
            let _ = SyncToken::parse(&token);
        }

        #[test]
        fn token_shaped_strings_parse_or_are_refused(token in "s?[0-9_]{0,40}") {
            let _ = SyncToken::parse(&token);
        }

        #[test]
        fn written_tokens_read_back(pos: u64, ephemeral: u64, to_device: u64) {
            let t = SyncToken { pos, ephemeral, to_device };
            prop_assert_eq!(SyncToken::parse(&t.to_string()), Some(t));
        }
    }
}
