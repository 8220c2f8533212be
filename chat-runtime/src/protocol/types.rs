//! The small values every frame and event is made of: ids, users, roles,
//! presence and attachment references. Their JSON shapes are part of the
//! protocol (docs/protocol.md), so they live here and the store re-exports
//! them at their old paths.

use serde::{Deserialize, Serialize};

/// Room id.
pub type RoomId = i64;
/// User id.
pub type UserId = i64;
/// Per-room sequence number.
pub type Seq = i64;

/// A user as clients see it: `{"id", "username", "display_name"}`.
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow, PartialEq, Eq)]
pub struct User {
    /// Id.
    pub id: UserId,
    /// Unique login name.
    pub username: String,
    /// Name shown to others.
    pub display_name: String,
}

/// A user named in an event or frame: `{"id", "username"}` (the actor of an
/// edit, the user of a reaction or of `typing`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRef {
    /// Id.
    pub id: UserId,
    /// Username.
    pub username: String,
}

impl From<&User> for UserRef {
    fn from(u: &User) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
        }
    }
}

/// A reference to an attachment stored elsewhere (the runtime keeps only metadata).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Where the file is (https:// or http://).
    pub url: String,
    /// MIME type, for example `image/png`.
    pub content_type: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// File name to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Member roles, in increasing power.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and writes.
    Member,
    /// Also invites to private rooms, deletes others' messages, kicks and bans members.
    Moderator,
    /// Also changes roles.
    Owner,
}

impl Role {
    /// Parses `owner`/`moderator`/`member`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "moderator" => Some(Role::Moderator),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// The name stored in the database and sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Moderator => "moderator",
            Role::Member => "member",
        }
    }
}

/// A user's presence, in increasing presence (the most present of a user's
/// connections wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No connection anywhere.
    Offline,
    /// Connected, idle.
    Away,
    /// Connected, active.
    Online,
}
