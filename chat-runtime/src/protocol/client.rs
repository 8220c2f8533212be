//! Frames a client sends (docs/protocol.md, "Client → server"): JSON text
//! frames with a `type`. Decoding never panics; a frame that does not parse
//! becomes an error frame naming the problem, and the connection survives.

use serde::Deserialize;
use serde_json::Value;

use super::{
    error::ErrorCode,
    types::{Attachment, RoomId, Seq},
};

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Start receiving a room's events; with `epoch` and `last_seq`, resume.
    Subscribe {
        /// Request id, echoed in the reply.
        #[serde(default)]
        id: Option<String>,
        /// Room.
        room: RoomId,
        /// Epoch of the client's last session.
        #[serde(default)]
        epoch: Option<String>,
        /// Last seq the client has of this room.
        #[serde(default)]
        last_seq: Option<Seq>,
    },
    /// Stop receiving a room's events.
    Unsubscribe {
        /// Request id.
        #[serde(default)]
        id: Option<String>,
        /// Room.
        room: RoomId,
    },
    /// Send a message.
    Send {
        /// Request id.
        #[serde(default)]
        id: Option<String>,
        /// Room.
        room: RoomId,
        /// Idempotency key (unique per sender and room).
        client_msg_id: String,
        /// Text.
        #[serde(default)]
        body: String,
        /// Root seq, for a thread reply.
        #[serde(default)]
        thread_root: Option<Seq>,
        /// Attachment references.
        #[serde(default)]
        attachments: Vec<Attachment>,
    },
    /// Edit one's message.
    Edit {
        /// Request id.
        #[serde(default)]
        id: Option<String>,
        /// Room.
        room: RoomId,
        /// The message's seq.
        seq: Seq,
        /// New text.
        body: String,
    },
    /// Delete a message.
    Delete {
        /// Request id.
        #[serde(default)]
        id: Option<String>,
        /// Room.
        room: RoomId,
        /// The message's seq.
        seq: Seq,
    },
    /// Add or remove a reaction.
    React {
        /// Request id.
        #[serde(default)]
        id: Option<String>,
        /// Room.
        room: RoomId,
        /// The message's seq.
        seq: Seq,
        /// Emoji.
        emoji: String,
        /// true adds, false removes.
        #[serde(default = "yes")]
        on: bool,
    },
    /// Mark a room read up to a seq.
    Read {
        /// Request id.
        #[serde(default)]
        id: Option<String>,
        /// Room.
        room: RoomId,
        /// Seq.
        seq: Seq,
    },
    /// "I am typing" in a room (ephemeral; send every few seconds while typing).
    Typing {
        /// Request id, echoed in an error (there is no other answer).
        #[serde(default)]
        id: Option<String>,
        /// Room.
        room: RoomId,
    },
    /// Set one's presence.
    Presence {
        /// Request id, echoed in an error (there is no other answer).
        #[serde(default)]
        id: Option<String>,
        /// `online` or `away`.
        status: PresenceStatus,
    },
    /// Liveness check; answered with `pong`.
    Ping {
        /// Request id.
        #[serde(default)]
        id: Option<String>,
    },
    /// Answer to the server's `ping`.
    Pong {
        /// Echoed id.
        #[serde(default)]
        id: Option<String>,
    },
}

fn yes() -> bool {
    true
}

/// Presence a client may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    /// Active.
    Online,
    /// Idle.
    Away,
}

/// Frame types clients may send, for error messages.
pub const CLIENT_TYPES: &str =
    "subscribe, unsubscribe, send, edit, delete, react, read, typing, presence, ping, pong";

impl ClientFrame {
    /// Every `type`, as in the doc's table.
    pub const TYPES: [&'static str; 11] = [
        "subscribe",
        "unsubscribe",
        "send",
        "edit",
        "delete",
        "react",
        "read",
        "typing",
        "presence",
        "ping",
        "pong",
    ];

