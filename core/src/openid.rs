//! OpenID tokens (spec: "OpenID"): a user asks for a short-lived token that a third party
//! (a widget, Element Call's authorisation service) hands to the user's homeserver over
//! federation to learn who the user is, and nothing more.
//!
//! Tokens live in memory: they last an hour and only prove identity at the moment they are
//! checked, so a restart costs a client no more than asking for a new one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};

use crate::util::random_string;

/// How long a token is good for (Synapse's default).
pub const OPENID_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct OpenId {
    tokens: Mutex<HashMap<String, (OwnedUserId, Instant)>>,
}

impl OpenId {
    /// A new token for `user`.
    pub fn issue(&self, user: &UserId) -> String {
        let token = random_string(32);
        let now = Instant::now();
        let mut tokens = self.tokens.lock();
        // Expired tokens go whenever a new one is made: the map stays as small as the tokens
        // in use.
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(
            token.clone(),
            (user.to_owned(), now + OPENID_TOKEN_LIFETIME),
        );
        token
    }

    /// The user a token was issued to, while it is valid.
    pub fn user_of(&self, token: &str) -> Option<OwnedUserId> {
        let tokens = self.tokens.lock();
        tokens
            .get(token)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(user, _)| user.clone())
    }
}
