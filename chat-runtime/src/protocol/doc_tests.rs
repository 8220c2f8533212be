//! docs/protocol.md and the types, checked against each other: every frame
//! type, event kind, member action, resume reason, error code and close code
//! the doc lists is one the types have, and the other way round; every
//! example frame in the doc parses into the types (and the server's
//! re-encode to the same JSON, so no field is misnamed or dropped).
//!
//! The types' side is read from serde itself (the "expected one of" list of
//! an unknown tag), so a variant added to an enum without a line in the doc
//! fails here.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    ClientFrame, ErrorCode, MemberAction, ResumeReason, RoomEvent, ServerFrame, StoredEvent,
    client::CLIENT_TYPES, close, decode,
};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of the doc from the heading `from` to the next heading of the
/// same or a higher level.
fn section(doc: &str, from: &str) -> String {
    let start = doc
        .find(from)
        .unwrap_or_else(|| panic!("docs/protocol.md has no {from:?}"));
    let level = from.chars().take_while(|c| *c == '#').count();
    let rest = &doc[start + from.len()..];
    let end = rest
        .match_indices("\n#")
        .find(|(i, _)| {
            let hashes = rest[i + 1..].chars().take_while(|c| *c == '#').count();
            hashes <= level
        })
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].to_string()
}

/// Backticked words of `text` (`` `a` `` -> a), skipping anything that is
/// not a plain identifier or number.
fn ticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

/// The first cells of a Markdown table's body rows.
fn first_cells(table: &str) -> Vec<String> {
    table
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .skip(1) // header
        .filter_map(|l| l.split('|').nth(1).map(str::to_string))
        .collect()
}

/// The variant names serde knows for a tagged or unit-variant enum, from its
/// "unknown variant" error.
fn serde_variants<T: DeserializeOwned + std::fmt::Debug>(unknown: &str) -> BTreeSet<String> {
    let e = serde_json::from_str::<T>(unknown).expect_err("an unknown variant is refused");
    let message = e.to_string();
    let expected = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("{message}"))
        .1;
    ticked(expected).into_iter().collect()
}

fn set<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> BTreeSet<String> {
    items.into_iter().map(|s| s.as_ref().to_string()).collect()
}

