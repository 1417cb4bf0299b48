//! Node sets as clush and pdsh users write them: `node[1-134,200]`, `rack[1-2]-n[01-16]`,
//! `@group`, `@site:paris`, combined left to right with `,` (union), `!` (difference),
//! `&` (intersection) and `^` (symmetric difference). Parsing expands an expression into a
//! sorted set of names; `Display` folds a set back into the shortest bracket form on each
//! name's last number, so the output of 134 nodes reads `node[1-134]`.
//!
//! This module only parses and folds. It never looks names up itself: `@` groups are asked
//! of a [`GroupResolver`] (the controller's sites, clusters and groups), and an expression
//! that would expand past [`MAX_NAMES`] names is refused before it is built.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The most names one expression may expand to (and so the largest cluster one command
/// can address); a larger expansion is refused before it is built.
pub const MAX_NAMES: usize = 100_000;

/// A set of node names, ordered naturally (`n2` before `n10`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSet {
    names: BTreeSet<NodeName>,
}

/// What `@kind:name` (or `@name`, with no kind) stands for. The controller answers with
/// the nodes of a site, a cluster or a user-defined group.
pub trait GroupResolver {
    fn resolve(&self, kind: Option<&str>, name: &str) -> Result<Vec<String>, String>;
}

/// A resolver for expressions that must not use groups.
pub struct NoGroups;

impl GroupResolver for NoGroups {
    fn resolve(&self, _kind: Option<&str>, name: &str) -> Result<Vec<String>, String> {
        Err(format!("no groups are known here (asked for @{name})"))
    }
}

impl<F> GroupResolver for F
where
    F: Fn(Option<&str>, &str) -> Result<Vec<String>, String>,
{
    fn resolve(&self, kind: Option<&str>, name: &str) -> Result<Vec<String>, String> {
        self(kind, name)
    }
}

/// Why an expression was refused; `column` counts characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node set `{expr}`: {problem} at column {column}")]
pub struct NodeSetError {
    pub expr: String,
    pub column: usize,
    pub problem: String,
}

impl NodeSet {
    pub fn new() -> NodeSet {
        NodeSet::default()
    }

    /// Parses an expression whose `@` groups `groups` resolves.
    pub fn parse(expr: &str, groups: &dyn GroupResolver) -> Result<NodeSet, NodeSetError> {
        Parser {
            expr,
            chars: expr.char_indices().collect(),
            pos: 0,
            groups,
        }
        .expression()
    }

    /// Parses an expression that uses no groups.
    pub fn parse_plain(expr: &str) -> Result<NodeSet, NodeSetError> {
        NodeSet::parse(expr, &NoGroups)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(&NodeName::new(name))
    }

    pub fn insert(&mut self, name: &str) {
        self.names.insert(NodeName::new(name));
    }

    /// The names in natural order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| n.text.as_str())
    }

    pub fn union(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self.names.union(&other.names).cloned().collect(),
        }
    }

    pub fn difference(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self.names.difference(&other.names).cloned().collect(),
        }
    }

    pub fn intersection(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self.names.intersection(&other.names).cloned().collect(),
        }
    }

    pub fn symmetric_difference(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self
                .names
                .symmetric_difference(&other.names)
                .cloned()
                .collect(),
        }
    }
}

impl<S: AsRef<str>> FromIterator<S> for NodeSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> NodeSet {
        NodeSet {
            names: iter
                .into_iter()
                .map(|s| NodeName::new(s.as_ref()))
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Names and their natural order
// ---------------------------------------------------------------------------------------

/// A name split at its last run of digits: `rack1-n07` is `rack1-n` + `07` + ``.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeName {
    text: String,
    /// Byte range of the last digit run, if any.
    digits: Option<(usize, usize)>,
}

impl NodeName {
    fn new(text: &str) -> NodeName {
        let bytes = text.as_bytes();
        let digits = bytes.iter().rposition(u8::is_ascii_digit).map(|end| {
            let start = bytes[..end]
                .iter()
                .rposition(|b| !b.is_ascii_digit())
                .map_or(0, |p| p + 1);
            (start, end + 1)
        });
        NodeName {
            text: text.to_owned(),
            digits,
        }
    }

