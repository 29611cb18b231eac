//! Azurite, the Azure Storage emulator (`npm install azurite`; `scripts/setup.sh` puts it in
//! `~/.cache/strata/azurite`), serving blobs on a loopback port from memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use strata_wire::config::{Credentials, SourceConfig};

use crate::net::{free_port, start_server};

/// The emulator's account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// The emulator's published account key (not a secret: every Azurite has it).
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The storage service version SAS tokens are signed for.
const SAS_VERSION: &str = "2021-08-06";

/// Where the blob service's launcher is: `STRATA_AZURITE_BLOB`, or the setup script's place.
fn launcher() -> PathBuf {
    crate::cached_tool(
        "STRATA_AZURITE_BLOB",
        "azurite/node_modules/.bin/azurite-blob",
    )
}

/// A running blob service, killed when dropped.
pub struct Azurite {
    child: Child,
    port: u16,
}

impl Azurite {
    /// Starts the blob service on a free loopback port and waits until it listens.
    pub fn start() -> Azurite {
        let port = free_port();
        let child = start_server(
            Command::new(launcher())
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--silent"])
                .current_dir(std::env::temp_dir()),
            "Azurite",
            "run scripts/setup.sh or set STRATA_AZURITE_BLOB",
            port,
        );
        Azurite { child, port }
    }

    /// The blob endpoint with the account in the path, as a source's `endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// An account SAS for the blob service on containers and objects, with `permissions` in
    /// the service's canonical order (e.g. `rl` to read and list, `rwdlac` for everything),
    /// valid until 2099. Without the leading `?`.
    pub fn account_sas(&self, permissions: &str) -> String {
        let expiry = "2099-01-01T00:00:00Z";
        // The 2020-12-06 string-to-sign: account, permissions, services, resource types,
        // start, expiry, IP, protocol, version, encryption scope, and a final newline.
        let to_sign =
            format!("{ACCOUNT}\n{permissions}\nb\nsco\n\n{expiry}\n\n\n{SAS_VERSION}\n\n");
        let key = STANDARD
            .decode(ACCOUNT_KEY)
            .expect("the emulator key is base64");
        let signature = STANDARD.encode(hmac_sha256(&key, to_sign.as_bytes()));
        format!(
            "sv={SAS_VERSION}&ss=b&srt=sco&sp={permissions}&se={expiry}&sig={}",
            percent_encode(&signature)
        )
    }

    /// Credentials of the emulator's account with its key.
    pub fn key_credentials(&self) -> Credentials {
        Credentials {
            account_name: Some(ACCOUNT.into()),
            account_key: Some(ACCOUNT_KEY.into()),
            ..Credentials::default()
        }
    }

    /// Credentials of the emulator's account with a read-and-list SAS token.
    pub fn sas_credentials(&self) -> Credentials {
        Credentials {
            account_name: Some(ACCOUNT.into()),
            token: Some(self.account_sas("rl")),
            ..Credentials::default()
        }
    }

    /// An `az://` source over this emulator.
    pub fn source(&self, name: &str, uri: &str, credentials: Credentials) -> SourceConfig {
        SourceConfig {
            name: name.into(),
            uri: uri.into(),
            endpoint: Some(self.endpoint()),
            credentials: Some(credentials),
            ..SourceConfig::default()
        }
    }

    /// Uploads files (key, content) into `container` with the account key.
    pub async fn upload(&self, container: &str, files: &[(String, Vec<u8>)]) {
        let store = MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(ACCOUNT_KEY)
            .with_container_name(container)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .build()
            .expect("an Azurite client");
        for (key, data) in files {
            store
                .put(
                    &StorePath::from(key.as_str()),
                    PutPayload::from(data.clone()),
                )
                .await
                .unwrap_or_else(|e| panic!("upload {key}: {e}"));
        }
    }

    /// Creates a container (with a full-permission SAS; object stores cannot create one).
    pub fn create_container(&self, name: &str) {
        let sas = self.account_sas("rwdlac");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect Azurite");
        write!(
            stream,
            "PUT /{ACCOUNT}/{name}?restype=container&{sas} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             x-ms-version: {SAS_VERSION}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send to Azurite");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read Azurite");
        assert!(
            answer.starts_with("HTTP/1.1 201"),
            "create container {name}: {answer}"
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HMAC-SHA256 (RFC 2104) over SHA-256's 64-byte block.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Percent-encodes what base64 uses beyond the unreserved characters.
fn percent_encode(s: &str) -> String {
    s.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
