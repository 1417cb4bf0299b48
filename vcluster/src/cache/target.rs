//! Turning a client's request target into the object it names: the canonical upstream
//! URL, which is both where the object is fetched from and its key in the store.
//!
//! Both ways of asking land on the same key: the forward-proxy form
//! `GET http://deb.example/debian/pool/f.deb` and the mirror form `GET /debian/pool/f.deb`
//! (with `debian = "http://deb.example/debian"`) name one object. Paths are
//! percent-decoded and re-encoded one canonical way, so `%2b` and `+` are one key too.
//!
//! This module refuses what would make the key ambiguous or escape a mirror's base: `.`
//! and `..` segments (encoded or not), encoded slashes, NUL bytes, malformed escapes,
//! non-http schemes. It never touches the file system: the store names its files by a
//! hash of the key, so no request text ever becomes a path.

use http::Uri;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::config::Mirror;

/// The canonical upstream URL of an object; the store's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(pub String);

impl ObjectKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path part (from the first `/` after the authority, without the query).
    pub fn path(&self) -> &str {
        let rest = self.0.split_once("://").map(|(_, r)| r).unwrap_or(&self.0);
        let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
        path.split('?').next().unwrap_or(path)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resolved request: what to fetch and under which key to keep it.
#[derive(Debug, Clone)]
pub struct Target {
    pub key: ObjectKey,
    pub upstream: Uri,
}

/// Why a request target was refused. Each maps to one 4xx status in `http.rs`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("malformed request target: {0}")]
    Malformed(String),
    #[error("path traversal refused: '.' and '..' segments (encoded or not) are not allowed")]
    Traversal,
    #[error("encoded '/' or NUL in a path segment is not allowed")]
    EncodedSeparator,
    #[error("scheme {0:?} is not proxied: only http:// (use CONNECT for https, if enabled)")]
    Scheme(String),
    #[error("no mirror is configured for prefix /{0}/")]
    UnknownMirror(String),
    #[error("forward proxying (absolute-form requests) is disabled by configuration")]
    ForwardDisabled,
}

/// Characters kept literally in a canonical path segment: RFC 3986 unreserved plus the
/// sub-delimiters that never need escaping in a path. `+` is escaped on purpose: some
/// servers (S3) read a literal `+` in a path as a space.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// Decodes and re-encodes a path (starting with `/`), refusing traversal and ambiguity.
pub fn canonical_path(path: &str) -> Result<String, TargetError> {
    if !path.starts_with('/') {
        return Err(TargetError::Malformed(format!(
            "path {path:?} does not start with '/'"
        )));
    }
    let mut out = String::with_capacity(path.len() + 8);
    for raw in path[1..].split('/') {
        if raw.contains('\\') {
            return Err(TargetError::Malformed("backslash in path".into()));
        }
        check_escapes(raw)?;
        let decoded: Vec<u8> = percent_decode_str(raw).collect();
        if decoded.contains(&b'/') || decoded.contains(&0) || decoded.contains(&b'\\') {
            return Err(TargetError::EncodedSeparator);
        }
        if decoded == b"." || decoded == b".." {
            return Err(TargetError::Traversal);
        }
        let text = String::from_utf8(decoded)
            .map_err(|_| TargetError::Malformed("path is not UTF-8 after decoding".into()))?;
        if text.chars().any(|c| c.is_control()) {
            return Err(TargetError::Malformed("control character in path".into()));
        }
        out.push('/');
        out.extend(utf8_percent_encode(&text, SEGMENT));
    }
    Ok(out)
}

/// Every `%` must start a two-hex-digit escape.
fn check_escapes(s: &str) -> Result<(), TargetError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(TargetError::Malformed(format!(
                    "bad percent escape in {s:?}"
                )));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn build(key: String) -> Result<Target, TargetError> {
    let upstream: Uri = key
        .parse()
        .map_err(|e| TargetError::Malformed(format!("{e}")))?;
    Ok(Target {
        key: ObjectKey(key),
        upstream,
    })
}

