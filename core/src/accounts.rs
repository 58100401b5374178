//! Accounts, devices and access tokens.
//!
//! Access tokens are random and only their SHA-256 is stored, so a copy of the database does not
//! hand out sessions. Passwords are hashed with argon2id off the async runtime.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
pub use hearth_storage::DeviceRecord as DeviceInfo;
use hearth_storage::{DeviceRecord, Store, TokenRecord, UserRecord, WriteOp};
use parking_lot::RwLock;
use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use tokio::sync::Mutex;

use crate::e2ee::{DeviceLists, DeviceUpdate};
use crate::util::{now_ms, random_string, sha256};
use crate::{CoreConfig, Error, Result};

/// Who made a request: the owner of a valid access token.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
}

/// A cached token: its session, and when it expires (refreshable tokens only).
#[derive(Clone, Debug)]
struct CachedToken {
    session: Session,
    expires_at: Option<u64>,
}

pub struct NewLogin {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    /// With a refresh token, the access token expires after this long.
    pub refresh: Option<(String, std::time::Duration)>,
}

/// What a client asks of a new login: its device, the device's name, and a refresh token.
#[derive(Clone, Debug, Default)]
pub struct LoginOptions {
    pub device_id: Option<String>,
    pub display_name: Option<String>,
    pub refresh_token: bool,
}

/// How long a `/login/get_token` token lasts (Synapse's two minutes).
const LOGIN_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

pub struct Accounts {
    config: Arc<CoreConfig>,
    store: Arc<dyn Store>,
    /// Told when devices go or are renamed: other users' clients track device lists.
    device_lists: Arc<DeviceLists>,
    /// Serialises check-then-create sequences (is the user name free? which filter id is
    /// next?), which must not interleave.
    allocation: Mutex<()>,
    hasher: HashPool,
    /// token hash → session; tokens are looked up on every request.
    sessions: RwLock<HashMap<Vec<u8>, CachedToken>>,
    /// Single-use login tokens (`/login/get_token`): hash → (user, expiry in ms). In memory:
    /// they live two minutes, and a restart only makes the device ask again.
    login_tokens: parking_lot::Mutex<HashMap<Vec<u8>, (OwnedUserId, u64)>>,
    /// Devices whose sessions just ended (logout, deletion, deactivation, a password change):
    /// live WebSockets and long-polls of those devices stop on it.
    ended: tokio::sync::broadcast::Sender<Session>,
}

impl Accounts {
    pub fn new(
        config: Arc<CoreConfig>,
        store: Arc<dyn Store>,
        device_lists: Arc<DeviceLists>,
    ) -> Self {
        Self {
            config,
            store,
            device_lists,
            allocation: Mutex::new(()),
            hasher: HashPool::new(2),
            sessions: RwLock::new(HashMap::new()),
            login_tokens: Default::default(),
            ended: tokio::sync::broadcast::channel(64).0,
        }
    }

    /// Validates a requested localpart and turns it into a user ID of this server.
    pub fn user_id_for(&self, localpart: &str) -> Result<OwnedUserId> {
        let ok_chars = localpart
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'));
        if localpart.is_empty() || !ok_chars || localpart.starts_with('_') {
            return Err(Error::InvalidUsername(
                "User ID can only contain characters a-z, 0-9, or '=_-./+'".into(),
            ));
        }
        let user_id = format!("@{localpart}:{}", self.config.server_name);
        if user_id.len() > 255 {
            return Err(Error::InvalidUsername("User ID is too long".into()));
        }
        UserId::parse(user_id).map_err(|e| Error::InvalidUsername(e.to_string()))
    }

    /// Parses what a client gave as a login identifier: a localpart or a full user ID of ours.
    pub fn resolve_login_user(&self, user: &str) -> Result<OwnedUserId> {
        if user.starts_with('@') {
            let id = UserId::parse(user.to_lowercase())
                .map_err(|_| Error::forbidden("Invalid username or password"))?;
            if id.server_name() != self.config.server_name {
                return Err(Error::forbidden("Invalid username or password"));
            }
            Ok(id)
        } else {
            self.user_id_for(&user.to_lowercase())
                .map_err(|_| Error::forbidden("Invalid username or password"))
        }
    }

