//! Room events (docs/protocol.md, section 6): the payloads stored in
//! `room_events.payload` and delivered, after `type`, `room`, `seq` and
//! `epoch`, as `event` frames. The store writes them from these types and the
//! hub and socket writer read them back as these types, so a field is named
//! in one place.
//!
//! Reading back is tolerant: a payload this version does not know (written
//! by another version, or by hand) is a [`StoredEvent::Unknown`], delivered
//! as stored, so one odd row never stops a room's fan-out.
//!
//! Two fields are written by SQL rather than here: `created_at` of a
//! `message` (the commit's timestamp) and `deleted` (set with the body erased
//! on the `message` and `edit` events of a deleted message).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::types::{Attachment, Role, Seq, User, UserId, UserRef};

/// A room event's payload, tagged by `kind`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoomEvent {
    /// A message.
    Message {
        /// Who sent it.
        sender: User,
        /// The sender's idempotency key.
        client_msg_id: String,
        /// Text ("" once deleted).
        body: String,
        /// Root seq, for a thread reply (`null` otherwise).
        thread_root: Option<Seq>,
        /// Attachment references (`[]` once deleted).
        attachments: Vec<Attachment>,
        /// RFC 3339 commit time (set by the database on insert).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created_at: Option<String>,
        /// True once the message was deleted (set by the database).
        #[serde(default, skip_serializing_if = "is_false")]
        deleted: bool,
    },
    /// A message's text changed.
    Edit {
        /// The message's seq.
        message_seq: Seq,
        /// New text ("" once the message was deleted).
        body: String,
        /// RFC 3339.
        edited_at: String,
        /// Who edited it (its author).
        actor: UserRef,
        /// True once the message was deleted (set by the database).
        #[serde(default, skip_serializing_if = "is_false")]
        deleted: bool,
    },
    /// A message was deleted (a tombstone keeps its seq).
    Delete {
        /// The message's seq.
        message_seq: Seq,
        /// Who deleted it.
        actor: UserRef,
    },
    /// A reaction was added or removed.
    Reaction {
        /// The message's seq.
        message_seq: Seq,
        /// Emoji.
        emoji: String,
        /// Added (true) or removed.
        on: bool,
        /// Who reacted.
        user: UserRef,
    },
    /// Membership changed.
    Member {
        /// What happened.
        action: MemberAction,
        /// Who did it.
        actor: UserRef,
        /// Whose membership changed.
        user: User,
        /// The role after the change (`null` when the user is no longer a member).
        role: Option<Role>,
    },
}

/// A new message's payload, borrowed from the send (nothing copied): the
/// JSON of [`RoomEvent::Message`] with `created_at` set and `deleted` false
/// (a test holds the two shapes equal). The group commit serializes it once,
/// stores those bytes and builds the event frame from them.
#[derive(Serialize)]
pub struct MessagePayload<'a> {
    kind: &'static str,
    sender: &'a User,
    client_msg_id: &'a str,
    body: &'a str,
    thread_root: Option<Seq>,
    attachments: &'a [Attachment],
    created_at: &'a str,
}

