//! What end-to-end encryption needs stored: device keys, one-time and fallback keys,
//! cross-signing keys and signatures, the device list change stream, and key backups.
//!
//! The server never looks inside these beyond what the spec makes it check; they are kept as
//! the JSON the clients uploaded.

use redb::{ReadableDatabase, ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::tables::*;
use crate::{RedbStore, StorageResult, StreamPos};

/// A device's fallback key for one algorithm. It stays until replaced, even once used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackKeyRecord {
    /// `algorithm:key id`.
    pub key_id: String,
    pub json: String,
    pub used: bool,
}

/// A key backup version. `count` and `etag` are kept by the writer as keys come and go.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackupVersionRecord {
    pub algorithm: String,
    pub auth_data: String,
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub etag: u64,
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Clone, Debug)]
pub enum E2eeOp {
    PutDeviceKeys {
        user_id: String,
        device_id: String,
        json: String,
    },
    /// Adds one-time keys, `(algorithm:key id, JSON)`.
    PutOneTimeKeys {
        user_id: String,
        device_id: String,
        keys: Vec<(String, String)>,
    },
    DeleteOneTimeKey {
        user_id: String,
        device_id: String,
        key_id: String,
    },
    PutFallbackKey {
        user_id: String,
        device_id: String,
        algorithm: String,
        record: FallbackKeyRecord,
    },
    PutCrossSigningKey {
        user_id: String,
        usage: String,
        json: String,
    },
    PutKeySignature {
        target_user: String,
        key_id: String,
        signer: String,
        json: String,
    },
    /// Records at the next stream position that a user's device list changed.
    DeviceListChanged(String),
    /// Replaces (`Some`) or forgets (`None`) what this server keeps of a remote user's device
    /// list.
    PutRemoteDevices {
        user_id: String,
        json: Option<String>,
    },
    /// Records at the next stream position a change of `target`'s keys that only `viewer`
    /// hears of: their own user-signing key, or their signature on `target`'s master key.
    UserSignatureChanged { viewer: String, target: String },
    /// Creates a version or replaces its algorithm and auth data (count and etag are kept).
    PutBackupVersion {
        user_id: String,
        version: u64,
        record: BackupVersionRecord,
    },
    /// Marks a version deleted and drops its keys.
    DeleteBackupVersion { user_id: String, version: u64 },
    PutBackupKey {
        user_id: String,
        version: u64,
        room_id: String,
        session_id: String,
        json: String,
    },
    /// Drops a version's keys: all, one room's, or one session's.
    DeleteBackupKeys {
        user_id: String,
        version: u64,
        room_id: Option<String>,
        session_id: Option<String>,
    },
}

/// Reads of end-to-end encryption data; part of [`crate::Store`].
pub trait E2eeStore {
    /// Every device's keys of a user: `(device id, JSON)`.
    fn device_keys(&self, user_id: &str) -> StorageResult<Vec<(String, String)>>;
    /// A device's unclaimed one-time keys: `(algorithm:key id, JSON)`, in key order.
    fn one_time_keys(&self, user_id: &str, device_id: &str)
    -> StorageResult<Vec<(String, String)>>;
    /// A device's fallback keys by algorithm.
    fn fallback_keys(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> StorageResult<Vec<(String, FallbackKeyRecord)>>;
    /// A user's cross-signing keys: `(usage, JSON)`.
    fn cross_signing_keys(&self, user_id: &str) -> StorageResult<Vec<(String, String)>>;
    /// Signatures other users made on a user's keys: `(key id, signer, JSON)`.
    fn key_signatures(&self, target_user: &str) -> StorageResult<Vec<(String, String, String)>>;
    /// Users whose device list changed in `(after, upto]`, with the position of the change.
    fn device_list_changes(
        &self,
        after: StreamPos,
        upto: StreamPos,
    ) -> StorageResult<Vec<(StreamPos, String)>>;
    /// The position of a user's latest device list change.
    fn device_list_latest(&self, user_id: &str) -> StorageResult<Option<StreamPos>>;
    /// What this server keeps of a remote user's device list.
    fn remote_devices(&self, user_id: &str) -> StorageResult<Option<String>>;
    /// The users whose keys changed in `(after, upto]` in a way only `viewer` hears of.
    fn user_signature_changes(
        &self,
        viewer: &str,
        after: StreamPos,
        upto: StreamPos,
    ) -> StorageResult<Vec<String>>;
    fn backup_versions(&self, user_id: &str) -> StorageResult<Vec<(u64, BackupVersionRecord)>>;
    /// A version's keys, of one room or all: `(room id, session id, JSON)`.
    fn backup_keys(
        &self,
        user_id: &str,
        version: u64,
        room_id: Option<&str>,
    ) -> StorageResult<Vec<(String, String, String)>>;
    fn backup_session(
        &self,
        user_id: &str,
        version: u64,
        room_id: &str,
        session_id: &str,
    ) -> StorageResult<Option<String>>;
}

/// The smallest string above `s` in byte order: the exclusive end of every key whose
/// component equals `s`.
fn successor(s: &str) -> String {
    format!("{s}\0")
}

impl RedbStore {
    /// Every `(user, key) → JSON` row of one user, as `(key, JSON)`.
    fn rows_of_user(
        &self,
        table: redb::TableDefinition<(&str, &str), &str>,
        user_id: &str,
    ) -> StorageResult<Vec<(String, String)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(table)?;
        let end = successor(user_id);
        t.range((user_id, "")..(end.as_str(), ""))?
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value().1.to_owned(), v.value().to_owned()))
            })
            .collect()
    }
}

