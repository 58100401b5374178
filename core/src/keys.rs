//! The server's ed25519 signing key: generated on first start, kept in the data directory.

use std::path::Path;

use base64::Engine;
use ruma::OwnedServerName;
use ruma::signatures::{Ed25519KeyPair, KeyPair};

use crate::{Error, Result};

pub struct ServerKeys {
    pub server_name: OwnedServerName,
    pub key_pair: Ed25519KeyPair,
}

impl ServerKeys {
    /// Loads `signing.key` from `dir`, creating it on first start. The file holds
    /// `ed25519 <version> <base64 PKCS#8>`, the layout Synapse uses for its signing key files
    /// with the key material in PKCS#8 form.
    pub fn load_or_generate(dir: &Path, server_name: OwnedServerName) -> Result<Self> {
        let path = dir.join("signing.key");
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        if !path.exists() {
            let doc = Ed25519KeyPair::generate();
            let version = crate::util::random_string(6);
            let line = format!("ed25519 {version} {}\n", b64.encode(&doc));
            let tmp = dir.join("signing.key.tmp");
            std::fs::write(&tmp, line).map_err(Error::internal)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
            }
            std::fs::rename(&tmp, &path).map_err(Error::internal)?;
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
        })
    }

    /// A throwaway key, for tests.
    pub fn ephemeral(server_name: OwnedServerName) -> Self {
        let doc = Ed25519KeyPair::generate();
        let key_pair = Ed25519KeyPair::from_der(&doc, "test".into()).expect("fresh key parses");
        Self {
            server_name,
            key_pair,
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
