//! One connection's handshake, owned in one place: the negotiated protocol,
//! the rule that nothing but `embark.hello` is answered before a hello
//! succeeded (`HandshakeRequired`, 1002), and the ordering rule that a
//! request sent right behind hello sees it done.
//!
//! The methods ([`crate::rpc`]) and the transport ([`crate::stdio`]) only
//! ask the session: `embark.hello` calls [`Session::hello`], and the
//! transport asks [`Session::admit`] how to treat each call before running
//! it, so the transport knows nothing of embark's methods and no method
//! checks the handshake itself. Like lsp-server's
//! `initialize_start`/`initialize_finish`, except that hello is one call
//! with no acknowledgement, so start and finish are one step.

use std::sync::Mutex;

use embark_core::protocol::{ErrorCode, HelloResult, PROTOCOL_VERSION, PeerInfo, SUPPORTED_PROTOCOLS, method};
use tracing::info;

use crate::error::RpcError;
use crate::stdio::{Admission, Gate};

/// Optional features this build offers (none yet in protocol 1).
pub const CAPABILITIES: &[&str] = &[];

/// The handshake state of one connection.
#[derive(Debug, Default)]
pub struct Session {
    /// The protocol of the last successful hello; `None` until one succeeded.
    protocol: Mutex<Option<u32>>,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// The protocol negotiated by the last successful hello, if any.
    pub fn protocol(&self) -> Option<u32> {
        *self.protocol.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The whole of `embark.hello`: accepts a protocol this sidecar speaks
    /// (repeating a successful hello is harmless) or refuses it, leaving the
    /// handshake as it was.
    pub fn hello(&self, protocol: u32, client: Option<&PeerInfo>) -> Result<HelloResult, RpcError> {
        if !SUPPORTED_PROTOCOLS.contains(&protocol) {
            let supported: Vec<String> = SUPPORTED_PROTOCOLS.iter().map(u32::to_string).collect();
            return Err(RpcError::new(
                ErrorCode::UnsupportedProtocol,
                format!(
                    "protocol {protocol} is not supported: this sidecar speaks {}; update the extension or the sidecar so they match",
                    supported.join(", ")
                ),
            ));
        }
        *self.protocol.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(protocol);
        match client {
            Some(peer) => info!(protocol, client = %peer.name, version = %peer.version, "hello"),
            None => info!(protocol, "hello"),
        }
        Ok(HelloResult {
            protocol,
            supported: SUPPORTED_PROTOCOLS.to_vec(),
            server: PeerInfo {
                name: "embark-sidecar".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        })
    }
}

impl Gate for Session {
    fn admit(&self, name: &str) -> Admission {
        if name == method::HELLO {
            // In order: the next line is read only once hello is answered, so a
            // command pipelined right behind it finds the handshake done.
            return Admission::InOrder;
        }
        if self.protocol().is_none() {
            return Admission::Refuse(RpcError::new(
                ErrorCode::HandshakeRequired,
                format!(
                    "call {} first, with {{\"protocol\": {PROTOCOL_VERSION}}}",
                    method::HELLO
                ),
            ));
        }
        Admission::Concurrent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hello_passes_until_a_hello_succeeds() {
        let session = Session::new();
        assert_eq!(session.admit(method::HELLO), Admission::InOrder);
        assert!(matches!(
            session.admit(method::COMMAND),
            Admission::Refuse(RpcError {
                code: ErrorCode::HandshakeRequired,
                ..
            })
        ));
        let refused = session.hello(0, None).expect_err("protocol 0 is not spoken");
        assert_eq!(refused.code, ErrorCode::UnsupportedProtocol);
        assert_eq!(session.protocol(), None, "a refused hello changes nothing");
        assert!(matches!(session.admit(method::COMMAND), Admission::Refuse(_)));

        let hello = session.hello(PROTOCOL_VERSION, None).expect("protocol 1 is spoken");
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
        assert_eq!(session.protocol(), Some(PROTOCOL_VERSION));
        assert_eq!(session.admit(method::COMMAND), Admission::Concurrent);
        assert_eq!(
            session.admit(method::HELLO),
            Admission::InOrder,
            "a repeated hello stays in order"
        );
        session.hello(2, None).expect_err("protocol 2 is not spoken");
        assert_eq!(
            session.protocol(),
            Some(PROTOCOL_VERSION),
            "nor does it undo the handshake"
        );
    }
}