impl E2eeStore for RedbStore {
    fn device_keys(&self, user_id: &str) -> StorageResult<Vec<(String, String)>> {
        self.rows_of_user(DEVICE_KEYS, user_id)
    }

    fn one_time_keys(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> StorageResult<Vec<(String, String)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ONE_TIME_KEYS)?;
        let end = successor(device_id);
        t.range((user_id, device_id, "")..(user_id, end.as_str(), ""))?
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value().2.to_owned(), v.value().to_owned()))
            })
            .collect()
    }

    fn fallback_keys(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> StorageResult<Vec<(String, FallbackKeyRecord)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(FALLBACK_KEYS)?;
        let end = successor(device_id);
        t.range((user_id, device_id, "")..(user_id, end.as_str(), ""))?
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value().2.to_owned(), serde_json::from_slice(v.value())?))
            })
            .collect()
    }

    fn cross_signing_keys(&self, user_id: &str) -> StorageResult<Vec<(String, String)>> {
        self.rows_of_user(CROSS_SIGNING_KEYS, user_id)
    }

    fn key_signatures(&self, target_user: &str) -> StorageResult<Vec<(String, String, String)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(KEY_SIGNATURES)?;
        let end = successor(target_user);
        t.range((target_user, "", "")..(end.as_str(), "", ""))?
            .map(|row| {
                let (k, v) = row?;
                let (_, key_id, signer) = k.value();
                Ok((key_id.to_owned(), signer.to_owned(), v.value().to_owned()))
            })
            .collect()
    }

    fn device_list_changes(
        &self,
        after: StreamPos,
        upto: StreamPos,
    ) -> StorageResult<Vec<(StreamPos, String)>> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(DEVICE_LIST_STREAM)?;
        t.range(after + 1..=upto)?
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value(), v.value().to_owned()))
            })
            .collect()
    }

    fn device_list_latest(&self, user_id: &str) -> StorageResult<Option<StreamPos>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(DEVICE_LIST_LATEST)?;
        Ok(t.get(user_id)?.map(|v| v.value()))
    }

    fn remote_devices(&self, user_id: &str) -> StorageResult<Option<String>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(REMOTE_DEVICE_CACHE)?;
        Ok(t.get(user_id)?.map(|v| v.value().to_owned()))
    }

    fn user_signature_changes(
        &self,
        viewer: &str,
        after: StreamPos,
        upto: StreamPos,
    ) -> StorageResult<Vec<String>> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(USER_SIGNATURE_STREAM)?;
        let mut out = Vec::new();
        for row in t.range(after + 1..=upto)? {
            let (_, v) = row?;
            let (v_viewer, target) = v.value();
            if v_viewer == viewer {
                out.push(target.to_owned());
            }
        }
        Ok(out)
    }

    fn backup_versions(&self, user_id: &str) -> StorageResult<Vec<(u64, BackupVersionRecord)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BACKUP_VERSIONS)?;
        t.range((user_id, 0)..=(user_id, u64::MAX))?
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value().1, serde_json::from_slice(v.value())?))
            })
            .collect()
    }

    fn backup_keys(
        &self,
        user_id: &str,
        version: u64,
        room_id: Option<&str>,
    ) -> StorageResult<Vec<(String, String, String)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BACKUP_KEYS)?;
        let collect = |range: redb::Range<'_, (&str, u64, &str, &str), &str>| {
            range
                .map(|row| {
                    let (k, v) = row?;
                    let (_, _, room, session) = k.value();
                    Ok((room.to_owned(), session.to_owned(), v.value().to_owned()))
                })
                .collect()
        };
        match room_id {
            Some(room) => {
                let end = successor(room);
                collect(
                    t.range((user_id, version, room, "")..(user_id, version, end.as_str(), ""))?,
                )
            }
            None => collect(t.range(version_range(user_id, version))?),
        }
    }

    fn backup_session(
        &self,
        user_id: &str,
        version: u64,
        room_id: &str,
        session_id: &str,
    ) -> StorageResult<Option<String>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BACKUP_KEYS)?;
        Ok(t.get((user_id, version, room_id, session_id))?
            .map(|v| v.value().to_owned()))
    }
}

