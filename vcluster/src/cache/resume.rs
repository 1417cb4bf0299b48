//! Resuming a download the upstream cut mid-body: the request that asks for the rest, and
//! what its answer means.
//!
//! The rest is asked for with `Range: bytes=<bytes on disk>-` and `If-Range` on the
//! object's validator (its strong ETag, else its Last-Modified), so the upstream sends
//! either the missing bytes of the *same* object (206) or, if the object changed, the whole
//! new one (200). Without a validator there is nothing that ties a range to the bytes on
//! disk, so the whole object is asked for again. The answer is classified here
//! ([`Answer`]); `fetch.rs` acts on it. A 200 that carries the same validator and length
//! comes from an upstream that ignores ranges: its first bytes are checked against the
//! file before the rest is appended, so a splice is never made of two different objects.
//!
//! This module does no I/O: headers in, a request's headers and a verdict out.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::flight::ObjectHead;

/// First pause before a resume; doubled for each attempt that made no progress.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The pause before resume attempt `n` (1-based) since the download last made progress.
pub fn backoff(n: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// The validator `If-Range` can carry: a strong ETag, else Last-Modified (RFC 9110
/// 13.1.5: a weak ETag is never allowed there).
pub fn if_range_validator(head: &ObjectHead) -> Option<&str> {
    match head.etag.as_deref() {
        Some(e) if e.starts_with('"') => Some(e),
        _ => head.last_modified.as_deref(),
    }
}

/// The headers of the request for the rest of an object of which `written` bytes are on
/// disk: a range from there with `If-Range`, or nothing (the whole object) without a
/// validator.
pub fn request_headers(head: &ObjectHead, written: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(v) = if_range_validator(head).and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert(
            header::RANGE,
            HeaderValue::from_str(&format!("bytes={written}-")).expect("ascii"),
        );
        h.insert(header::IF_RANGE, v);
    }
    h
}

/// What the answer to a resume request means for the download.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// 206 for the same object from the byte on disk: append its body.
    Continue,
    /// 200 for what claims to be the same object (the upstream ignores ranges, or there
    /// was no validator to ask one with): check its first bytes against the file, then
    /// append the rest.
    Refetch,
    /// 200 for a changed object (other validator or length): restart the download with
    /// this response.
    Changed,
    /// 206 for a changed object (a server that ignored `If-Range`): restart the download
    /// from a fresh whole-object request.
    Diverged,
    /// Nothing usable (another status, a range not starting at the byte asked for): a
    /// failed attempt.
    Unusable(String),
}

fn text(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Whether a response's validators and length still name the object `head` describes.
fn same_object(resp: &HeaderMap, head: &ObjectHead, length: Option<u64>) -> bool {
    if head.length.is_some() && length.is_some() && head.length != length {
        return false;
    }
    match (&head.etag, &head.last_modified) {
        (Some(e), _) => text(resp, header::ETAG) == Some(e.as_str()),
        (None, Some(lm)) => text(resp, header::LAST_MODIFIED) == Some(lm.as_str()),
        (None, None) => true,
    }
}

/// `bytes a-b/total` (total may be `*`).
fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?, total))
}

/// Classifies the answer to a resume request sent with `written` bytes on disk.
pub fn classify(status: StatusCode, resp: &HeaderMap, head: &ObjectHead, written: u64) -> Answer {
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let Some((a, b, total)) = text(resp, header::CONTENT_RANGE).and_then(content_range)
            else {
                return Answer::Unusable("206 without a readable Content-Range".into());
            };
            if !same_object(resp, head, total) {
                return Answer::Diverged;
            }
            if a != written || b < a {
                return Answer::Unusable(format!(
                    "206 for bytes {a}-{b}, asked from byte {written}"
                ));
            }
            Answer::Continue
        }
        StatusCode::OK => {
            let length = text(resp, header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
            if same_object(resp, head, length) {
                Answer::Refetch
            } else {
                Answer::Changed
            }
        }
        other => Answer::Unusable(format!("resume answered {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(etag: Option<&str>, lm: Option<&str>) -> ObjectHead {
        ObjectHead {
            length: Some(1000),
            content_type: None,
            etag: etag.map(str::to_owned),
            last_modified: lm.map(str::to_owned),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn if_range_carries_a_strong_etag_else_last_modified_else_nothing_is_ranged() {
        const LM: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
        let h = request_headers(&head(Some("\"v1\""), Some(LM)), 400);
        assert_eq!(h[header::RANGE], "bytes=400-");
        assert_eq!(h[header::IF_RANGE], "\"v1\"");
        let h = request_headers(&head(Some("W/\"v1\""), Some(LM)), 400);
        assert_eq!(
            h[header::IF_RANGE],
            LM,
            "a weak ETag is not allowed in If-Range"
        );
        assert!(request_headers(&head(Some("W/\"v1\""), None), 400).is_empty());
        assert!(request_headers(&head(None, None), 400).is_empty());
    }

    #[test]
    fn answers_continue_refetch_or_restart_by_status_validator_and_range() {
        let h = head(Some("\"v1\""), None);
        let ok = |extra: &[(&str, &str)]| classify(StatusCode::OK, &headers(extra), &h, 400);
        let part = |extra: &[(&str, &str)]| {
            classify(StatusCode::PARTIAL_CONTENT, &headers(extra), &h, 400)
        };
        assert_eq!(
            part(&[("etag", "\"v1\""), ("content-range", "bytes 400-999/1000")]),
            Answer::Continue
        );
        assert_eq!(
            part(&[("content-range", "bytes 400-999/*")]),
            Answer::Diverged,
            "a 206 without the validator cannot be shown to be the same object"
        );
        assert_eq!(
            part(&[("etag", "\"v2\""), ("content-range", "bytes 400-999/1000")]),
            Answer::Diverged
        );
        assert_eq!(
            part(&[("etag", "\"v1\""), ("content-range", "bytes 400-999/2000")]),
            Answer::Diverged
        );
        assert!(matches!(
            part(&[("etag", "\"v1\""), ("content-range", "bytes 0-999/1000")]),
            Answer::Unusable(_)
        ));
        assert!(matches!(part(&[("etag", "\"v1\"")]), Answer::Unusable(_)));
        assert_eq!(
            ok(&[("etag", "\"v1\""), ("content-length", "1000")]),
            Answer::Refetch
        );
        assert_eq!(
            ok(&[("etag", "\"v2\""), ("content-length", "1000")]),
            Answer::Changed
        );
        assert_eq!(
            ok(&[("etag", "\"v1\""), ("content-length", "999")]),
            Answer::Changed
        );
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), &h, 400),
            Answer::Unusable(_)
        ));
        let bare = head(None, None);
        assert_eq!(
            classify(
                StatusCode::OK,
                &headers(&[("content-length", "1000")]),
                &bare,
                400
            ),
            Answer::Refetch
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(400));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }
}
