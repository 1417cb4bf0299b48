//! Cache policy: which objects are kept forever, which are revalidated and when, and
//! which hash an object must have before it may be stored.
//!
//! Pure functions and small value types only: this module never does I/O and never
//! reads a clock (callers pass `now`), so every rule is unit-tested here.
//!
//! # Why a client never sees a new index with packages that do not match it
//!
//! * Package files (`pool/.../*.deb`, `*.rpm`) are immutable per path: Debian's and
//!   Fedora's archives never reuse a file name for other bytes (a new build gets a new
//!   version, hence a new name). So a stored package is the right one for every index that
//!   lists its path, old or new, and it is never revalidated.
//! * `by-hash/SHA256/<hex>` paths name their content: the download's SHA-256 must equal
//!   the path's before it is stored (MD5Sum/SHA1 by-hash paths are checked by length only).
//! * Indexes are grouped under their *anchor*: the `InRelease`/`Release` file of a Debian
//!   suite (group = the suite directory) or the `repomd.xml` of an RPM repository (group =
//!   the repository root). A dependent index (Packages, Sources, Translation, Contents,
//!   Release.gpg, `repodata/*`) is never revalidated on a timer of its own: it stays valid
//!   as long as its anchor is unchanged, and becomes stale the moment a revalidation finds
//!   a changed anchor (the group's generation moves on). So once the cache has served a new
//!   `InRelease`, every index it serves under that suite is at least as new; and it never
//!   serves a Packages file newer than the Release it holds. Anchors themselves are
//!   revalidated after `fresh_secs`.
//! * A repository that rewrites a package file in place violates the archive's own rule;
//!   apt would then report a hash mismatch against the cached copy. Such paths can be
//!   listed under `policy.revalidate`, which takes precedence over `immutable`.
//! * A client that fetched the old InRelease and, after the upstream changed, asks for an
//!   index by its plain name can get the new one: that race exists against the upstream
//!   directly too, and apt closes it by fetching indexes by-hash (`Acquire-By-Hash`),
//!   which this cache serves as immutable.

use std::time::{Duration, Instant};

use super::config::PolicyConfig;

/// How an object is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Stored until evicted, never revalidated.
    Immutable,
    /// Stored, and revalidated with a conditional request when stale.
    Revalidate,
    /// Relayed to the upstream for every request, never stored.
    Pass,
}

const DEFAULT_IMMUTABLE: &[&str] = &[
    "*.deb",
    "*.udeb",
    "*.ddeb",
    "*.rpm",
    "*.drpm",
    "*.dsc",
    "*/by-hash/*",
];

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    immutable: Vec<String>,
    revalidate: Vec<String>,
    pass: Vec<String>,
    pub fresh: Duration,
}

impl Policy {
    pub fn new(cfg: &PolicyConfig, fresh: Duration) -> Policy {
        let mut immutable: Vec<String> = DEFAULT_IMMUTABLE.iter().map(|s| s.to_string()).collect();
        immutable.extend(cfg.immutable.iter().cloned());
        Policy {
            immutable,
            revalidate: cfg.revalidate.clone(),
            pass: cfg.pass.clone(),
            fresh,
        }
    }

    /// Classifies a URL path (no query). Anything not matched is revalidated: the safe
    /// default for files the cache knows nothing about.
    pub fn classify(&self, path: &str, has_query: bool) -> Class {
        if self.pass.iter().any(|p| glob_match(p, path)) {
            return Class::Pass;
        }
        if self.revalidate.iter().any(|p| glob_match(p, path)) {
            return Class::Revalidate;
        }
        if !has_query && self.immutable.iter().any(|p| glob_match(p, path)) {
            return Class::Immutable;
        }
        Class::Revalidate
    }