type BackupKey<'a> = (&'a str, u64, &'a str, &'a str);

/// Every backup key of one version. Room ids are ASCII, so they sort below U+10FFFF.
fn version_range(user: &str, version: u64) -> std::ops::RangeInclusive<BackupKey<'_>> {
    (user, version, "", "")..=(user, version, "\u{10ffff}", "\u{10ffff}")
}

/// The end-to-end encryption tables of one write transaction.
pub(crate) struct E2eeTables<'t> {
    device_keys: Table<'t, (&'static str, &'static str), &'static str>,
    one_time_keys: Table<'t, (&'static str, &'static str, &'static str), &'static str>,
    fallback_keys: Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>,
    cross_signing: Table<'t, (&'static str, &'static str), &'static str>,
    signatures: Table<'t, (&'static str, &'static str, &'static str), &'static str>,
    device_lists: Table<'t, u64, &'static str>,
    device_list_latest: Table<'t, &'static str, u64>,
    remote_devices: Table<'t, &'static str, &'static str>,
    user_signatures: Table<'t, u64, (&'static str, &'static str)>,
    user_signature_latest: Table<'t, (&'static str, &'static str), u64>,
    backup_versions: Table<'t, (&'static str, u64), &'static [u8]>,
    backup_keys: Table<'t, (&'static str, u64, &'static str, &'static str), &'static str>,
}