impl<'a> MessagePayload<'a> {
    /// The payload of a message from `sender`, committed at `created_at`
    /// (RFC 3339).
    pub fn new(
        sender: &'a User,
        client_msg_id: &'a str,
        body: &'a str,
        thread_root: Option<Seq>,
        attachments: &'a [Attachment],
        created_at: &'a str,
    ) -> Self {
        Self {
            kind: "message",
            sender,
            client_msg_id,
            body,
            thread_root,
            attachments,
            created_at,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a `member` event did.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MemberAction {
    /// Joined (or created the room, or opened a DM).
    Joined,
    /// Left.
    Left,
    /// Was added by another member.
    Invited,
    /// Was removed by a moderator or owner.
    Kicked,
    /// Was removed and may not rejoin.
    Banned,
    /// Got a new role.
    Role,
}

impl RoomEvent {
    /// Every `kind`, as in the doc's table.
    pub const KINDS: [&'static str; 5] = ["message", "edit", "delete", "reaction", "member"];

    /// The `kind` (also stored in its own column).
    pub fn kind(&self) -> &'static str {
        match self {
            RoomEvent::Message { .. } => "message",
            RoomEvent::Edit { .. } => "edit",
            RoomEvent::Delete { .. } => "delete",
            RoomEvent::Reaction { .. } => "reaction",
            RoomEvent::Member { .. } => "member",
        }
    }

    /// The user whose membership this event ends (`member` events with
    /// action `left`, `kicked` or `banned`), if any. Their sockets stop
    /// receiving the room right after this event.
    pub fn membership_ended(&self) -> Option<UserId> {
        match self {
            RoomEvent::Member {
                action: MemberAction::Left | MemberAction::Kicked | MemberAction::Banned,
                user,
                ..
            } => Some(user.id),
            _ => None,
        }
    }
}

/// A room event as read back from the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StoredEvent {
    /// A payload of a known shape.
    Known(RoomEvent),
    /// Any other JSON object, passed through field by field (a payload that
    /// is not an object passes through as no fields).
    Unknown(Map<String, Value>),
}

impl StoredEvent {
    /// Parses a stored payload: typed when it has a known shape, as a plain
    /// JSON object otherwise.
    pub fn parse(json: &str) -> Self {
        match serde_json::from_str::<RoomEvent>(json) {
            Ok(event) => StoredEvent::Known(event),
            Err(e) => {
                tracing::debug!(error = %e, "a room event of an unknown shape is passed through as stored");
                StoredEvent::Unknown(serde_json::from_str(json).unwrap_or_default())
            }
        }
    }

    /// The user whose membership this event ends, if any (see
    /// [`RoomEvent::membership_ended`]; an unknown payload is read by its
    /// `kind`, `action` and `user.id` fields).
    pub fn membership_ended(&self) -> Option<UserId> {
        match self {
            StoredEvent::Known(event) => event.membership_ended(),
            StoredEvent::Unknown(fields) => {
                if fields.get("kind").and_then(Value::as_str) != Some("member") {
                    return None;
                }
                match fields.get("action").and_then(Value::as_str) {
                    Some("left" | "kicked" | "banned") => fields.get("user")?.get("id")?.as_i64(),
                    _ => None,
                }
            }
        }
    }
}

impl From<RoomEvent> for StoredEvent {
    fn from(event: RoomEvent) -> Self {
        StoredEvent::Known(event)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn alice() -> User {
        User {
            id: 1,
            username: "alice".into(),
            display_name: "Alice".into(),
        }
    }

    #[test]
    fn payloads_keep_their_json_shape() {
        // The shapes the store wrote as `json!` literals before these types.
        let e = RoomEvent::Member {
            action: MemberAction::Left,
            actor: (&alice()).into(),
            user: alice(),
            role: None,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"kind": "member", "action": "left", "actor": {"id": 1, "username": "alice"},
                   "user": {"id": 1, "username": "alice", "display_name": "Alice"}, "role": null})
        );
        let m = RoomEvent::Message {
            sender: alice(),
            client_msg_id: "c1".into(),
            body: "hi".into(),
            thread_root: None,
            attachments: vec![],
            created_at: None,
            deleted: false,
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"kind": "message", "sender": {"id": 1, "username": "alice", "display_name": "Alice"},
                   "client_msg_id": "c1", "body": "hi", "thread_root": null, "attachments": []})
        );
    }

    #[test]
    fn a_borrowed_message_payload_is_a_message_event() {
        let attachments = vec![Attachment {
            url: "https://x.example/a.png".into(),
            content_type: "image/png".into(),
            size_bytes: 3,
            name: None,
        }];
        let at = "2026-12-01T10:00:00.000Z";
        let sender = alice();
        let borrowed = MessagePayload::new(&sender, "c1", "hi \"you\"", Some(4), &attachments, at);
        let owned = RoomEvent::Message {
            sender: alice(),
            client_msg_id: "c1".into(),
            body: "hi \"you\"".into(),
            thread_root: Some(4),
            attachments: attachments.clone(),
            created_at: Some(at.into()),
            deleted: false,
        };
        assert_eq!(
            serde_json::to_string(&borrowed).unwrap(),
            serde_json::to_string(&owned).unwrap(),
            "same fields, same order"
        );
    }

    #[test]
    fn stored_payloads_parse_including_tombstones() {
        // As the database holds them: `created_at` added on insert, and
        // the erasing merge of a delete.
        let stored = [
            json!({"kind": "message", "sender": {"id": 1, "username": "alice", "display_name": "Alice"},
                   "client_msg_id": "c1", "body": "", "thread_root": null, "attachments": [],
                   "created_at": "2026-11-24T10:00:00.000Z", "deleted": true}),
            json!({"kind": "edit", "message_seq": 3, "body": "", "edited_at": "2026-11-24T10:00:00.000Z",
                   "actor": {"id": 1, "username": "alice"}, "deleted": true}),
            json!({"kind": "delete", "message_seq": 3, "actor": {"id": 1, "username": "alice"}}),
            json!({"kind": "reaction", "message_seq": 3, "emoji": "👍", "on": true, "user": {"id": 1, "username": "alice"}}),
            json!({"kind": "member", "action": "role", "actor": {"id": 1, "username": "alice"},
                   "user": {"id": 1, "username": "alice", "display_name": "Alice"}, "role": "owner"}),
        ];
        for v in stored {
            let e: RoomEvent = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(&e).unwrap(), v, "round trip");
            assert_eq!(v["kind"], Value::from(e.kind()));
        }
    }

    #[test]
    fn only_leaving_kicking_and_banning_end_membership() {
        let member = |action| RoomEvent::Member {
            action,
            actor: (&alice()).into(),
            user: alice(),
            role: None,
        };
        assert_eq!(member(MemberAction::Left).membership_ended(), Some(1));
        assert_eq!(member(MemberAction::Kicked).membership_ended(), Some(1));
        assert_eq!(member(MemberAction::Banned).membership_ended(), Some(1));
        assert_eq!(member(MemberAction::Joined).membership_ended(), None);
        assert_eq!(member(MemberAction::Role).membership_ended(), None);
    }

    #[test]
    fn unknown_payloads_pass_through_as_stored() {
        let odd = r#"{"kind": "member", "action": "role", "user": {"id": 1}}"#;
        let e = StoredEvent::parse(odd);
        assert!(matches!(e, StoredEvent::Unknown(_)), "{e:?}");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::from_str::<Value>(odd).unwrap()
        );
        assert_eq!(e.membership_ended(), None);
        let left = StoredEvent::parse(r#"{"kind": "member", "action": "left", "user": {"id": 4}}"#);
        assert_eq!(left.membership_ended(), Some(4));
        assert_eq!(
            StoredEvent::parse("[1]"),
            StoredEvent::Unknown(Map::new()),
            "not an object: no fields, as before"
        );
        let known = StoredEvent::parse(
            r#"{"kind": "delete", "message_seq": 3, "actor": {"id": 1, "username": "alice"}}"#,
        );
        assert!(matches!(
            known,
            StoredEvent::Known(RoomEvent::Delete { .. })
        ));
    }
}