#[test]
fn client_frame_types_match_the_doc() {
    let doc = doc();
    let table = section(&doc, "### Client → server");
    let documented = set(first_cells(&table).iter().flat_map(|c| ticked(c)));
    let types = serde_variants::<ClientFrame>(r#"{"type":"__nope__"}"#);
    assert_eq!(documented, types, "docs/protocol.md vs ClientFrame");
    assert_eq!(set(ClientFrame::TYPES), types, "ClientFrame::TYPES");
    assert_eq!(set(CLIENT_TYPES.split(", ")), types, "CLIENT_TYPES");
}

#[test]
fn server_frame_types_match_the_doc() {
    let doc = doc();
    let table = section(&doc, "### Server → client");
    let documented = set(first_cells(&table).iter().flat_map(|c| ticked(c)));
    let types = serde_variants::<ServerFrame<'static>>(r#"{"type":"__nope__"}"#);
    assert_eq!(documented, types, "docs/protocol.md vs ServerFrame");
    assert_eq!(set(ServerFrame::TYPES), types, "ServerFrame::TYPES");
    // The `subscribed` row lists the resume reasons.
    let subscribed = table
        .lines()
        .find(|l| l.starts_with("| `subscribed`"))
        .unwrap_or_default();
    let reasons = serde_variants::<ResumeReason>(r#""__nope__""#);
    for r in &reasons {
        assert!(
            subscribed.contains(&format!("`{r}`")),
            "reason {r} is not documented"
        );
    }
    // So does section 7.
    let resume = section(&doc, "## 7.");
    for r in &reasons {
        assert!(
            resume.contains(&format!("`{r}`")),
            "reason {r} is not in section 7"
        );
    }
}

#[test]
fn room_event_kinds_and_member_actions_match_the_doc() {
    let doc = doc();
    let table = section(&doc, "## 6. Room events");
    let documented = set(first_cells(&table).iter().flat_map(|c| ticked(c)));
    let kinds = serde_variants::<RoomEvent>(r#"{"kind":"__nope__"}"#);
    assert_eq!(documented, kinds, "docs/protocol.md vs RoomEvent");
    assert_eq!(set(RoomEvent::KINDS), kinds, "RoomEvent::KINDS");
    let member = table
        .lines()
        .find(|l| l.starts_with("| `member`"))
        .unwrap_or_default();
    let action_cell = member
        .split_once("`action`:")
        .map(|(_, rest)| rest.split(", `user`").next().unwrap_or_default())
        .unwrap_or_default();
    assert_eq!(
        set(ticked(action_cell)),
        serde_variants::<MemberAction>(r#""__nope__""#),
        "member actions"
    );
}

#[test]
fn error_codes_match_the_doc() {
    let doc = doc();
    // Frames: the paragraph after the server table.
    let ws = section(&doc, "### Server → client");
    let paragraph = ws
        .split_once("Error codes in frames:")
        .map(|(_, p)| p)
        .unwrap_or_default();
    let paragraph = paragraph.split("\n\n").next().unwrap_or_default();
    let mut documented = BTreeSet::new();
    // The codes are the backticked words outside parentheses (inside them
    // are field names such as `type`).
    let mut depth = 0;
    let mut outside = String::new();
    for c in paragraph.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    documented.extend(ticked(&outside));
    assert_eq!(
        documented,
        set(ErrorCode::FRAME.map(ErrorCode::as_str)),
        "frame codes"
    );
    // REST: the status table.
    let rest = section(&doc, "## 2. Errors");
    let rows: Vec<(u16, String)> = rest
        .lines()
        .filter(|l| {
            l.starts_with("| ")
                && l.split('|')
                    .nth(1)
                    .is_some_and(|c| c.trim().parse::<u16>().is_ok())
        })
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            let status = cells[1].trim().parse().unwrap_or_default();
            let code = ticked(cells[2]).concat();
            (status, code)
        })
        .collect();
    let types: Vec<(u16, String)> = ErrorCode::REST
        .iter()
        .map(|c| (c.http_status().as_u16(), c.as_str().to_string()))
        .collect();
    assert_eq!(
        rows.iter().cloned().collect::<BTreeSet<_>>(),
        types.into_iter().collect::<BTreeSet<_>>(),
        "REST status table"
    );
    // Every code is one serde knows.
    let all = serde_variants::<ErrorCode>(r#""__nope__""#);
    assert!(documented.is_subset(&all));
}

#[test]
fn close_codes_match_the_doc() {
    let doc = doc();
    let table = section(&doc, "### Close codes");
    let documented: BTreeSet<u16> = first_cells(&table)
        .iter()
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    assert_eq!(documented, close::ALL.into_iter().collect());
}

/// The first JSON value on a line from `start` (examples may be followed by
/// a comment), or `None` when it is not valid JSON (an elided `...`).
fn json_at(text: &str) -> Option<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .next()?
        .ok()
}

/// A server frame from the doc: it parses, and re-encodes to the same JSON.
fn check_server_example(example: &Value) {
    let frame: ServerFrame<'static> =
        serde_json::from_value(example.clone()).unwrap_or_else(|e| panic!("{example}: {e}"));
    if let ServerFrame::Event { event, .. } = &frame {
        assert!(
            matches!(event.as_ref(), StoredEvent::Known(_)),
            "the doc's event is a typed RoomEvent: {example}"
        );
    }
    let back: Value = serde_json::from_str(super::encode(&frame).as_str()).unwrap_or_default();
    assert_eq!(&back, example, "re-encoded");
}

#[test]
fn every_example_frame_in_the_doc_parses() {
    let doc = doc();
    let (mut client, mut server) = (0, 0);
    for line in doc.lines() {
        if let Some(text) = line.strip_prefix("→ ") {
            // `{not json` is the example of a bad frame (checked below).
            let Some(example) = json_at(text) else {
                continue;
            };
            decode(&example.to_string()).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            client += 1;
        } else if let Some(example) = line.strip_prefix("← ").and_then(json_at) {
            check_server_example(&example);
            server += 1;
        }
    }
    // Fenced JSON blocks with a `type` (the `hello` and `event` examples).
    for block in doc.split("```json").skip(1) {
        let block = block.split("```").next().unwrap_or_default();
        if let Some(example) = json_at(block).filter(|v| v.get("type").is_some()) {
            check_server_example(&example);
            server += 1;
        }
    }
    assert!(client >= 4, "client examples found: {client}");
    assert!(server >= 6, "server examples found: {server}");
}

#[test]
fn the_documented_bad_frame_answer_is_what_the_decoder_says() {
    let doc = doc();
    let answer = doc
        .lines()
        .skip_while(|l| *l != "→ {not json")
        .nth(1)
        .and_then(|l| l.strip_prefix("← "))
        .and_then(json_at)
        .unwrap_or_default();
    let e = decode("{not json").unwrap_err();
    assert_eq!(answer["code"], e.code.as_str());
    assert_eq!(answer["message"], e.message.as_str());
}
