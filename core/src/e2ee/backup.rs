//! Server-side key backup: `/room_keys/version` and `/room_keys/keys`. The backed-up session
//! keys are encrypted by the client; the server keeps the best copy of each session by the
//! spec's rules and never reads `session_data`.

use std::collections::BTreeMap;

use hearth_storage::WriteOp;
use hearth_storage::e2ee::{BackupVersionRecord, E2eeOp};
use ruma::UserId;
use serde::Deserialize;

use super::{E2ee, Json};
use crate::{Error, Result};

pub struct BackupVersion {
    pub version: String,
    pub algorithm: String,
    pub auth_data: Json,
    pub count: u64,
    pub etag: String,
}

/// `(count, etag)` of the version after a change.
pub struct RoomKeyUpdate {
    pub count: u64,
    pub etag: String,
}

/// room → session → KeyBackupData.
pub type RoomKeys = BTreeMap<String, BTreeMap<String, Json>>;

#[derive(Deserialize)]
struct Ranking {
    first_message_index: u64,
    forwarded_count: u64,
    is_verified: bool,
}

/// Whether `new` should replace `old` (spec: "Storing keys"): a verified copy beats an
/// unverified one, then the lower first message index, then the lower forwarded count.
fn better(new: &Json, old: &Json) -> bool {
    let (Ok(n), Ok(o)) = (Ranking::deserialize(new), Ranking::deserialize(old)) else {
        return true;
    };
    if n.is_verified != o.is_verified {
        return n.is_verified;
    }
    if n.first_message_index != o.first_message_index {
        return n.first_message_index < o.first_message_index;
    }
    n.forwarded_count < o.forwarded_count
}

fn parse_version(version: &str) -> Result<u64> {
    version
        .parse()
        .map_err(|_| Error::NotFound(format!("Unknown backup version {version}")))
}

impl E2ee {
    fn versions(&self, user: &UserId) -> Result<Vec<(u64, BackupVersionRecord)>> {
        Ok(self.store.backup_versions(user.as_str())?)
    }

    fn current_version(&self, user: &UserId) -> Result<Option<(u64, BackupVersionRecord)>> {
        Ok(self
            .versions(user)?
            .into_iter()
            .rev()
            .find(|(_, r)| !r.deleted))
    }

    fn live_version(&self, user: &UserId, version: &str) -> Result<BackupVersionRecord> {
        let v = parse_version(version)?;
        self.versions(user)?
            .into_iter()
            .find(|(n, r)| *n == v && !r.deleted)
            .map(|(_, r)| r)
            .ok_or_else(|| Error::NotFound(format!("Unknown backup version {version}")))
    }

    pub async fn create_backup(
        &self,
        user: &UserId,
        algorithm: String,
        auth_data: Json,
    ) -> Result<String> {
        let _g = self.backup_lock.lock().await;
        let next = self.versions(user)?.last().map_or(1, |(v, _)| v + 1);
        self.store
            .submit(vec![WriteOp::E2ee(E2eeOp::PutBackupVersion {
                user_id: user.to_string(),
                version: next,
                record: BackupVersionRecord {
                    algorithm,
                    auth_data: auth_data.to_string(),
                    ..Default::default()
                },
            })])
            .await?;
        Ok(next.to_string())
    }

    /// A version, or the current one with `None`.
    pub fn backup(&self, user: &UserId, version: Option<&str>) -> Result<BackupVersion> {
        let (v, r) = match version {
            Some(s) => (parse_version(s)?, self.live_version(user, s)?),
            None => self
                .current_version(user)?
                .ok_or_else(|| Error::NotFound("No current backup version".into()))?,
        };
        Ok(BackupVersion {
            version: v.to_string(),
            algorithm: r.algorithm,
            auth_data: serde_json::from_str(&r.auth_data)?,
            count: r.count,
            etag: r.etag.to_string(),
        })
    }

    pub async fn update_backup(
        &self,
        user: &UserId,
        version: &str,
        algorithm: String,
        auth_data: Json,
    ) -> Result<()> {
        let _g = self.backup_lock.lock().await;
        let old = self.live_version(user, version)?;
        if old.algorithm != algorithm {
            return Err(Error::InvalidParam(
                "The algorithm of a backup version cannot change".into(),
            ));
        }
        self.store
            .submit(vec![WriteOp::E2ee(E2eeOp::PutBackupVersion {
                user_id: user.to_string(),
                version: parse_version(version)?,
                record: BackupVersionRecord {
                    algorithm,
                    auth_data: auth_data.to_string(),
                    ..old
                },
            })])
            .await?;
        Ok(())
    }

