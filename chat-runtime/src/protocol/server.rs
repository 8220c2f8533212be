//! Frames the server sends (docs/protocol.md, "Server → client"), tagged by
//! `type`. Each frame is serialized straight from these types with serde (no
//! intermediate `Value`); a fan-out encodes an event once and hands the same
//! bytes to every subscriber. Borrowed fields (`Cow`) let the hot paths
//! encode without cloning the epoch or the event; deserializing (tests, the
//! doc check) produces owned values.

use std::borrow::Cow;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};

use super::{
    error::ErrorCode,
    event::StoredEvent,
    types::{RoomId, Seq, Status, User, UserId, UserRef},
};

/// A frame from the server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The first frame of every connection.
    Hello {
        /// The authenticated user.
        user: Cow<'a, User>,
        /// Resume epoch.
        epoch: Cow<'a, str>,
        /// The replica's name.
        server: Cow<'a, str>,
        /// How often the server pings.
        ping_interval_ms: u64,
        /// Largest message body, in bytes.
        max_message_bytes: u32,
    },
    /// The answer to `subscribe`; replayed events follow.
    Subscribed {
        /// Request id, echoed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, str>>,
        /// Room.
        room: RoomId,
        /// Resume epoch.
        epoch: Cow<'a, str>,
        /// Live events follow from here (after the replayed ones).
        last_seq: Seq,
        /// Whether exactly the missed events follow.
        recovered: bool,
        /// Why not, when `recovered` is false.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<ResumeReason>,
        /// How many replayed events follow now.
        replayed: usize,
        /// The room's latest seq.
        room_last_seq: Seq,
    },
    /// A room event: `type`, `room`, `seq`, `epoch`, then the event's `kind`
    /// and fields.
    Event {
        /// Room.
        room: RoomId,
        /// The event's seq.
        seq: Seq,
        /// Resume epoch.
        epoch: Cow<'a, str>,
        /// The payload.
        #[serde(flatten)]
        event: Cow<'a, StoredEvent>,
    },
    /// A write was stored: `{room, seq, client_msg_id, duplicate}` for a
    /// send, `{room, seq}` for an edit, delete or reaction, `{room, seq:
    /// null, unchanged: true}` when a reaction changed nothing.
    Ack {
        /// Request id, echoed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, str>>,
        /// Room.
        room: RoomId,
        /// The event's seq (`null` when nothing changed).
        seq: Option<Seq>,
        /// The send's idempotency key, echoed (sends only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<Cow<'a, str>>,
        /// Whether the send was a retry of a stored one (sends only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duplicate: Option<bool>,
        /// True when a reaction changed nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unchanged: Option<bool>,
    },
    /// The answer to `read`.
    Read {
        /// Request id, echoed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, str>>,
        /// Room.
        room: RoomId,
        /// The read position now.
        last_read_seq: Seq,
    },
    /// The answer to `unsubscribe`, or unasked after the event that ended
    /// the user's membership.
    Unsubscribed {
        /// Request id, echoed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, str>>,
        /// Room.
        room: RoomId,
        /// Set when the server ended the subscription.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<UnsubscribeReason>,
    },
    /// Someone is typing in a subscribed room.
    Typing {
        /// Room.
        room: RoomId,
        /// Who.
        user: Cow<'a, UserRef>,
    },
    /// A user sharing a subscribed room changed presence.
    Presence {
        /// The user's id.
        user: UserId,
        /// The user's status across replicas.
        status: Status,
    },
    /// Liveness check, every 25 s; answer with `pong`.
    Ping,
    /// The answer to the client's `ping`.
    Pong {
        /// Request id, echoed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, str>>,
    },
    /// A refusal or failure; the connection survives it.
    Error {
        /// Request id, echoed when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, str>>,
        /// Stable code.
        code: ErrorCode,
        /// What is wrong, naming the field or the limit.
        message: Cow<'a, str>,
        /// When to retry (`rate_limited`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// Why a `subscribed` is not `recovered`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResumeReason {
    /// No resume was asked.
    Fresh,
    /// More events were missed than the resume limit.
    TooFarBehind,
    /// Retention removed missed events.
    HistoryGone,
    /// The database history changed (restore, failover).
    EpochChanged,
}