    /// (prefix, digits, suffix), with empty digits for a name without any.
    fn parts(&self) -> (&str, &str, &str) {
        match self.digits {
            Some((a, b)) => (&self.text[..a], &self.text[a..b], &self.text[b..]),
            None => (&self.text, "", ""),
        }
    }
}

impl Ord for NodeName {
    fn cmp(&self, other: &NodeName) -> std::cmp::Ordering {
        let (p1, d1, s1) = self.parts();
        let (p2, d2, s2) = other.parts();
        // Numbers compare by value: fewer significant digits is smaller; equal values
        // order by their padding, and the text settles everything else.
        let v1 = d1.trim_start_matches('0');
        let v2 = d2.trim_start_matches('0');
        p1.cmp(p2)
            .then_with(|| s1.cmp(s2))
            .then_with(|| v1.len().cmp(&v2.len()))
            .then_with(|| v1.cmp(v2))
            .then_with(|| d1.len().cmp(&d2.len()))
            .then_with(|| self.text.cmp(&other.text))
    }
}

impl PartialOrd for NodeName {
    fn partial_cmp(&self, other: &NodeName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

// ---------------------------------------------------------------------------------------
// Folding
// ---------------------------------------------------------------------------------------

impl fmt::Display for NodeSet {
    /// Folds names that differ only in their last number: `n1,n2,n3,n5` is `n[1-3,5]`.
    /// Padded numbers (`n01`) fold only with numbers of the same width, so parsing the
    /// folded form gives back exactly this set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // (prefix, suffix, width or 0 for unpadded) -> numbers; plus names without a
        // foldable number, kept as they are.
        let mut groups: BTreeMap<(&str, &str, usize), BTreeSet<u64>> = BTreeMap::new();
        let mut plain: Vec<&str> = Vec::new();
        for name in &self.names {
            let (prefix, digits, suffix) = name.parts();
            match digits.parse::<u64>() {
                Ok(n) if !digits.is_empty() => {
                    let width = if digits.len() > 1 && digits.starts_with('0') {
                        digits.len()
                    } else {
                        0
                    };
                    // An unpadded number whose width could be mistaken for padding
                    // (never: unpadded numbers have no leading zero) folds by value.
                    groups.entry((prefix, suffix, width)).or_default().insert(n);
                }
                _ => plain.push(&name.text),
            }
        }
        let mut parts: Vec<(NodeName, String)> = plain
            .into_iter()
            .map(|p| (NodeName::new(p), p.to_owned()))
            .collect();
        for ((prefix, suffix, width), numbers) in groups {
            let num = |n: u64| format!("{n:0width$}");
            let first = *numbers.first().expect("a group has a number");
            let key = NodeName::new(&format!("{prefix}{}{suffix}", num(first)));
            if numbers.len() == 1 {
                parts.push((key, format!("{prefix}{}{suffix}", num(first))));
                continue;
            }
            let mut ranges: Vec<String> = Vec::new();
            let mut iter = numbers.iter().copied().peekable();
            while let Some(start) = iter.next() {
                let mut end = start;
                while iter.peek() == Some(&(end + 1)) {
                    end += 1;
                    iter.next();
                }
                ranges.push(if start == end {
                    num(start)
                } else {
                    format!("{}-{}", num(start), num(end))
                });
            }
            parts.push((key, format!("{prefix}[{}]{suffix}", ranges.join(","))));
        }
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        let texts: Vec<&str> = parts.iter().map(|(_, t)| t.as_str()).collect();
        f.write_str(&texts.join(","))
    }
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

struct Parser<'a> {
    expr: &'a str,
    chars: Vec<(usize, char)>,
    pos: usize,
    groups: &'a dyn GroupResolver,
}

/// The set operators, applied left to right.
fn is_operator(c: char) -> bool {
    matches!(c, ',' | '!' | '&' | '^')
}

/// Characters a name may hold outside brackets.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '+' | '=' | '%')
}

impl Parser<'_> {
    fn error(&self, column_pos: usize, problem: impl Into<String>) -> NodeSetError {
        NodeSetError {
            expr: self.expr.to_owned(),
            column: column_pos + 1,
            problem: problem.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|&(_, c)| c)
    }