    /// Whether a stored object may be served without asking the upstream.
    pub fn is_fresh(
        &self,
        class: Class,
        v: &Validity,
        group_gen: Option<u64>,
        now: Instant,
    ) -> bool {
        match class {
            Class::Immutable => true,
            Class::Pass => false,
            Class::Revalidate => {
                let Some(at) = v.validated_at else {
                    return false;
                };
                match (v.role, group_gen) {
                    // A dependent of a known anchor: valid while the anchor is unchanged.
                    (Role::Dependent, Some(generation)) => v.group_gen == Some(generation),
                    // An anchor goes stale on its timer, or when another anchor of its
                    // group (InRelease vs Release) changed.
                    (Role::Anchor, Some(generation)) => {
                        v.group_gen == Some(generation) && now.duration_since(at) < self.fresh
                    }
                    _ => now.duration_since(at) < self.fresh,
                }
            }
        }
    }
}

/// Revalidation state of a stored object, kept in memory only: after a restart every
/// revalidated object is asked about once before it is served again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub validated_at: Option<Instant>,
    pub role: Role,
    /// The generation of the object's group when it was last validated.
    pub group_gen: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Anchor,
    Dependent,
}

/// The anchor group an index belongs to (the key prefix ending in `/`) if `key` is an
/// anchor file: `.../dists/stable/InRelease` -> `.../dists/stable/`,
/// `.../repo/repodata/repomd.xml` -> `.../repo/`.
pub fn anchor_group(key: &str) -> Option<&str> {
    let path = key.split('?').next()?;
    let (dir, file) = path.rsplit_once('/')?;
    match file {
        "InRelease" | "Release" => Some(&key[..dir.len() + 1]),
        "repomd.xml" => {
            let parent = dir.strip_suffix("/repodata")?;
            Some(&key[..parent.len() + 1])
        }
        _ => None,
    }
}

/// The directory prefixes of a key (each ending in `/`), longest first: the candidate
/// groups a dependent index may belong to.
pub fn ancestor_dirs(key: &str) -> impl Iterator<Item = &str> {
    let path = key.split('?').next().unwrap_or(key);
    let start = key.find("://").map(|i| i + 3).unwrap_or(0);
    path.match_indices('/')
        .filter(move |(i, _)| *i >= start)
        .map(move |(i, _)| &key[..i + 1])
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
}

/// What a completed download must hash to, when its path says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedHash {
    Sha256([u8; 32]),
}