    pub async fn delete_backup(&self, user: &UserId, version: &str) -> Result<()> {
        let _g = self.backup_lock.lock().await;
        self.live_version(user, version)?;
        self.store
            .submit(vec![WriteOp::E2ee(E2eeOp::DeleteBackupVersion {
                user_id: user.to_string(),
                version: parse_version(version)?,
            })])
            .await?;
        Ok(())
    }

    /// Stores keys into the current version; each session keeps the better of its old and new
    /// copies. Writing to an older version is refused with the current one named.
    pub async fn put_room_keys(
        &self,
        user: &UserId,
        version: &str,
        keys: RoomKeys,
    ) -> Result<RoomKeyUpdate> {
        let _g = self.backup_lock.lock().await;
        let current = self.current_version(user)?;
        let v = match &current {
            Some((v, _)) if v.to_string() == version => *v,
            Some((v, _)) => {
                return Err(Error::WrongRoomKeysVersion(Some(v.to_string())));
            }
            None => return Err(Error::NotFound(format!("Unknown backup version {version}"))),
        };
        let u = user.as_str();
        let mut ops = Vec::new();
        for (room, sessions) in keys {
            for (session, data) in sessions {
                if let Some(old) = self.store.backup_session(u, v, &room, &session)?
                    && !better(&data, &serde_json::from_str(&old)?)
                {
                    continue;
                }
                ops.push(WriteOp::E2ee(E2eeOp::PutBackupKey {
                    user_id: u.into(),
                    version: v,
                    room_id: room.clone(),
                    session_id: session,
                    json: data.to_string(),
                }));
            }
        }
        if !ops.is_empty() {
            self.store.submit(ops).await?;
        }
        let r = self.live_version(user, version)?;
        Ok(RoomKeyUpdate {
            count: r.count,
            etag: r.etag.to_string(),
        })
    }

    /// A version's keys: all of them, one room's, or one session (`None` if absent).
    pub fn room_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<RoomKeys> {
        self.live_version(user, version)?;
        let v = parse_version(version)?;
        let mut out = RoomKeys::new();
        if let (Some(room), Some(session)) = (room, session) {
            if let Some(json) = self.store.backup_session(user.as_str(), v, room, session)? {
                out.entry(room.into())
                    .or_default()
                    .insert(session.into(), serde_json::from_str(&json)?);
            }
            return Ok(out);
        }
        for (r, s, json) in self.store.backup_keys(user.as_str(), v, room)? {
            out.entry(r)
                .or_default()
                .insert(s, serde_json::from_str(&json)?);
        }
        Ok(out)
    }

    pub async fn delete_room_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<RoomKeyUpdate> {
        let _g = self.backup_lock.lock().await;
        self.live_version(user, version)?;
        self.store
            .submit(vec![WriteOp::E2ee(E2eeOp::DeleteBackupKeys {
                user_id: user.to_string(),
                version: parse_version(version)?,
                room_id: room.map(str::to_owned),
                session_id: session.map(str::to_owned),
            })])
            .await?;
        let r = self.live_version(user, version)?;
        Ok(RoomKeyUpdate {
            count: r.count,
            etag: r.etag.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::better;

    fn key(verified: bool, index: u64, forwarded: u64) -> serde_json::Value {
        json!({
            "first_message_index": index,
            "forwarded_count": forwarded,
            "is_verified": verified,
            "session_data": {},
        })
    }

    #[test]
    fn the_spec_ranks_backed_up_sessions() {
        assert!(better(&key(true, 5, 5), &key(false, 0, 0)));
        assert!(!better(&key(false, 0, 0), &key(true, 5, 5)));
        assert!(better(&key(false, 1, 5), &key(false, 2, 0)));
        assert!(!better(&key(false, 2, 0), &key(false, 1, 5)));
        assert!(better(&key(true, 1, 0), &key(true, 1, 1)));
        assert!(!better(&key(true, 1, 1), &key(true, 1, 1)));
    }
}