/// Resolves a request URI. `forward` says whether absolute-form targets are accepted.
pub fn resolve(uri: &Uri, mirrors: &[Mirror], forward: bool) -> Result<Target, TargetError> {
    let query = match uri.query() {
        Some(q) => {
            check_escapes(q)?;
            format!("?{q}")
        }
        None => String::new(),
    };
    if let Some(scheme) = uri.scheme_str() {
        if !forward {
            return Err(TargetError::ForwardDisabled);
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(TargetError::Scheme(scheme.to_owned()));
        }
        let auth = uri
            .authority()
            .ok_or_else(|| TargetError::Malformed("absolute URI without a host".into()))?;
        if auth.as_str().contains('@') {
            return Err(TargetError::Malformed("user information in URI".into()));
        }
        let host = auth.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(TargetError::Malformed("empty host".into()));
        }
        let port = match auth.port_u16() {
            Some(80) | None => String::new(),
            Some(p) => format!(":{p}"),
        };
        let path = canonical_path(uri.path())?;
        return build(format!("http://{host}{port}{path}{query}"));
    }
    let path = canonical_path(uri.path())?;
    let rest = &path[1..];
    for m in mirrors {
        if let Some(tail) = rest.strip_prefix(m.prefix.as_str()) {
            if tail.is_empty() {
                return build(format!("{}{query}", m.base));
            }
            if let Some(tail) = tail.strip_prefix('/') {
                return build(format!("{}{tail}{query}", m.base));
            }
        }
    }
    let first = rest.split('/').next().unwrap_or("");
    Err(TargetError::UnknownMirror(first.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrors() -> Vec<Mirror> {
        vec![Mirror::new("debian", "http://up.example:8080/debian").unwrap()]
    }

    fn key(u: &str) -> Result<String, TargetError> {
        resolve(&u.parse().unwrap(), &mirrors(), true).map(|t| t.key.0)
    }

    #[test]
    fn forward_and_mirror_forms_name_one_object() {
        assert_eq!(
            key("http://UP.example:8080/debian/pool/a+b_1.0.deb").unwrap(),
            key("/debian/pool/a%2bb_1.0.deb").unwrap()
        );
        assert_eq!(
            key("http://up.example:80/x").unwrap(),
            "http://up.example/x"
        );
    }

    #[test]
    fn traversal_is_refused_encoded_or_not() {
        for p in [
            "/debian/../etc/passwd",
            "/debian/%2e%2e/etc/passwd",
            "/debian/%2E./x",
            "/debian/pool/./x",
            "http://h/a/../b",
        ] {
            assert_eq!(key(p), Err(TargetError::Traversal), "{p}");
        }
        assert_eq!(key("/debian/a%2fb"), Err(TargetError::EncodedSeparator));
        assert_eq!(key("/debian/a%00b"), Err(TargetError::EncodedSeparator));
        assert!(matches!(
            key("/debian/a%zz"),
            Err(TargetError::Malformed(_))
        ));
        assert!(matches!(key("/debian/a%4"), Err(TargetError::Malformed(_))));
    }

    #[test]
    fn unknown_prefix_and_other_schemes_are_refused() {
        assert_eq!(
            key("/ubuntu/dists/x"),
            Err(TargetError::UnknownMirror("ubuntu".into()))
        );
        assert_eq!(
            key("/debianx/y"),
            Err(TargetError::UnknownMirror("debianx".into()))
        );
        assert_eq!(key("https://h/x"), Err(TargetError::Scheme("https".into())));
        assert_eq!(
            resolve(&"http://h/x".parse().unwrap(), &mirrors(), false).unwrap_err(),
            TargetError::ForwardDisabled
        );
    }

    #[test]
    fn key_path_strips_authority_and_query() {
        let k = ObjectKey("http://h:1/a/b?c=d".into());
        assert_eq!(k.path(), "/a/b");
    }
}