    /// The frame's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Edit { .. } => "edit",
            ClientFrame::Delete { .. } => "delete",
            ClientFrame::React { .. } => "react",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Presence { .. } => "presence",
            ClientFrame::Ping { .. } => "ping",
            ClientFrame::Pong { .. } => "pong",
        }
    }
}

/// A frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// Request id, when one could be read.
    pub id: Option<String>,
    /// Stable code (`bad_frame` or `unknown_type`).
    pub code: ErrorCode,
    /// What is wrong.
    pub message: String,
}

/// Longest id echoed back, in characters.
pub const MAX_ID_CHARS: usize = 64;

fn truncate_id(s: &str) -> String {
    s.chars().take(MAX_ID_CHARS).collect()
}

/// The top-level `"id"` string of a frame that is not valid JSON, read
/// leniently: one pass over the text that tracks only strings and nesting,
/// so it never recurses, never fails and takes time linear in the text.
/// `None` when the text is not an object or has no readable top-level
/// string `id` (the last one wins, as when the frame parses). Escapes are
/// decoded; a lone surrogate becomes U+FFFD.
pub fn scan_id(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut depth = 1usize;
    // At depth 1: whether the next string is a key.
    let mut expect_key = true;
    let mut found = None;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let (raw, end) = scan_string(b, i);
                i = end;
                if depth == 1 && expect_key {
                    expect_key = false;
                    let is_id = raw == b"id" || unescape(raw) == "id";
                    let j = skip_ws(b, i);
                    if b.get(j) != Some(&b':') {
                        continue;
                    }
                    let j = skip_ws(b, j + 1);
                    if is_id && b.get(j) == Some(&b'"') {
                        let (value, end) = scan_string(b, j);
                        found = Some(truncate_id(&unescape(value)));
                        i = end;
                    } else {
                        i = j;
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
                i += 1;
            }
            b',' => {
                if depth == 1 {
                    expect_key = true;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    found
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// The raw content of the string starting at `b[start] == '"'`, and the
/// index after its closing quote (or the end of the text).
fn scan_string(b: &[u8], start: usize) -> (&[u8], usize) {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return (&b[start + 1..i], i + 1),
            _ => i += 1,
        }
    }
    (&b[(start + 1).min(b.len())..], b.len())
}

/// JSON string escapes, leniently (unknown escapes are kept as written).
fn unescape(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let hex4 = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Option<u32> {
        let mut v = 0;
        for _ in 0..4 {
            v = v * 16 + chars.next()?.to_digit(16)?;
        }
        Some(v)
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let Some(hi) = hex4(&mut chars) else {
                    out.push(char::REPLACEMENT_CHARACTER);
                    continue;
                };
                let c = if (0xD800..0xDC00).contains(&hi) {
                    let mut ahead = chars.clone();
                    match (ahead.next(), ahead.next(), hex4(&mut ahead)) {
                        (Some('\\'), Some('u'), Some(lo)) if (0xDC00..0xE000).contains(&lo) => {
                            chars = ahead;
                            char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                        }
                        _ => None,
                    }
                } else {
                    char::from_u32(hi)
                };
                out.push(c.unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Decodes a text frame.
pub fn decode(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
        // The frame as a whole does not parse (a number out of range, a lone
        // surrogate, nesting too deep, a cut-off frame...): its id may still
        // be readable, and a pipelining client needs it.
        id: scan_id(text),
        code: ErrorCode::BadFrame,
        message: format!("frame is not JSON: {e}"),
    })?;
    let id = value.get("id").and_then(Value::as_str).map(truncate_id);
    let Some(obj) = value.as_object() else {
        return Err(FrameError {
            id,
            code: ErrorCode::BadFrame,
            message: "frame must be a JSON object with a \"type\"".into(),
        });
    };
    match obj.get("type") {
        None => {
            return Err(FrameError {
                id,
                code: ErrorCode::BadFrame,
                message: format!("frame has no \"type\"; expected one of: {CLIENT_TYPES}"),
            });
        }
        Some(Value::String(t)) if !CLIENT_TYPES.split(", ").any(|k| k == t) => {
            return Err(FrameError {
                id,
                code: ErrorCode::UnknownType,
                message: format!(
                    "unknown frame type {:?}; expected one of: {CLIENT_TYPES}",
                    t.chars().take(32).collect::<String>()
                ),
            });
        }
        Some(Value::String(_)) => {}
        Some(_) => {
            return Err(FrameError {
                id,
                code: ErrorCode::BadFrame,
                message: "\"type\" must be a string".into(),
            });
        }
    }
    serde_json::from_value(value).map_err(|e| FrameError {
        id,
        code: ErrorCode::BadFrame,
        message: format!("invalid frame: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn decodes_every_client_frame() {
        let frames = [
            r#"{"type":"subscribe","id":"1","room":3,"epoch":"e","last_seq":9}"#,
            r#"{"type":"unsubscribe","room":3}"#,
            r#"{"type":"send","id":"2","room":3,"client_msg_id":"m1","body":"hi"}"#,
            r#"{"type":"edit","room":3,"seq":4,"body":"x"}"#,
            r#"{"type":"delete","room":3,"seq":4}"#,
            r#"{"type":"react","room":3,"seq":4,"emoji":"👍"}"#,
            r#"{"type":"read","room":3,"seq":4}"#,
            r#"{"type":"typing","room":3}"#,
            r#"{"type":"typing","id":"t1","room":3}"#,
            r#"{"type":"presence","status":"away"}"#,
            r#"{"type":"presence","id":"p1","status":"online"}"#,
            r#"{"type":"ping","id":"p"}"#,
            r#"{"type":"pong"}"#,
        ];
        for f in frames {
            decode(f).unwrap_or_else(|e| panic!("{f}: {e:?}"));
        }
        assert!(matches!(
            decode(r#"{"type":"react","room":1,"seq":2,"emoji":"x"}"#),
            Ok(ClientFrame::React { on: true, .. })
        ));
    }

    #[test]
    fn errors_name_the_problem_and_keep_the_id() {
        let e = decode("not json").unwrap_err();
        assert_eq!(e.code, "bad_frame");
        assert!(e.message.starts_with("frame is not JSON"));
        let e = decode(r#"{"type":"shout","id":"7"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.id.as_deref()),
            (ErrorCode::UnknownType, Some("7"))
        );
        assert!(e.message.contains("expected one of"));
        let e = decode(r#"{"type":"send","id":"8","room":1,"body":"x"}"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("8"));
        assert!(e.message.contains("client_msg_id"), "{}", e.message);
        let e = decode(r#"{"type":"send","room":"one","client_msg_id":"a"}"#).unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let e = decode(r#"{"type":"typing","room":1,"extra":true}"#).unwrap_err();
        assert!(e.message.contains("extra"), "{}", e.message);
        assert_eq!(decode("[]").unwrap_err().code, "bad_frame");
        assert_eq!(decode(r#"{"id":"x"}"#).unwrap_err().code, "bad_frame");
    }

    #[test]
    fn frames_that_do_not_parse_keep_a_readable_id() {
        let deep = format!(
            r#"{{"type":"send","id":"deep","x":{}{}}}"#,
            "[".repeat(20_000),
            "]".repeat(20_000)
        );
        let unclosed_deep = format!(r#"{{"id":"open","x":{}"#, "{\"a\":".repeat(20_000));
        let cases: Vec<(String, Option<&str>)> = vec![
            (
                r#"{"type":"send","id":"big","room":1e400}"#.into(),
                Some("big"),
            ),
            (
                r#"{"type":"send","room":1e400,"id":"after"}"#.into(),
                Some("after"),
            ),
            (
                r#"{"type":"send","id":"sur","body":"\ud800"}"#.into(),
                Some("sur"),
            ),
            (
                r#"{"type":"send","id":"\ud800x","room":1}"#.into(),
                Some("\u{fffd}x"),
            ),
            (
                r#"{"type":"send","id":"\ud83d\ude00","room":1e999}"#.into(),
                Some("😀"),
            ),
            (deep, Some("deep")),
            (unclosed_deep, Some("open")),
            (r#"{"type":"ping","id":"cut","#.into(), Some("cut")),
            (
                r#"{"type":"ping","id":"tail"} trailing"#.into(),
                Some("tail"),
            ),
            (r#"{"type":"ping","id":"esc\q"}"#.into(), Some("escq")),
            (r#"{"type":"ping","id":"nan","x":NaN}"#.into(), Some("nan")),
            (
                r#"{"type":"ping","id":"ctl","body":"a	b"}"#.into(),
                Some("ctl"),
            ),
            (
                r#"{"type":"ping","\u0069d":"escaped-key","x":1e400}"#.into(),
                Some("escaped-key"),
            ),
            (
                r#"{"type":"send","id":"a\"b","room":1e400}"#.into(),
                Some("a\"b"),
            ),
            // Only a top-level string id counts.
            (
                r#"{"type":"send","x":{"id":"inner"},"room":1e400}"#.into(),
                None,
            ),
            (
                r#"{"type":"send","x":["id","v"],"room":1e400}"#.into(),
                None,
            ),
            (
                r#"{"type":"send","note":"\"id\":\"fake\"","room":1e400}"#.into(),
                None,
            ),
            (r#"{"type":"send","id":7,"room":1e400}"#.into(), None),
            (r#"[{"id":"in-array"}, 1e400]"#.into(), None),
            ("not json".into(), None),
            ("".into(), None),
        ];
        for (text, id) in cases {
            let e = decode(&text).unwrap_err();
            assert_eq!(
                e.code,
                ErrorCode::BadFrame,
                "{}",
                &text[..text.len().min(80)]
            );
            assert_eq!(e.id.as_deref(), id, "{}", &text[..text.len().min(80)]);
        }
        let long = format!(r#"{{"id":"{}","room":1e400}}"#, "x".repeat(500));
        assert_eq!(decode(&long).unwrap_err().id.unwrap().len(), MAX_ID_CHARS);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The lenient scan agrees with the parser on frames that parse.
        #[test]
        fn scan_agrees_with_the_parser(id in ".{0,30}", other in ".{0,30}") {
            let text = json!({"type": "ping", "note": other, "id": id}).to_string();
            prop_assert_eq!(scan_id(&text), Some(truncate_id(&id)));
        }

        /// Arbitrary text never panics the scan.
        #[test]
        fn scan_never_panics(s in ".{0,300}") {
            let _ = scan_id(&s);
        }

        /// Arbitrary text never panics the decoder.
        #[test]
        fn decoder_never_panics_on_text(s in ".{0,300}") {
            let _ = decode(&s);
        }

        /// Arbitrary bytes (lossily as text, as a socket would hand them
        /// over after UTF-8 validation fails or passes) never panic it.
        #[test]
        fn decoder_never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&String::from_utf8_lossy(&b));
        }

        /// Structurally plausible frames with random values never panic it.
        #[test]
        fn decoder_never_panics_on_near_frames(
            t in prop::sample::select(vec!["subscribe","send","edit","react","typing","presence","x"]),
            room in any::<i64>(),
            key in "[a-z_]{1,12}",
            val in prop_oneof![Just(json!(null)), any::<i64>().prop_map(|n| json!(n)), ".{0,20}".prop_map(|s| json!(s)), Just(json!([1,2])), Just(json!({"a":1}))],
        ) {
            let mut v = json!({"type": t, "room": room});
            v[key] = val;
            let _ = decode(&v.to_string());
        }
    }
}
