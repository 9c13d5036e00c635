//! What a session answers when reading from the client fails: RFC 6455
//! §7.1.7 asks an endpoint that fails the connection to send a Close first.
//! The same answer is given in every state (grace period, live delivery).

use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::telemetry;

/// Close code for a frame or message that breaks the protocol.
pub(crate) const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a text message or close reason that is not UTF-8.
pub(crate) const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// Close code for a client message over the size limit.
pub(crate) const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// Why reading a client's frame failed, and what the bridge answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    /// The `reason` label of `websocket_client_protocol_errors_total`.
    pub(crate) reason: &'static str,
    pub(crate) code: u16,
    /// The close frame's reason text.
    pub(crate) text: &'static str,
}

impl Violation {
    const fn new(reason: &'static str, code: u16, text: &'static str) -> Self {
        Self { reason, code, text }
    }
}

/// Maps a read error to the close the client gets, or `None` when the
/// socket is already gone (reset, I/O error: nobody to answer).
pub(crate) fn classify(e: &WsError) -> Option<Violation> {
    use ProtocolError as P;
    let v = match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            Violation::new("message_too_big", CLOSE_MESSAGE_TOO_BIG, "message too big")
        }
        WsError::Capacity(_) => {
            Violation::new("message_too_big", CLOSE_MESSAGE_TOO_BIG, "frame too big")
        }
        WsError::Utf8(_) => Violation::new(
            "invalid_utf8",
            CLOSE_INVALID_PAYLOAD,
            "text or close reason is not valid UTF-8",
        ),
        WsError::Protocol(p) => match p {
            P::NonZeroReservedBits => {
                Violation::new("reserved_bits", CLOSE_PROTOCOL_ERROR, "reserved bits set")
            }
            P::UnknownControlFrameType(_) | P::UnknownDataFrameType(_) | P::InvalidOpcode(_) => {
                Violation::new("reserved_opcode", CLOSE_PROTOCOL_ERROR, "reserved opcode")
            }
            P::FragmentedControlFrame => Violation::new(
                "control_frame",
                CLOSE_PROTOCOL_ERROR,
                "fragmented control frame",
            ),
            P::ControlFrameTooBig => Violation::new(
                "control_frame",
                CLOSE_PROTOCOL_ERROR,
                "control frame over 125 bytes",
            ),
            P::UnexpectedContinueFrame | P::ExpectedFragment(_) => Violation::new(
                "fragmentation",
                CLOSE_PROTOCOL_ERROR,
                "invalid fragmentation",
            ),
            P::UnmaskedFrameFromClient => Violation::new(
                "unmasked_frame",
                CLOSE_PROTOCOL_ERROR,
                "client frames must be masked",
            ),
            P::InvalidCloseSequence => {
                Violation::new("invalid_close", CLOSE_PROTOCOL_ERROR, "invalid close frame")
            }
            // The peer went away (or is going): nothing to answer.
            P::ResetWithoutClosingHandshake | P::ReceivedAfterClosing | P::SendAfterClosing => {
                return None
            }
            _ => Violation::new("protocol_error", CLOSE_PROTOCOL_ERROR, "protocol error"),
        },
        _ => return None,
    };
    Some(v)
}

/// Counts a violation under its reason.
pub(crate) fn count(v: Violation) {
    metrics::counter!(telemetry::CLIENT_PROTOCOL_ERRORS, "reason" => v.reason).increment(1);
}

/// The reason text tungstenite puts in the Close it sends back for a close
/// code a client may not send (0–999, 1004–1006, 1015, 1016–2999, ≥ 5000).
pub(crate) const INVALID_CLOSE_CODE_REPLY: &str = "Protocol violation";

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;

    #[test]
    fn each_violation_gets_the_close_code_rfc_6455_names() {
        let cases = [
            (
                WsError::Protocol(ProtocolError::NonZeroReservedBits),
                1002,
                "reserved_bits",
            ),
            (
                WsError::Protocol(ProtocolError::UnknownDataFrameType(3)),
                1002,
                "reserved_opcode",
            ),
            (
                WsError::Protocol(ProtocolError::UnknownControlFrameType(11)),
                1002,
                "reserved_opcode",
            ),
            (
                WsError::Protocol(ProtocolError::FragmentedControlFrame),
                1002,
                "control_frame",
            ),
            (
                WsError::Protocol(ProtocolError::ControlFrameTooBig),
                1002,
                "control_frame",
            ),
            (
                WsError::Protocol(ProtocolError::UnexpectedContinueFrame),
                1002,
                "fragmentation",
            ),
            (
                WsError::Protocol(ProtocolError::ExpectedFragment(Data::Text)),
                1002,
                "fragmentation",
            ),
            (
                WsError::Protocol(ProtocolError::UnmaskedFrameFromClient),
                1002,
                "unmasked_frame",
            ),
            (
                WsError::Protocol(ProtocolError::InvalidCloseSequence),
                1002,
                "invalid_close",
            ),
            (WsError::Utf8("bad".into()), 1007, "invalid_utf8"),
            (
                WsError::Capacity(CapacityError::MessageTooLong {
                    size: 2,
                    max_size: 1,
                }),
                1009,
                "message_too_big",
            ),
        ];
        for (e, code, reason) in cases {
            let v = classify(&e).unwrap_or_else(|| panic!("{e:?} gets a close"));
            assert_eq!((v.code, v.reason), (code, reason), "{e:?}");
            assert!(v.text.len() <= 123, "a close reason fits a control frame");
        }
        for gone in [
            WsError::ConnectionClosed,
            WsError::AlreadyClosed,
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            WsError::Io(std::io::Error::other("reset")),
        ] {
            assert_eq!(classify(&gone), None, "{gone:?}: nobody to answer");
        }
    }
}