impl ResumeReason {
    /// The wire name (also the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeReason::Fresh => "fresh",
            ResumeReason::TooFarBehind => "too_far_behind",
            ResumeReason::HistoryGone => "history_gone",
            ResumeReason::EpochChanged => "epoch_changed",
        }
    }
}

/// Why the server ended a subscription.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnsubscribeReason {
    /// The user left, was kicked or was banned.
    MembershipEnded,
}

impl ServerFrame<'_> {
    /// Every `type`, as in the doc's table.
    pub const TYPES: [&'static str; 11] = [
        "hello",
        "subscribed",
        "event",
        "ack",
        "read",
        "unsubscribed",
        "typing",
        "presence",
        "ping",
        "pong",
        "error",
    ];

    /// The frame's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerFrame::Hello { .. } => "hello",
            ServerFrame::Subscribed { .. } => "subscribed",
            ServerFrame::Event { .. } => "event",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Read { .. } => "read",
            ServerFrame::Unsubscribed { .. } => "unsubscribed",
            ServerFrame::Typing { .. } => "typing",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::Ping => "ping",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Error { .. } => "error",
        }
    }
}

impl<'a> ServerFrame<'a> {
    /// An error frame.
    pub fn error(id: Option<&'a str>, code: ErrorCode, message: impl Into<Cow<'a, str>>) -> Self {
        ServerFrame::Error {
            id: id.map(Cow::Borrowed),
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// An event frame borrowing its epoch and payload.
    pub fn event(room: RoomId, seq: Seq, epoch: &'a str, event: &'a StoredEvent) -> Self {
        ServerFrame::Event {
            room,
            seq,
            epoch: Cow::Borrowed(epoch),
            event: Cow::Borrowed(event),
        }
    }
}

/// What [`encode`] sends if a frame cannot be serialized (it cannot: every
/// map key is a string; this only keeps the socket's contract if that ever
/// changes).
const UNENCODABLE: &str = r#"{"type":"error","code":"internal","message":"internal error; retry"}"#;

/// Serializes a frame into a WebSocket text payload.
pub fn encode(frame: &ServerFrame<'_>) -> Utf8Bytes {
    match serde_json::to_string(frame) {
        Ok(text) => text.into(),
        Err(e) => {
            tracing::error!(error = %e, frame = frame.type_name(), "a server frame did not serialize");
            Utf8Bytes::from_static(UNENCODABLE)
        }
    }
}

/// An event frame from a payload already serialized as a JSON object
/// (`{"kind": ...}`): the frame's own fields, then the payload's, as
/// [`ServerFrame::event`] encodes them, without parsing the payload again.
/// A payload that is not an object is sent as no fields (as
/// [`StoredEvent::Unknown`] does).
pub fn encode_event_json(room: RoomId, seq: Seq, epoch: &str, payload: &str) -> Utf8Bytes {
    let fields = payload
        .trim()
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .map(str::trim)
        .filter(|f| !f.is_empty());
    let epoch = serde_json::to_string(epoch).unwrap_or_else(|_| "\"\"".into());
    let mut text = String::with_capacity(payload.len() + epoch.len() + 64);
    use std::fmt::Write as _;
    let _ = write!(
        text,
        r#"{{"type":"event","room":{room},"seq":{seq},"epoch":{epoch}"#
    );
    if let Some(fields) = fields {
        text.push(',');
        text.push_str(fields);
    }
    text.push('}');
    text.into()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::protocol::event::{MemberAction, RoomEvent};

    fn value(f: &ServerFrame<'_>) -> Value {
        serde_json::from_str(encode(f).as_str()).unwrap()
    }

    #[test]
    fn event_frames_from_serialized_payloads_are_the_same_frames() {
        let e = StoredEvent::from(RoomEvent::Reaction {
            message_seq: 43,
            emoji: "👍".into(),
            on: true,
            user: UserRef {
                id: 2,
                username: "bob".into(),
            },
        });
        let json = serde_json::to_string(&e).unwrap();
        let spliced = encode_event_json(7, 44, "ep", &json);
        assert_eq!(
            spliced.as_str(),
            encode(&ServerFrame::event(7, 44, "ep", &e)).as_str()
        );
        // Not an object, or empty: the frame's own fields only.
        for odd in ["[1]", "{}", " { } ", "3"] {
            let v: Value =
                serde_json::from_str(encode_event_json(1, 2, "e\"p", odd).as_str()).unwrap();
            assert_eq!(
                v,
                json!({"type": "event", "room": 1, "seq": 2, "epoch": "e\"p"}),
                "{odd}"
            );
        }
    }

    #[test]
    fn event_frames_merge_the_payload() {
        let e = StoredEvent::from(RoomEvent::Reaction {
            message_seq: 43,
            emoji: "👍".into(),
            on: true,
            user: UserRef {
                id: 2,
                username: "bob".into(),
            },
        });
        let v = value(&ServerFrame::event(7, 44, "ep", &e));
        assert_eq!(
            v,
            json!({"type": "event", "room": 7, "seq": 44, "epoch": "ep", "kind": "reaction",
                   "message_seq": 43, "emoji": "👍", "on": true, "user": {"id": 2, "username": "bob"}})
        );
    }

    #[test]
    fn replies_have_the_shapes_they_had_as_json_literals() {
        let ack = ServerFrame::Ack {
            id: Some("a".into()),
            room: 7,
            seq: Some(44),
            client_msg_id: Some("c-17".into()),
            duplicate: Some(true),
            unchanged: None,
        };
        assert_eq!(
            value(&ack),
            json!({"type": "ack", "id": "a", "room": 7, "seq": 44, "client_msg_id": "c-17", "duplicate": true})
        );
        let unchanged = ServerFrame::Ack {
            id: None,
            room: 7,
            seq: None,
            client_msg_id: None,
            duplicate: None,
            unchanged: Some(true),
        };
        assert_eq!(
            value(&unchanged),
            json!({"type": "ack", "room": 7, "seq": null, "unchanged": true})
        );
        let err = ServerFrame::Error {
            id: None,
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            retry_after_ms: Some(83),
        };
        assert_eq!(
            value(&err),
            json!({"type": "error", "code": "rate_limited", "message": "slow down", "retry_after_ms": 83})
        );
        assert_eq!(value(&ServerFrame::Ping), json!({"type": "ping"}));
        assert_eq!(
            value(&ServerFrame::Pong { id: None }),
            json!({"type": "pong"})
        );
        let gone = ServerFrame::Unsubscribed {
            id: None,
            room: 3,
            reason: Some(UnsubscribeReason::MembershipEnded),
        };
        assert_eq!(
            value(&gone),
            json!({"type": "unsubscribed", "room": 3, "reason": "membership_ended"})
        );
    }

    #[test]
    fn frames_round_trip() {
        let user = User {
            id: 1,
            username: "alice".into(),
            display_name: "Alice".into(),
        };
        let event = StoredEvent::from(RoomEvent::Member {
            action: MemberAction::Joined,
            actor: (&user).into(),
            user: user.clone(),
            role: Some(crate::protocol::Role::Member),
        });
        let frames = [
            ServerFrame::Hello {
                user: Cow::Borrowed(&user),
                epoch: "e".into(),
                server: "pod".into(),
                ping_interval_ms: 25_000,
                max_message_bytes: 16_384,
            },
            ServerFrame::event(1, 2, "e", &event),
            ServerFrame::Presence {
                user: 1,
                status: Status::Away,
            },
        ];
        for f in frames {
            let back: ServerFrame<'static> = serde_json::from_str(encode(&f).as_str()).unwrap();
            assert_eq!(back, f);
        }
    }
}