impl<'t> E2eeTables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> StorageResult<Self> {
        Ok(Self {
            device_keys: txn.open_table(DEVICE_KEYS)?,
            one_time_keys: txn.open_table(ONE_TIME_KEYS)?,
            fallback_keys: txn.open_table(FALLBACK_KEYS)?,
            cross_signing: txn.open_table(CROSS_SIGNING_KEYS)?,
            signatures: txn.open_table(KEY_SIGNATURES)?,
            device_lists: txn.open_table(DEVICE_LIST_STREAM)?,
            device_list_latest: txn.open_table(DEVICE_LIST_LATEST)?,
            remote_devices: txn.open_table(REMOTE_DEVICE_CACHE)?,
            user_signatures: txn.open_table(USER_SIGNATURE_STREAM)?,
            user_signature_latest: txn.open_table(USER_SIGNATURE_LATEST)?,
            backup_versions: txn.open_table(BACKUP_VERSIONS)?,
            backup_keys: txn.open_table(BACKUP_KEYS)?,
        })
    }

    /// A deleted device takes its keys with it.
    pub(crate) fn delete_device(&mut self, user: &str, device: &str) -> StorageResult<()> {
        self.device_keys.remove((user, device))?;
        let end = successor(device);
        self.one_time_keys
            .retain_in((user, device, "")..(user, end.as_str(), ""), |_, _| false)?;
        self.fallback_keys
            .retain_in((user, device, "")..(user, end.as_str(), ""), |_, _| false)?;
        Ok(())
    }

    pub(crate) fn apply(
        &mut self,
        op: E2eeOp,
        next_pos: &mut StreamPos,
    ) -> StorageResult<Option<StreamPos>> {
        match op {
            E2eeOp::PutDeviceKeys {
                user_id,
                device_id,
                json,
            } => {
                self.device_keys
                    .insert((user_id.as_str(), device_id.as_str()), json.as_str())?;
            }
            E2eeOp::PutOneTimeKeys {
                user_id,
                device_id,
                keys,
            } => {
                for (id, json) in &keys {
                    self.one_time_keys.insert(
                        (user_id.as_str(), device_id.as_str(), id.as_str()),
                        json.as_str(),
                    )?;
                }
            }
            E2eeOp::DeleteOneTimeKey {
                user_id,
                device_id,
                key_id,
            } => {
                self.one_time_keys.remove((
                    user_id.as_str(),
                    device_id.as_str(),
                    key_id.as_str(),
                ))?;
            }
            E2eeOp::PutFallbackKey {
                user_id,
                device_id,
                algorithm,
                record,
            } => {
                self.fallback_keys.insert(
                    (user_id.as_str(), device_id.as_str(), algorithm.as_str()),
                    serde_json::to_vec(&record)?.as_slice(),
                )?;
            }
            E2eeOp::PutCrossSigningKey {
                user_id,
                usage,
                json,
            } => {
                self.cross_signing
                    .insert((user_id.as_str(), usage.as_str()), json.as_str())?;
            }
            E2eeOp::PutKeySignature {
                target_user,
                key_id,
                signer,
                json,
            } => {
                self.signatures.insert(
                    (target_user.as_str(), key_id.as_str(), signer.as_str()),
                    json.as_str(),
                )?;
            }
            E2eeOp::PutRemoteDevices { user_id, json } => match json {
                Some(json) => {
                    self.remote_devices
                        .insert(user_id.as_str(), json.as_str())?;
                }
                None => {
                    self.remote_devices.remove(user_id.as_str())?;
                }
            },
            E2eeOp::DeviceListChanged(user_id) => {
                *next_pos += 1;
                let pos = *next_pos;
                let old = self
                    .device_list_latest
                    .insert(user_id.as_str(), pos)?
                    .map(|v| v.value());
                if let Some(old) = old {
                    self.device_lists.remove(old)?;
                }
                self.device_lists.insert(pos, user_id.as_str())?;
                return Ok(Some(pos));
            }
            E2eeOp::UserSignatureChanged { viewer, target } => {
                *next_pos += 1;
                let pos = *next_pos;
                let pair = (viewer.as_str(), target.as_str());
                let old = self
                    .user_signature_latest
                    .insert(pair, pos)?
                    .map(|v| v.value());
                if let Some(old) = old {
                    self.user_signatures.remove(old)?;
                }
                self.user_signatures.insert(pos, pair)?;
                return Ok(Some(pos));
            }
            E2eeOp::PutBackupVersion {
                user_id,
                version,
                mut record,
            } => {
                let key = (user_id.as_str(), version);
                let old = self
                    .backup_versions
                    .get(key)?
                    .map(|v| serde_json::from_slice::<BackupVersionRecord>(v.value()))
                    .transpose()?;
                if let Some(old) = old {
                    record.count = old.count;
                    record.etag = old.etag;
                }
                self.backup_versions
                    .insert(key, serde_json::to_vec(&record)?.as_slice())?;
            }
            E2eeOp::DeleteBackupVersion { user_id, version } => {
                self.update_version(&user_id, version, |r| {
                    r.deleted = true;
                    r.count = 0;
                    r.etag += 1;
                })?;
                self.backup_keys
                    .retain_in(version_range(&user_id, version), |_, _| false)?;
            }
            E2eeOp::PutBackupKey {
                user_id,
                version,
                room_id,
                session_id,
                json,
            } => {
                let added = self
                    .backup_keys
                    .insert(
                        (
                            user_id.as_str(),
                            version,
                            room_id.as_str(),
                            session_id.as_str(),
                        ),
                        json.as_str(),
                    )?
                    .is_none();
                self.update_version(&user_id, version, |r| {
                    r.count += u64::from(added);
                    r.etag += 1;
                })?;
            }
            E2eeOp::DeleteBackupKeys {
                user_id,
                version,
                room_id,
                session_id,
            } => {
                let u = user_id.as_str();
                let mut removed = 0u64;
                match (&room_id, &session_id) {
                    (Some(room), Some(session)) => {
                        let old = self.backup_keys.remove((
                            u,
                            version,
                            room.as_str(),
                            session.as_str(),
                        ))?;
                        removed = u64::from(old.is_some());
                    }
                    (Some(room), None) => {
                        let end = successor(room);
                        self.backup_keys.retain_in(
                            (u, version, room.as_str(), "")..(u, version, end.as_str(), ""),
                            |_, _| {
                                removed += 1;
                                false
                            },
                        )?;
                    }
                    _ => {
                        self.backup_keys
                            .retain_in(version_range(u, version), |_, _| {
                                removed += 1;
                                false
                            })?;
                    }
                }
                self.update_version(&user_id, version, |r| {
                    r.count = r.count.saturating_sub(removed);
                    r.etag += 1;
                })?;
            }
        }
        Ok(None)
    }

    fn update_version(
        &mut self,
        user: &str,
        version: u64,
        f: impl FnOnce(&mut BackupVersionRecord),
    ) -> StorageResult<()> {
        let Some(mut record) = self
            .backup_versions
            .get((user, version))?
            .map(|v| serde_json::from_slice::<BackupVersionRecord>(v.value()))
            .transpose()?
        else {
            return Ok(());
        };
        f(&mut record);
        self.backup_versions
            .insert((user, version), serde_json::to_vec(&record)?.as_slice())?;
        Ok(())
    }
}
