use hearth_storage::StorageError;
use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Domain errors. Each maps to exactly one Matrix errcode in the API layers.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    MissingParam(String),
    #[error("{0}")]
    InvalidUsername(String),
    #[error("User ID already taken.")]
    UserInUse,
    #[error("Invalid access token.")]
    UnknownToken,
    /// An access token past its lifetime: the client refreshes it (a soft logout).
    #[error("Access token has expired.")]
    ExpiredToken,
    #[error("{0}")]
    UnsupportedRoomVersion(String),
    /// Another server's request concerns a room of a version this server does not speak.
    #[error("Room version {0} is not supported")]
    IncompatibleRoomVersion(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unrecognized(String),
    /// A key's signature does not verify.
    #[error("{0}")]
    InvalidSignature(String),
    /// A user's media would pass their storage quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Asynchronous upload: the media id already has its bytes.
    #[error("Media ID already has content")]
    CannotOverwriteMedia,
    /// Asynchronous upload: the media id has no bytes yet.
    #[error("Media has not been uploaded yet")]
    NotYetUploaded,
    /// A key backup write to a version that is not the current one (named, if there is one).
    #[error("Wrong backup version.")]
    WrongRoomKeysVersion(Option<String>),
    /// The room alias exists already.
    #[error("Room alias already taken")]
    AliasInUse,
    /// A canonical alias names an alias that does not point to the room.
    #[error("{0}")]
    BadAlias(String),
    /// A user reacted to an event with the same key before.
    #[error("Can't send same reaction twice")]
    DuplicateAnnotation,
    /// Sliding sync: the connection position is not (or no longer) known; start over.
    #[error("Unknown position")]
    UnknownPos,
    /// A request the server understood but refuses for a reason with no errcode of its own.
    #[error("{0}")]
    Unknown(String),
    /// Another server's error answer to a request made for a client (`make_join`), passed on
    /// as it came, as Synapse does: its status, errcode, message and room version.
    #[error("{errcode}: {message}")]
    Remote {
        status: u16,
        errcode: String,
        message: String,
        room_version: Option<String>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Error::Forbidden(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Error::Internal(msg.to_string())
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("serialisation: {e}"))
    }
}
