//! The messages on the holder socket: one JSON object per SOCK_SEQPACKET packet.

use std::path::PathBuf;

use crate::client::{AttachRequest, HeldMount};

/// Largest packet either side sends or accepts.
pub(crate) const MAX_PACKET: usize = 256 * 1024;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    Attach(AttachRequest),
    List,
    Unmount { mountpoint: PathBuf },
}

/// `ok` replies carry what the request asked for; an attach reply carries the fd too.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum Reply {
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        taken_over: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mounts: Option<Vec<HeldMount>>,
    },
    Err {
        message: String,
    },
}

impl Reply {
    pub(crate) fn ok() -> Self {
        Reply::Ok {
            taken_over: None,
            mounts: None,
        }
    }
    pub(crate) fn err(message: impl Into<String>) -> Self {
        Reply::Err {
            message: message.into(),
        }
    }
}
