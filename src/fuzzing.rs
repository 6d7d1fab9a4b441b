//! Not an API: the few crate-private parser entry points that the fuzz targets in `fuzz/` (and their
//! stable replay, tests/fuzz_targets.rs) need, as plain functions over owned values, so that the
//! parsers' own modules stay `pub(crate)`.

use crate::front::body::{BodyError, Chunked};
use crate::front::head::{Expectation, Framing, Head};
use crate::mqtt::command::{self, CommandBody, ReplayMemory, Verifier};

/// What the front derives from a parsed head, as it does before forwarding a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadUse {
    /// `Ok(None)`: no body; `Ok(Some(n))`: Content-Length n; `Err`: refused framing. Chunked is
    /// `Ok(Some(u64::MAX))`.
    pub body_length: Result<Option<u64>, &'static str>,
    pub keep_alive: bool,
    /// `None`: no `Expect`; `Some(true)`: 100-continue; `Some(false)`: refused (417).
    pub expects_continue: Option<bool>,
    /// Header lines forwarded to tiny_http.
    pub forwarded: Vec<(String, String)>,
}

pub fn head_use(head: &Head) -> HeadUse {
    HeadUse {
        body_length: head.framing().map(|framing| match framing {
            Framing::None => None,
            Framing::Length(n) => Some(n),
            Framing::Chunked => Some(u64::MAX),
        }),
        keep_alive: head.keep_alive(),
        expects_continue: match head.expectation() {
            Expectation::Nothing => None,
            Expectation::Continue => Some(true),
            Expectation::Unsupported => Some(false),
        },
        forwarded: head.forwardable_headers().cloned().collect(),
    }
}

/// A chunked body decoded from `pieces` as they would arrive, under `limit` bytes: the body, how many
/// input bytes the decoder used, and whether it saw the end.
pub fn chunked(pieces: &[&[u8]], limit: usize) -> Result<(Vec<u8>, usize, bool), BodyError> {
    let mut decoder = Chunked::new(limit);
    let mut body = Vec::new();
    let mut used = 0;
    for piece in pieces {
        used += decoder.feed(piece, &mut body)?;
        if decoder.is_done() {
            break;
        }
    }
    Ok((body, used, decoder.is_done()))
}

/// The admin page's form parsers over one body: `(fields as URL-encoded, multipart parts)`.
pub mod admin_form {
    pub use crate::admin::form::{cookie, multipart, multipart_boundary, Fields, Upload};
}

/// The key the fuzz targets sign commands with.
pub const COMMAND_SECRET: &[u8] = b"fuzzing-secret-0123456789";
/// The door the fuzz targets' verifier is.
pub const COMMAND_DOOR: &str = "front";

/// A command message (envelope) whose body is exactly `body`, signed with [`COMMAND_SECRET`].
pub fn signed_command_text(body: &str) -> String {
    command::sign_text(body, COMMAND_SECRET)
}

/// Verifies `payload` twice at `now_ms` with a fresh verifier for door [`COMMAND_DOOR`] (30 s window),
/// as a door would receive it and then its replay; results as metric labels.
pub fn verify_command_twice(payload: &[u8], now_ms: i64) -> [Result<CommandBody, &'static str>; 2] {
    let mut verifier = Verifier::new(
        COMMAND_DOOR,
        COMMAND_SECRET,
        std::time::Duration::from_secs(30),
        ReplayMemory::default(),
    );
    let mut once = || verifier.verify(payload, now_ms).map_err(|e| e.label());
    [once(), once()]
}