    fn expression(&mut self) -> Result<NodeSet, NodeSetError> {
        if self.chars.is_empty() || self.expr.trim().is_empty() {
            return Err(self.error(0, "empty node set"));
        }
        let mut set = self.item()?;
        while let Some(op) = self.peek() {
            let at = self.pos;
            if !is_operator(op) {
                return Err(self.error(at, format!("unexpected `{op}`")));
            }
            self.pos += 1;
            let rhs = self.item()?;
            set = match op {
                ',' => set.union(&rhs),
                '!' => set.difference(&rhs),
                '&' => set.intersection(&rhs),
                _ => set.symmetric_difference(&rhs),
            };
            if set.len() > MAX_NAMES {
                return Err(self.error(at, format!("expands to more than {MAX_NAMES} names")));
            }
        }
        Ok(set)
    }

    fn item(&mut self) -> Result<NodeSet, NodeSetError> {
        match self.peek() {
            None => Err(self.error(self.pos, "a name or @group is missing")),
            Some(c) if is_operator(c) => Err(self.error(self.pos, "a name or @group is missing")),
            Some('@') => self.group(),
            Some(c) if is_name_char(c) || c == '[' => self.pattern(),
            Some(c) => Err(self.error(self.pos, format!("unexpected `{c}`"))),
        }
    }

