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
use crate::remote::Remote;
use crate::{Error, Result};

/// At most this many messages per sync; the rest wait for the next one.
pub const PAGE: usize = 100;

/// Transaction ids are scoped per endpoint; this keeps them apart from room sends' in the store.
const TXN_PREFIX: &str = "sendToDevice\u{1f}";

pub struct ToDevice {
    server_name: ruma::OwnedServerName,
    store: Arc<dyn Store>,
    notifier: Arc<Notifier>,
    remote: Arc<dyn Remote>,
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
        remote: Arc<dyn Remote>,
    ) -> Self {
        Self {
            server_name,
            store,
            notifier,
            remote,
            acked: Mutex::new(HashMap::new()),
        }
    }

    /// `PUT /sendToDevice/{type}/{txnId}`: idempotent per (sender device, txn id). Messages to
    /// users of other servers go to those servers as `m.direct_to_device` EDUs.
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
        let (local, remote): (Messages, Messages) = messages
            .into_iter()
            .partition(|(user, _)| user.server_name() == self.server_name);
        let (mut ops, woken) = self.local_ops(sender, kind, local)?;
        ops.push(WriteOp::PutTxn {
            user_id: sender.to_string(),
            device_id: sender_device.to_owned(),
            txn_id: txn_key,
            result: String::new(),
        });
        self.store.submit(ops).await?;
        self.notifier.notify(woken.iter().map(|u| &**u));

        let mut by_server: BTreeMap<ruma::OwnedServerName, Messages> = BTreeMap::new();
        for (user, by_device) in remote {
            by_server
                .entry(user.server_name().to_owned())
                .or_default()
                .insert(user, by_device);
        }
        for (server, messages) in by_server {
            let edu = json!({
                "edu_type": "m.direct_to_device",
                "content": {
                    "sender": sender,
                    "type": kind,
                    "message_id": format!("{sender_device}_{txn_id}"),
                    "messages": messages,
                },
            });
            self.remote.send_edu(&[server], edu);
        }
        Ok(())
    }

    /// An `m.direct_to_device` EDU from `sender`'s server, for users of ours.
    pub async fn receive_remote(
        &self,
        sender: &UserId,
        kind: &str,
        messages: Messages,
    ) -> Result<()> {
        let local: Messages = messages
            .into_iter()
            .filter(|(user, _)| user.server_name() == self.server_name)
            .collect();
        let (ops, woken) = self.local_ops(sender, kind, local)?;
        if !ops.is_empty() {
            self.store.submit(ops).await?;
            self.notifier.notify(woken.iter().map(|u| &**u));
        }
        Ok(())
    }

    /// The queue writes for messages to users of this server, and whom they wake.
    fn local_ops(
        &self,
        sender: &UserId,
        kind: &str,
        messages: Messages,
    ) -> Result<(Vec<WriteOp>, Vec<OwnedUserId>)> {
        let mut ops = Vec::new();
        let mut woken: Vec<OwnedUserId> = Vec::new();
        for (user, by_device) in messages {
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
        Ok((ops, woken))
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
