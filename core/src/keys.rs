//! The server's ed25519 signing key: generated on first start, kept in the data directory.

use std::path::Path;

use base64::Engine;
use ruma::OwnedServerName;
use ruma::signatures::{Ed25519KeyPair, KeyPair};

use crate::{Error, Result};

pub struct ServerKeys {
    pub server_name: OwnedServerName,
    pub key_pair: Ed25519KeyPair,
    /// Keys this server signed with before a rotation, published as `old_verify_keys` so that
    /// peers can still check what they signed.
    pub old_keys: Vec<OldKey>,
}

/// A retired signing key: its id, public key (unpadded base64) and when it stopped being used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldKey {
    pub key_id: String,
    pub public_key: String,
    pub expired_ts: u64,
}

const KEY_FILE: &str = "signing.key";
/// One line per retired key: `ed25519 <version> <public key> <expired_ts>`.
const OLD_KEYS_FILE: &str = "old_signing.keys";

fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).map_err(Error::internal)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::rename(&tmp, dir.join(name)).map_err(Error::internal)
}

fn new_key_line() -> String {
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let doc = Ed25519KeyPair::generate();
    let version = crate::util::random_string(6);
    format!("ed25519 {version} {}\n", b64.encode(&doc))
}

impl ServerKeys {
    /// Loads `signing.key` from `dir`, creating it on first start. The file holds
    /// `ed25519 <version> <base64 PKCS#8>`, the layout Synapse uses for its signing key files
    /// with the key material in PKCS#8 form.
    pub fn load_or_generate(dir: &Path, server_name: OwnedServerName) -> Result<Self> {
        let path = dir.join(KEY_FILE);
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        if !path.exists() {
            write_atomically(dir, KEY_FILE, &new_key_line())?;
        }
        let text = std::fs::read_to_string(&path).map_err(Error::internal)?;
        let mut parts = text.split_whitespace();
        let (Some("ed25519"), Some(version), Some(key)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Internal(format!(
                "{} is not a signing key file",
                path.display()
            )));
        };
        let doc = b64
            .decode(key.trim_end_matches('='))
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        let key_pair = Ed25519KeyPair::from_der(&doc, version.to_owned())
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        Ok(Self {
            server_name,
            key_pair,
            old_keys: load_old_keys(dir)?,
        })
    }

    /// Replaces the signing key in `dir` by a new one and retires the old one (published as an
    /// old verify key from the next start on). Answers `(old key id, new key id)`.
    pub fn rotate(dir: &Path, server_name: OwnedServerName) -> Result<(String, String)> {
        let current = Self::load_or_generate(dir, server_name.clone())?;
        let mut old = current.old_keys.clone();
        old.push(OldKey {
            key_id: current.key_id(),
            public_key: current.public_key_base64(),
            expired_ts: crate::util::now_ms(),
        });
        let lines: String = old
            .iter()
            .map(|k| {
                let version = k.key_id.trim_start_matches("ed25519:");
                format!("ed25519 {version} {} {}\n", k.public_key, k.expired_ts)
            })
            .collect();
        // The retired key is recorded before the new one replaces it: a crash between the two
        // leaves the old key in use and listed, never a key that peers cannot check.
        write_atomically(dir, OLD_KEYS_FILE, &lines)?;
        write_atomically(dir, KEY_FILE, &new_key_line())?;
        let new = Self::load_or_generate(dir, server_name)?;
        Ok((current.key_id(), new.key_id()))
    }

    /// A throwaway key, for tests.
    pub fn ephemeral(server_name: OwnedServerName) -> Self {
        let doc = Ed25519KeyPair::generate();
        let key_pair = Ed25519KeyPair::from_der(&doc, "test".into()).expect("fresh key parses");
        Self {
            server_name,
            key_pair,
            old_keys: Vec::new(),
        }
    }

    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.key_pair.version())
    }

    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.key_pair.public_key())
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key_pair.sign(message).as_bytes().to_vec()
    }
}

fn load_old_keys(dir: &Path) -> Result<Vec<OldKey>> {
    let path = dir.join(OLD_KEYS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(Error::internal)?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["ed25519", version, key, expired] => out.push(OldKey {
                key_id: format!("ed25519:{version}"),
                public_key: (*key).to_owned(),
                expired_ts: expired.parse().map_err(|_| {
                    Error::Internal(format!("{}: bad expiry in {line:?}", path.display()))
                })?,
            }),
            _ => {
                return Err(Error::Internal(format!(
                    "{}: not an old key line: {line:?}",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}