    fn word(&mut self) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        let from = self.chars.get(start).map_or(self.expr.len(), |&(i, _)| i);
        let to = self
            .chars
            .get(self.pos)
            .map_or(self.expr.len(), |&(i, _)| i);
        &self.expr[from..to]
    }

    fn group(&mut self) -> Result<NodeSet, NodeSetError> {
        let at = self.pos;
        self.pos += 1; // '@'
        let word = self.word().to_owned();
        let (kind, name) = match word.split_once(':') {
            Some((k, n)) => (Some(k), n),
            None => (None, word.as_str()),
        };
        if name.is_empty() || kind.is_some_and(str::is_empty) {
            return Err(self.error(at, "a group needs a name (@name or @kind:name)"));
        }
        let names = self
            .groups
            .resolve(kind, name)
            .map_err(|e| self.error(at, e))?;
        if names.len() > MAX_NAMES {
            return Err(self.error(at, format!("expands to more than {MAX_NAMES} names")));
        }
        Ok(names.iter().collect())
    }

    /// Literal text and bracketed ranges, expanded as their cartesian product.
    fn pattern(&mut self) -> Result<NodeSet, NodeSetError> {
        let start = self.pos;
        let mut names: Vec<String> = vec![String::new()];
        loop {
            match self.peek() {
                Some('[') => {
                    let open = self.pos;
                    self.pos += 1;
                    let numbers = self.ranges(open)?;
                    let total = names.len().checked_mul(numbers.len());
                    if total.is_none_or(|t| t > MAX_NAMES) {
                        return Err(
                            self.error(open, format!("expands to more than {MAX_NAMES} names"))
                        );
                    }
                    names = names
                        .iter()
                        .flat_map(|n| numbers.iter().map(move |x| format!("{n}{x}")))
                        .collect();
                }
                Some(c) if is_name_char(c) => {
                    let word = self.word().to_owned();
                    for n in &mut names {
                        n.push_str(&word);
                    }
                }
                _ => break,
            }
        }
        if self.pos == start {
            return Err(self.error(start, "a name is missing"));
        }
        Ok(names.iter().collect())
    }

    /// `a-b/step,c,...]`, after the `[`; returns the numbers as text (padding kept).
    fn ranges(&mut self, open: usize) -> Result<Vec<String>, NodeSetError> {
        let mut out: Vec<String> = Vec::new();
        loop {
            let (lo_text, lo) = self.number(open)?;
            let mut hi = lo;
            let mut step = 1u64;
            if self.peek() == Some('-') {
                self.pos += 1;
                let at = self.pos;
                hi = self.number(open)?.1;
                if hi < lo {
                    return Err(self.error(at, format!("range {lo}-{hi} goes backwards")));
                }
                if self.peek() == Some('/') {
                    self.pos += 1;
                    let at = self.pos;
                    step = self.number(open)?.1;
                    if step == 0 {
                        return Err(self.error(at, "a step must be at least 1"));
                    }
                }
            }
            // Padding comes from the lower bound, as in clush: [01-10] is 01..10.
            let width = if lo_text.len() > 1 && lo_text.starts_with('0') {
                lo_text.len()
            } else {
                0
            };
            // Names this range adds, less one (so u64::MAX ranges cannot overflow).
            let more = (hi - lo) / step;
            if more >= MAX_NAMES as u64 || out.len() as u64 + more >= MAX_NAMES as u64 {
                return Err(self.error(open, format!("expands to more than {MAX_NAMES} names")));
            }
            let mut n = lo;
            loop {
                out.push(format!("{n:0width$}"));
                match n.checked_add(step) {
                    Some(next) if next <= hi => n = next,
                    _ => break,
                }
            }
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(']') => {
                    self.pos += 1;
                    return Ok(out);
                }
                None => return Err(self.error(open, "`[` is never closed")),
                Some(c) => return Err(self.error(self.pos, format!("unexpected `{c}` in a range"))),
            }
        }
    }

    fn number(&mut self, open: usize) -> Result<(String, u64), NodeSetError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        if self.pos == start {
            return match self.peek() {
                None => Err(self.error(open, "`[` is never closed")),
                Some(c) => Err(self.error(start, format!("expected a number, found `{c}`"))),
            };
        }
        let text: String = self.chars[start..self.pos]
            .iter()
            .map(|&(_, c)| c)
            .collect();
        let value = text
            .parse::<u64>()
            .map_err(|_| self.error(start, format!("number {text} is too large")))?;
        Ok((text, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(expr: &str) -> Vec<String> {
        NodeSet::parse_plain(expr)
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn ranges_and_lists_expand_in_natural_order() {
        assert_eq!(names("node[1-3,10]"), ["node1", "node2", "node3", "node10"]);
        assert_eq!(names("n[08-11]"), ["n08", "n09", "n10", "n11"]);
        assert_eq!(names("n[1-9/4]"), ["n1", "n5", "n9"]);
        assert_eq!(names("r[1-2]-n[1-2]"), ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]);
        assert_eq!(names("b,a,c10,c9"), ["a", "b", "c9", "c10"]);
    }

    #[test]
    fn operators_apply_left_to_right() {
        assert_eq!(names("n[1-5]!n[2-3]"), ["n1", "n4", "n5"]);
        assert_eq!(names("n[1-5]&n[4-9]"), ["n4", "n5"]);
        assert_eq!(names("n[1-3]^n[3-4]"), ["n1", "n2", "n4"]);
        assert_eq!(names("n[1-3]!n2,n9"), ["n1", "n3", "n9"]);
    }

    #[test]
    fn groups_are_asked_of_the_resolver_with_their_kind() {
        let groups = |kind: Option<&str>, name: &str| -> Result<Vec<String>, String> {
            match (kind, name) {
                (Some("site"), "paris") => Ok(vec!["n1".into(), "n2".into()]),
                (None, "gpu") => Ok(vec!["n2".into(), "n7".into()]),
                _ => Err(format!("no group {name}")),
            }
        };
        let set = NodeSet::parse("@site:paris,@gpu!n1", &groups).unwrap();
        assert_eq!(set.to_string(), "n[2,7]");
        let err = NodeSet::parse("n1,@site:rome", &groups).unwrap_err();
        assert_eq!(err.column, 4);
        assert!(err.to_string().contains("no group rome"), "{err}");
        let err = NodeSet::parse_plain("@gpu").unwrap_err();
        assert!(err.to_string().contains("no groups"), "{err}");
    }

    #[test]
    fn folding_gives_the_short_form_of_134_nodes() {
        let set: NodeSet = (1..=134).map(|i| format!("node{i}")).collect();
        assert_eq!(set.to_string(), "node[1-134]");
        let set = NodeSet::parse_plain("node[1-134,200]!node[50-52]").unwrap();
        assert_eq!(set.to_string(), "node[1-49,53-134,200]");
        assert_eq!(
            NodeSet::parse_plain("a,n09,n10,x").unwrap().to_string(),
            "a,n09,n10,x"
        );
        assert_eq!(
            NodeSet::parse_plain("n[01-03]").unwrap().to_string(),
            "n[01-03]"
        );
    }

    #[test]
    fn malformed_sets_are_refused_naming_the_column() {
        let cases = [
            ("", 1, "empty"),
            ("node[1-", 5, "never closed"),
            ("node[3-1]", 8, "backwards"),
            ("node[1-4/0]", 10, "step"),
            ("node[a]", 6, "expected a number"),
            ("n1,,n2", 4, "missing"),
            ("n1 n2", 3, "unexpected ` `"),
            ("n[99999999999999999999]", 3, "too large"),
            ("@", 1, "needs a name"),
            ("n1,", 4, "missing"),
        ];
        for (expr, column, what) in cases {
            let err = NodeSet::parse_plain(expr).unwrap_err();
            assert_eq!(err.column, column, "{expr}: {err}");
            assert!(err.to_string().contains(what), "{expr}: {err}");
        }
    }

    #[test]
    fn expansions_near_the_limit_are_refused_before_they_are_built() {
        assert_eq!(
            NodeSet::parse_plain("n[1-100000]").unwrap().len(),
            MAX_NAMES
        );
        for expr in [
            "n[1-100001]",
            "n[0-18446744073709551615]",
            "a[1-1000]b[1-1000]",
            "n[1-60000],m[1-60000]",
        ] {
            let err = NodeSet::parse_plain(expr).unwrap_err();
            assert!(
                err.to_string().contains("more than 100000"),
                "{expr}: {err}"
            );
        }
        // The last number of u64 ends a range without wrapping around.
        assert_eq!(
            names("n[18446744073709551614-18446744073709551615/7]"),
            ["n18446744073709551614"]
        );
    }

    /// A reference expansion: every name a small bracket pattern stands for, written out.
    fn reference(prefix: &str, ranges: &[(u64, u64)], width: usize) -> BTreeSet<String> {
        ranges
            .iter()
            .flat_map(|&(a, b)| (a..=b).map(move |n| format!("{prefix}{n:0width$}")))
            .collect()
    }

    proptest! {
        #[test]
        fn parsing_matches_the_reference_expansion(
            prefix in "[a-z]{1,3}",
            ranges in prop::collection::vec((0u64..300, 0u64..40), 1..5),
            width in prop::sample::select(vec![0usize, 3, 4]),
        ) {
            let ranges: Vec<(u64, u64)> = ranges.iter().map(|&(a, len)| (a, a + len)).collect();
            let body: Vec<String> = ranges
                .iter()
                .map(|&(a, b)| format!("{a:0width$}-{b:0width$}"))
                .collect();
            let expr = format!("{prefix}[{}]", body.join(","));
            let set = NodeSet::parse_plain(&expr).unwrap();
            let got: BTreeSet<String> = set.iter().map(str::to_owned).collect();
            // Padding comes from each range's lower bound, so "000" pads and "0" does not.
            let expected: BTreeSet<String> = ranges
                .iter()
                .flat_map(|&(a, b)| {
                    let w = if width > 0 && format!("{a:0width$}").starts_with('0') { width } else { 0 };
                    reference(&prefix, &[(a, b)], w)
                })
                .collect();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn a_folded_set_parses_back_to_itself(
            names in prop::collection::btree_set("[a-c]{1,2}(-[a-b])?[0-9]{0,3}", 0..40),
        ) {
            let set: NodeSet = names.iter().collect();
            prop_assume!(!set.is_empty());
            let folded = set.to_string();
            let back = NodeSet::parse_plain(&folded).unwrap();
            prop_assert_eq!(&back, &set, "folded as {}", folded);
        }
    }
}
