//! Room aliases, and which rooms the public room directory lists (the `is_public` flag of the
//! room record).

use redb::{ReadableDatabase, ReadableTable, Table, WriteTransaction};

use crate::tables::*;
use crate::{RedbStore, RoomRecord, StorageResult};

#[derive(Clone, Debug)]
pub enum DirectoryOp {
    /// `alias → room`, remembering who made it (they may delete it).
    PutAlias {
        alias: String,
        room_id: String,
        creator: String,
    },
    DeleteAlias {
        alias: String,
    },
    /// Points every alias of a room at another (its replacement, after an upgrade); their
    /// makers keep them.
    MoveAliases {
        from: String,
        to: String,
    },
    /// Lists or unlists a room in the public directory.
    SetVisibility {
        room_id: String,
        public: bool,
    },
}

/// Reads of the directory; part of [`crate::Store`].
pub trait DirectoryStore {
    /// The room an alias points at, and who created the alias.
    fn alias(&self, alias: &str) -> StorageResult<Option<(String, String)>>;
    fn room_aliases(&self, room_id: &str) -> StorageResult<Vec<String>>;
}

impl DirectoryStore for RedbStore {
    fn alias(&self, alias: &str) -> StorageResult<Option<(String, String)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ALIASES)?;
        Ok(t.get(alias)?.map(|v| {
            let (room, creator) = v.value();
            (room.to_owned(), creator.to_owned())
        }))
    }

    fn room_aliases(&self, room_id: &str) -> StorageResult<Vec<String>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ROOM_ALIASES)?;
        let end = format!("{room_id}\0");
        t.range((room_id, "")..(end.as_str(), ""))?
            .map(|row| Ok(row?.0.value().1.to_owned()))
            .collect()
    }
}

pub(crate) struct DirectoryTables<'t> {
    aliases: Table<'t, &'static str, (&'static str, &'static str)>,
    room_aliases: Table<'t, (&'static str, &'static str), ()>,
}

impl<'t> DirectoryTables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> StorageResult<Self> {
        Ok(Self {
            aliases: txn.open_table(ALIASES)?,
            room_aliases: txn.open_table(ROOM_ALIASES)?,
        })
    }

    pub(crate) fn apply(
        &mut self,
        op: DirectoryOp,
        rooms: &mut Table<'_, &'static str, &'static [u8]>,
    ) -> StorageResult<()> {
        match op {
            DirectoryOp::PutAlias {
                alias,
                room_id,
                creator,
            } => {
                self.aliases
                    .insert(alias.as_str(), (room_id.as_str(), creator.as_str()))?;
                self.room_aliases
                    .insert((room_id.as_str(), alias.as_str()), ())?;
            }
            DirectoryOp::DeleteAlias { alias } => {
                let old = self
                    .aliases
                    .remove(alias.as_str())?
                    .map(|v| v.value().0.to_owned());
                if let Some(room) = old {
                    self.room_aliases.remove((room.as_str(), alias.as_str()))?;
                }
            }
            DirectoryOp::MoveAliases { from, to } => {
                let end = format!("{from}\0");
                let mut moved = Vec::new();
                for row in self
                    .room_aliases
                    .range((from.as_str(), "")..(end.as_str(), ""))?
                {
                    moved.push(row?.0.value().1.to_owned());
                }
                for alias in moved {
                    let creator = self
                        .aliases
                        .get(alias.as_str())?
                        .map(|v| v.value().1.to_owned())
                        .unwrap_or_default();
                    self.aliases
                        .insert(alias.as_str(), (to.as_str(), creator.as_str()))?;
                    self.room_aliases.remove((from.as_str(), alias.as_str()))?;
                    self.room_aliases
                        .insert((to.as_str(), alias.as_str()), ())?;
                }
            }
            DirectoryOp::SetVisibility { room_id, public } => {
                let current = rooms.get(room_id.as_str())?.map(|v| v.value().to_vec());
                if let Some(bytes) = current {
                    let mut rec: RoomRecord = serde_json::from_slice(&bytes)?;
                    rec.is_public = public;
                    rooms.insert(room_id.as_str(), serde_json::to_vec(&rec)?.as_slice())?;
                }
            }
        }
        Ok(())
    }
}
