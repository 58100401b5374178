//! To-device messages: queued durably per device, handed out by `/sync` in order, and deleted
//! once a later sync of the device acknowledges them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hearth_storage::{ChangeKey, Store, StreamPos, ToDeviceMessage, WriteOp};
use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use serde_json::json;
use serde_json::value::RawValue as RawJsonValue;

use crate::notifier::Notifier;
use crate::{Error, Result};

/// At most this many messages per sync; the rest wait for the next one.
pub const PAGE: usize = 100;

/// Transaction ids are scoped per endpoint; this keeps them apart from room sends' in the store.
const TXN_PREFIX: &str = "sendToDevice\u{1f}";

pub struct ToDevice {
    server_name: ruma::OwnedServerName,
    store: Arc<dyn Store>,
    notifier: Arc<Notifier>,
    /// Per device, the highest position it acknowledged. The deletion of acknowledged messages
    /// commits in the background; until it has, this keeps a replayed old token from getting
    /// them again.
    acked: Mutex<HashMap<(OwnedUserId, String), StreamPos>>,
}

/// `"*"` or one device id, per user, with the content for it.
pub type Messages = BTreeMap<OwnedUserId, BTreeMap<String, Box<RawJsonValue>>>;

impl ToDevice {
    pub fn new(
        server_name: ruma::OwnedServerName,
        store: Arc<dyn Store>,
        notifier: Arc<Notifier>,
    ) -> Self {
        Self {
            server_name,
            store,
            notifier,
            acked: Mutex::new(HashMap::new()),
        }
    }

    /// `PUT /sendToDevice/{type}/{txnId}`: idempotent per (sender device, txn id). Messages to
    /// users of other servers are left to federation.
    pub async fn send(
        &self,
        sender: &UserId,
        sender_device: &str,
        kind: &str,
        txn_id: &str,
        messages: Messages,
    ) -> Result<()> {
        let txn_key = format!("{TXN_PREFIX}{txn_id}");
        if self
            .store
            .txn_event(sender.as_str(), sender_device, &txn_key)?
            .is_some()
        {
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut woken: Vec<OwnedUserId> = Vec::new();
        for (user, by_device) in messages {
            if user.server_name() != self.server_name {
                continue;
            }
            let devices = self.store.devices(user.as_str())?;
            for (device, content) in by_device {
                if !content.get().trim_start().starts_with('{') {
                    return Err(Error::BadJson(
                        "to-device message content must be an object".into(),
                    ));
                }
                let targets: Vec<&str> = if device == "*" {
                    devices.iter().map(|(d, _)| d.as_str()).collect()
                } else if devices.iter().any(|(d, _)| *d == device) {
                    vec![device.as_str()]
                } else {
                    Vec::new()
                };
                let json = serde_json::to_string(&json!({
                    "sender": sender,
                    "type": kind,
                    "content": content,
                }))?;
                for d in targets {
                    ops.push(WriteOp::PutToDevice {
                        user_id: user.to_string(),
                        device_id: d.to_owned(),
                        json: json.clone(),
                    });
                }
            }
            woken.push(user);
        }
        ops.push(WriteOp::PutTxn {
            user_id: sender.to_string(),
            device_id: sender_device.to_owned(),
            txn_id: txn_key,
            result: String::new(),
        });
        self.store.submit(ops).await?;
        self.notifier.notify(woken.iter().map(|u| &**u));
        Ok(())
    }

    /// The device has everything up to `upto`: those messages go (in the background: if the
    /// delete fails, the next acknowledgement retries it).
    pub fn acknowledge(&self, user: &UserId, device: &str, upto: StreamPos) -> Result<()> {
        let prev = {
            let mut acked = self.acked.lock();
            let e = acked
                .entry((user.to_owned(), device.to_owned()))
                .or_default();
            let prev = *e;
            *e = (*e).max(upto);
            prev
        };
        // Nothing queued since the last acknowledgement deleted everything up to it: no read.
        let key = ChangeKey::ToDevice(user.to_string(), device.to_owned());
        let nothing_new = match self.store.last_change(&key) {
            Some(last) => prev >= last,
            None => prev >= self.store.opened_at() && prev > 0,
        };
        if upto > prev
            && !nothing_new
            && !self
                .store
                .to_device(user.as_str(), device, 0, upto, 1)?
                .is_empty()
        {
            let commit = self.store.submit(vec![WriteOp::DeleteToDevice {
                user_id: user.to_string(),
                device_id: device.to_owned(),
                upto,
            }]);
            tokio::spawn(async move {
                if let Err(e) = commit.await {
                    tracing::warn!(error = %e, "deleting acknowledged to-device messages failed");
                }
            });
        }
        Ok(())
    }

    /// Messages for a device after `after` (and after what it acknowledged) up to `upto`, one
    /// page.
    pub fn pending(
        &self,
        user: &UserId,
        device: &str,
        after: StreamPos,
        upto: StreamPos,
    ) -> Result<Vec<ToDeviceMessage>> {
        let acked = self
            .acked
            .lock()
            .get(&(user.to_owned(), device.to_owned()))
            .copied()
            .unwrap_or(0);
        let after = after.max(acked);
        let key = ChangeKey::ToDevice(user.to_string(), device.to_owned());
        if !self.store.changed_after(&key, after) {
            return Ok(Vec::new());
        }
        Ok(self
            .store
            .to_device(user.as_str(), device, after, upto, PAGE)?)
    }
}