/// `.../by-hash/SHA256/<64 hex>` names its content's SHA-256.
pub fn expected_hash(path: &str) -> Option<ExpectedHash> {
    let (_, tail) = path.rsplit_once("/by-hash/SHA256/")?;
    if tail.len() != 64 || tail.contains('/') {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in tail.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(ExpectedHash::Sha256(out))
}

/// Glob match where `*` matches any (possibly empty) run of characters, `/` included.
/// A pattern without `/` is matched against the last path segment only.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let subject = if pattern.contains('/') {
        path
    } else {
        path.rsplit('/').next().unwrap_or(path)
    };
    let (p, s) = (pattern.as_bytes(), subject.as_bytes());
    // Iterative wildcard matching with one backtrack point.
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(&PolicyConfig::default(), Duration::from_secs(60))
    }

    #[test]
    fn packages_are_immutable_and_indexes_revalidated() {
        let p = policy();
        assert_eq!(
            p.classify("/debian/pool/main/h/hello/hello_2.10-3_amd64.deb", false),
            Class::Immutable
        );
        assert_eq!(
            p.classify("/fedora/Packages/h/hello-2.10.x86_64.rpm", false),
            Class::Immutable
        );
        assert_eq!(
            p.classify(
                "/debian/dists/stable/main/binary-amd64/by-hash/SHA256/ab",
                false
            ),
            Class::Immutable
        );
        for idx in [
            "/debian/dists/stable/InRelease",
            "/debian/dists/stable/main/binary-amd64/Packages.xz",
            "/debian/dists/stable/main/source/Sources.gz",
            "/fedora/repodata/repomd.xml",
            "/some/unknown/file.txt",
        ] {
            assert_eq!(p.classify(idx, false), Class::Revalidate, "{idx}");
        }
        assert_eq!(p.classify("/x/a.deb", true), Class::Revalidate);
    }

    #[test]
    fn configured_lists_take_precedence_in_order() {
        let cfg = PolicyConfig {
            immutable: vec!["*.iso".into()],
            revalidate: vec!["/thirdparty/*".into()],
            pass: vec!["*/cgi-bin/*".into()],
        };
        let p = Policy::new(&cfg, Duration::from_secs(1));
        assert_eq!(p.classify("/isos/d.iso", false), Class::Immutable);
        assert_eq!(
            p.classify("/thirdparty/pool/x.deb", false),
            Class::Revalidate
        );
        assert_eq!(p.classify("/a/cgi-bin/x.deb", false), Class::Pass);
    }

    #[test]
    fn glob_matches_segments_and_paths() {
        assert!(glob_match("*.deb", "/a/b/c.deb"));
        assert!(!glob_match("*.deb", "/a/b.deb/c"));
        assert!(glob_match("*/by-hash/*", "/d/main/by-hash/SHA256/x"));
        assert!(glob_match("Packages*", "/d/Packages.xz"));
        assert!(!glob_match("a*b*c", "/abx"));
        assert!(glob_match("a*b*c", "/aXbYc"));
    }

    #[test]
    fn anchors_and_their_groups() {
        assert_eq!(
            anchor_group("http://h/debian/dists/stable/InRelease"),
            Some("http://h/debian/dists/stable/")
        );
        assert_eq!(
            anchor_group("http://h/f/39/repodata/repomd.xml"),
            Some("http://h/f/39/")
        );
        assert_eq!(
            anchor_group("http://h/debian/dists/stable/Release.gpg"),
            None
        );
        let dirs: Vec<_> = ancestor_dirs("http://h/a/b/c").collect();
        assert_eq!(dirs, vec!["http://h/a/b/", "http://h/a/", "http://h/"]);
    }

    #[test]
    fn dependents_follow_their_anchor_not_a_timer() {
        let p = policy();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        let dep = Validity {
            validated_at: Some(t0),
            role: Role::Dependent,
            group_gen: Some(3),
        };
        assert!(p.is_fresh(Class::Revalidate, &dep, Some(3), later));
        assert!(!p.is_fresh(Class::Revalidate, &dep, Some(4), t0));
        // Without a known anchor, the timer applies.
        assert!(!p.is_fresh(Class::Revalidate, &dep, None, later));
        let anchor = Validity {
            validated_at: Some(t0),
            role: Role::Anchor,
            group_gen: Some(3),
        };
        assert!(p.is_fresh(
            Class::Revalidate,
            &anchor,
            Some(3),
            t0 + Duration::from_secs(59)
        ));
        assert!(!p.is_fresh(
            Class::Revalidate,
            &anchor,
            Some(3),
            t0 + Duration::from_secs(61)
        ));
        assert!(!p.is_fresh(Class::Revalidate, &anchor, Some(4), t0));
        let never = Validity {
            validated_at: None,
            role: Role::Dependent,
            group_gen: None,
        };
        assert!(!p.is_fresh(Class::Revalidate, &never, Some(1), t0));
        assert!(p.is_fresh(Class::Immutable, &never, None, t0));
    }

    #[test]
    fn by_hash_paths_give_their_sha256() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let Some(ExpectedHash::Sha256(h)) =
            expected_hash(&format!("/d/main/binary-amd64/by-hash/SHA256/{hex}"))
        else {
            panic!("no hash");
        };
        assert_eq!(h[0], 0xe3);
        assert_eq!(expected_hash("/d/by-hash/SHA256/abc"), None);
        assert_eq!(
            expected_hash("/d/by-hash/MD5Sum/d41d8cd98f00b204e9800998ecf8427e"),
            None
        );
    }
}