    pub fn is_available(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.store.user(user_id.as_str())?.is_none())
    }

    pub fn user(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        Ok(self.store.user(user_id.as_str())?)
    }

    /// Creates an account; with `login`, also a device and an access token for it.
    pub async fn register(
        &self,
        localpart: Option<&str>,
        password: Option<&str>,
        login: Option<LoginOptions>,
    ) -> Result<(OwnedUserId, Option<NewLogin>)> {
        let password_hash = match password {
            Some(p) => Some(self.hasher.hash(p.to_owned()).await?),
            None => None,
        };
        let _guard = self.allocation.lock().await;
        let user_id = match localpart {
            Some(l) => self.user_id_for(l)?,
            None => loop {
                let candidate = self.user_id_for(&random_string(12).to_lowercase())?;
                if self.is_available(&candidate)? {
                    break candidate;
                }
            },
        };
        if !self.is_available(&user_id)? {
            return Err(Error::UserInUse);
        }
        let record = UserRecord {
            password_hash,
            displayname: Some(user_id.localpart().to_owned()),
            created_ts: now_ms(),
            ..Default::default()
        };
        let mut ops = vec![WriteOp::PutUser(user_id.to_string(), record)];
        let login = login.map(|o| self.new_login_ops(&user_id, o, &mut ops));
        self.store.submit(ops).await?;
        if let Some(l) = &login {
            self.cache_session(l);
        }
        Ok((user_id, login))
    }

    pub async fn check_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        let invalid = || Error::forbidden("Invalid username or password");
        let user = self.store.user(user_id.as_str())?.ok_or_else(invalid)?;
        if user.deactivated {
            return Err(Error::forbidden("This account has been deactivated"));
        }
        let hash = user.password_hash.ok_or_else(invalid)?;
        let password = password.to_owned();
        let ok = self
            .hasher
            .run(move || {
                PasswordHash::new(&hash)
                    .map(|p| {
                        Argon2::default()
                            .verify_password(password.as_bytes(), &p)
                            .is_ok()
                    })
                    .unwrap_or(false)
            })
            .await?;
        if ok { Ok(()) } else { Err(invalid()) }
    }

    pub async fn login(
        &self,
        user_id: &UserId,
        password: &str,
        options: LoginOptions,
    ) -> Result<NewLogin> {
        self.check_password(user_id, password).await?;
        self.start_session(user_id, options).await
    }

    /// `POST /login/get_token`: a token another device of the user logs in with, once, within
    /// its lifetime.
    pub fn issue_login_token(&self, user_id: &UserId) -> (String, std::time::Duration) {
        let token = format!("hthl_{}", random_string(40));
        let now = now_ms();
        let mut tokens = self.login_tokens.lock();
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(
            sha256(token.as_bytes()),
            (
                user_id.to_owned(),
                now + LOGIN_TOKEN_LIFETIME.as_millis() as u64,
            ),
        );
        (token, LOGIN_TOKEN_LIFETIME)
    }

    /// `m.login.token`: logs in with a token from [`Self::issue_login_token`], using it up.
    pub async fn login_with_token(&self, token: &str, options: LoginOptions) -> Result<NewLogin> {
        let invalid = || Error::forbidden("Invalid login token");
        let (user_id, expires) = self
            .login_tokens
            .lock()
            .remove(&sha256(token.as_bytes()))
            .ok_or_else(invalid)?;
        if expires <= now_ms() {
            return Err(invalid());
        }
        if self
            .store
            .user(user_id.as_str())?
            .is_none_or(|u| u.deactivated)
        {
            return Err(invalid());
        }
        self.start_session(&user_id, options).await
    }

    /// A new device session (or a fresh one for an existing device id) for a user whose
    /// identity is established.
    async fn start_session(&self, user_id: &UserId, options: LoginOptions) -> Result<NewLogin> {
        let mut ops = Vec::new();
        // Logging in again with an existing device id replaces that device's tokens.
        if let Some(d) = &options.device_id
            && let Some(old) = self.store.device(user_id.as_str(), d)?
        {
            for h in [old.token_hash, old.refresh_hash].into_iter().flatten() {
                ops.push(WriteOp::DeleteToken(h.clone()));
                self.sessions.write().remove(&h);
            }
        }
        let is_new_device = match &options.device_id {
            Some(d) => self.store.device(user_id.as_str(), d)?.is_none(),
            None => true,
        };
        let display_name = options.display_name.clone();
        let login = self.new_login_ops(user_id, options, &mut ops);
        if is_new_device {
            // A new device is news to the user's other devices and to those who share a room
            // with them (as Synapse notifies it), before it has uploaded any key.
            let update = DeviceUpdate {
                device_id: login.device_id.to_string(),
                display_name,
                deleted: false,
                keys: None,
            };
            self.device_lists
                .commit_change(user_id, ops, vec![update])
                .await?;
        } else {
            self.store.submit(ops).await?;
        }
        self.cache_session(&login);
        Ok(login)
    }

    fn new_login_ops(
        &self,
        user_id: &UserId,
        options: LoginOptions,
        ops: &mut Vec<WriteOp>,
    ) -> NewLogin {
        let device_id: OwnedDeviceId = options
            .device_id
            .unwrap_or_else(|| random_string(10).to_uppercase())
            .into();
        let existing = self
            .store
            .device(user_id.as_str(), device_id.as_str())
            .ok()
            .flatten();
        let mut device = DeviceRecord {
            display_name: options
                .display_name
                .or(existing.and_then(|d| d.display_name)),
            last_seen_ts: Some(now_ms()),
            ..Default::default()
        };
        let (access_token, refresh) =
            self.token_ops(user_id, &device_id, &mut device, options.refresh_token, ops);
        ops.push(WriteOp::PutDevice(
            user_id.to_string(),
            device_id.to_string(),
            device,
        ));
        NewLogin {
            user_id: user_id.to_owned(),
            device_id,
            access_token,
            refresh,
        }
    }

    /// A new access token for a device (and a refresh token, if asked), written into its record.
    fn token_ops(
        &self,
        user_id: &UserId,
        device_id: &OwnedDeviceId,
        device: &mut DeviceRecord,
        with_refresh: bool,
        ops: &mut Vec<WriteOp>,
    ) -> (String, Option<(String, std::time::Duration)>) {
        let access_token = format!("hth_{}", random_string(40));
        let hash = sha256(access_token.as_bytes());
        let lifetime = self.config.refreshable_token_lifetime;
        let record = |expires_at, refresh| TokenRecord {
            user_id: user_id.to_string(),
            device_id: device_id.to_string(),
            expires_at,
            refresh,
        };
        let expires_at = with_refresh.then(|| now_ms() + lifetime.as_millis() as u64);
        ops.push(WriteOp::PutToken(hash.clone(), record(expires_at, false)));
        device.token_hash = Some(hash);
        device.refresh_hash = None;
        let refresh = with_refresh.then(|| {
            let refresh_token = format!("hthr_{}", random_string(40));
            let refresh_hash = sha256(refresh_token.as_bytes());
            ops.push(WriteOp::PutToken(refresh_hash.clone(), record(None, true)));
            device.refresh_hash = Some(refresh_hash);
            (refresh_token, lifetime)
        });
        (access_token, refresh)
    }

    /// `POST /refresh`: a refresh token buys a new access token and a new refresh token; the
    /// old ones stop working.
    pub async fn refresh(&self, refresh_token: &str) -> Result<NewLogin> {
        let hash = sha256(refresh_token.as_bytes());
        let rec = self
            .store
            .token(&hash)?
            .filter(|r| r.refresh)
            .ok_or(Error::UnknownToken)?;
        let user_id = UserId::parse(rec.user_id).map_err(Error::internal)?;
        let device_id: OwnedDeviceId = rec.device_id.into();
        let mut device = self
            .store
            .device(user_id.as_str(), device_id.as_str())?
            .filter(|d| d.refresh_hash.as_deref() == Some(hash.as_slice()))
            .ok_or(Error::UnknownToken)?;
        let mut ops = vec![WriteOp::DeleteToken(hash.clone())];
        if let Some(old) = device.token_hash.take() {
            ops.push(WriteOp::DeleteToken(old.clone()));
            self.sessions.write().remove(&old);
        }
        let (access_token, refresh) =
            self.token_ops(&user_id, &device_id, &mut device, true, &mut ops);
        ops.push(WriteOp::PutDevice(
            user_id.to_string(),
            device_id.to_string(),
            device,
        ));
        self.store.submit(ops).await?;
        let login = NewLogin {
            user_id,
            device_id,
            access_token,
            refresh,
        };
        self.cache_session(&login);
        Ok(login)
    }

    fn cache_session(&self, login: &NewLogin) {
        let expires_at = login
            .refresh
            .as_ref()
            .map(|(_, lifetime)| now_ms() + lifetime.as_millis() as u64);
        self.sessions.write().insert(
            sha256(login.access_token.as_bytes()),
            CachedToken {
                session: Session {
                    user_id: login.user_id.clone(),
                    device_id: login.device_id.clone(),
                },
                expires_at,
            },
        );
    }

    /// Resolves an access token to its session.
    pub fn authenticate(&self, token: &str) -> Result<Session> {
        let hash = sha256(token.as_bytes());
        let cached = self.sessions.read().get(&hash).cloned();
        let cached = match cached {
            Some(c) => c,
            None => {
                let rec = self
                    .store
                    .token(&hash)?
                    .filter(|r| !r.refresh)
                    .ok_or(Error::UnknownToken)?;
                let c = CachedToken {
                    session: Session {
                        user_id: UserId::parse(rec.user_id).map_err(Error::internal)?,
                        device_id: rec.device_id.into(),
                    },
                    expires_at: rec.expires_at,
                };
                self.sessions.write().insert(hash, c.clone());
                c
            }
        };
        if cached.expires_at.is_some_and(|t| now_ms() >= t) {
            return Err(Error::ExpiredToken);
        }
        Ok(cached.session)
    }

    pub fn devices(&self, user_id: &UserId) -> Result<Vec<(String, DeviceRecord)>> {
        Ok(self.store.devices(user_id.as_str())?)
    }

    pub fn device(&self, user_id: &UserId, device_id: &str) -> Result<Option<DeviceRecord>> {
        Ok(self.store.device(user_id.as_str(), device_id)?)
    }

    pub async fn rename_device(
        &self,
        user_id: &UserId,
        device_id: &str,
        name: Option<String>,
    ) -> Result<()> {
        let mut dev = self
            .store
            .device(user_id.as_str(), device_id)?
            .ok_or_else(|| Error::not_found("Device not found"))?;
        dev.display_name = name.clone();
        let op = WriteOp::PutDevice(user_id.to_string(), device_id.to_owned(), dev);
        let update = DeviceUpdate {
            device_id: device_id.to_owned(),
            display_name: name,
            deleted: false,
            keys: None,
        };
        self.device_lists
            .commit_change(user_id, vec![op], vec![update])
            .await
    }

    /// Deletes devices with their keys and revokes their access tokens.
    pub async fn delete_devices(&self, user_id: &UserId, device_ids: &[String]) -> Result<()> {
        let mut ops = Vec::new();
        let mut hashes = Vec::new();
        let mut updates = Vec::new();
        for d in device_ids {
            if let Some(dev) = self.store.device(user_id.as_str(), d)? {
                for h in [dev.token_hash, dev.refresh_hash].into_iter().flatten() {
                    ops.push(WriteOp::DeleteToken(h.clone()));
                    hashes.push(h);
                }
                ops.push(WriteOp::DeleteDevice(user_id.to_string(), d.clone()));
                updates.push(DeviceUpdate {
                    device_id: d.clone(),
                    display_name: None,
                    deleted: true,
                    keys: None,
                });
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        // Revoke in memory first: a request racing the commit must not slip through.
        {
            let mut sessions = self.sessions.write();
            for h in &hashes {
                sessions.remove(h);
            }
        }
        let ended: Vec<Session> = updates
            .iter()
            .map(|u| Session {
                user_id: user_id.to_owned(),
                device_id: u.device_id.as_str().into(),
            })
            .collect();
        // Told before the commit, which wakes the device's own long-polls (its device list
        // changed): they must end unanswered, not carry the change to a dead token. And again
        // after it, for those that began to wait in between: `session_ended` looked for the
        // device in the store then and still found it.
        let tell = |ended: &[Session]| {
            for session in ended {
                let _ = self.ended.send(session.clone());
            }
        };
        tell(&ended);
        self.device_lists
            .commit_change(user_id, ops, updates)
            .await?;
        tell(&ended);
        Ok(())
    }

    /// Resolves when `session`'s device is logged out, deleted or deactivated: what lives longer
    /// than one request (a WebSocket, a long-poll) must stop with the token that opened it.
    pub async fn session_ended(&self, session: &Session) {
        let mut ended = self.ended.subscribe();
        // Only a device known to be gone: a failed read must not end a live session.
        let gone = || {
            matches!(
                self.store
                    .device(session.user_id.as_str(), session.device_id.as_str()),
                Ok(None)
            )
        };
        // Subscribed first, then looked: an end committed in between is seen one way or the
        // other.
        if gone() {
            return;
        }
        loop {
            match ended.recv().await {
                Ok(s) if s.user_id == session.user_id && s.device_id == session.device_id => {
                    return;
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if gone() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    pub async fn delete_all_devices_except(
        &self,
        user_id: &UserId,
        keep: Option<&str>,
    ) -> Result<()> {
        let ids: Vec<String> = self
            .devices(user_id)?
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| Some(id.as_str()) != keep)
            .collect();
        self.delete_devices(user_id, &ids).await
    }

    pub async fn set_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        let hash = self.hasher.hash(password.to_owned()).await?;
        let mut user = self
            .store
            .user(user_id.as_str())?
            .ok_or_else(|| Error::not_found("No such user"))?;
        user.password_hash = Some(hash);
        self.store
            .submit(vec![WriteOp::PutUser(user_id.to_string(), user)])
            .await?;
        Ok(())
    }

    pub async fn update_user(
        &self,
        user_id: &UserId,
        f: impl FnOnce(&mut UserRecord),
    ) -> Result<UserRecord> {
        let mut user = self
            .store
            .user(user_id.as_str())?
            .ok_or_else(|| Error::not_found("No such user"))?;
        f(&mut user);
        self.store
            .submit(vec![WriteOp::PutUser(user_id.to_string(), user.clone())])
            .await?;
        Ok(user)
    }

    /// Marks the account deactivated and revokes every device. Leaving rooms is the caller's
    /// part, since it goes through the room graph.
    pub async fn deactivate(&self, user_id: &UserId) -> Result<()> {
        self.delete_all_devices_except(user_id, None).await?;
        self.update_user(user_id, |u| {
            u.deactivated = true;
            u.password_hash = None;
            u.displayname = None;
            u.avatar_url = None;
        })
        .await?;
        Ok(())
    }

    pub async fn put_filter(&self, user_id: &UserId, json: String) -> Result<u64> {
        let _guard = self.allocation.lock().await;
        let counter = format!("filter:{user_id}");
        let id = self.store.counter(&counter)? + 1;
        self.store
            .submit(vec![
                WriteOp::PutFilter(user_id.to_string(), id, json),
                WriteOp::SetCounter(counter, id),
            ])
            .await?;
        Ok(id)
    }

    pub fn filter(&self, user_id: &UserId, id: u64) -> Result<Option<String>> {
        Ok(self.store.filter(user_id.as_str(), id)?)
    }
}

/// Runs argon2 on a few long-lived threads. Each hash needs ~19 MiB of scratch memory; on
/// tokio's elastic blocking pool every new thread kept its own allocator arena of it, which grew
/// the server's RSS by gigabytes under a burst of logins. A fixed pool reuses the same memory.
struct HashPool {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl HashPool {
    fn new(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("hearth-argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        Self { jobs: tx }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .send(job)
            .map_err(|_| Error::internal("password hashing pool stopped"))?;
        rx.await
            .map_err(|_| Error::internal("password hashing job dropped"))
    }

    async fn hash(&self, password: String) -> Result<String> {
        self.run(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(Error::internal)
        })
        .await?
    }
}
