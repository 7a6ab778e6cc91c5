//! Redaction: every injected value, and its common encodings, replaced by `[redacted:NAME]` in
//! a stream of bytes (the child's stdout and stderr) or found in files (`scan`).
//!
//! Matching is aho-corasick, leftmost-longest (of two values that contain one another, the
//! longer wins). A stream is processed chunk by chunk: what is known clean is passed on at once,
//! and only bytes that could still begin a value are held back, so a value split across two
//! writes is caught and a prompt without a newline still appears.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use secrecy::zeroize::Zeroizing;

/// The values to find and the name each one stands for.
pub struct Redactor {
    /// Anchored, leftmost-longest: which pattern (if any) starts at a given position.
    matcher: Option<AhoCorasick>,
    /// A bit per hash of a pattern's first four bytes: most positions of a stream are passed
    /// over with one load and one bit test. `None` when a pattern is shorter than four bytes.
    filter: Option<Box<[u64]>>,
    /// Every how many positions the filter reads a window (the shortest pattern's length - 3).
    stride: usize,
    /// Per pattern: the text that replaces it.
    replacements: Vec<Arc<[u8]>>,
    /// The patterns, sorted, to answer "could these bytes begin one?".
    sorted: Vec<Zeroizing<Vec<u8>>>,
    /// The patterns with the name each stands for, in the order they were added.
    patterns: Vec<(Zeroizing<Vec<u8>>, Arc<str>)>,
    longest: usize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.patterns.len())
            .field("longest", &self.longest)
            .finish_non_exhaustive()
    }
}

/// A value and the forms it is commonly printed in: itself, standard and URL-safe base64
/// (padded and not), percent-encoded, and JSON-escaped.
pub fn encodings(value: &str) -> Vec<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = value.as_bytes();
    let mut all: Vec<Zeroizing<Vec<u8>>> = vec![Zeroizing::new(bytes.to_vec())];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        all.push(Zeroizing::new(engine.encode(bytes).into_bytes()));
    }
    all.push(Zeroizing::new(
        crate::template::urlencode(value).into_bytes(),
    ));
    if let Ok(json) = serde_json::to_string(value) {
        let inner = &json.as_bytes()[1..json.len() - 1];
        all.push(Zeroizing::new(inner.to_vec()));
    }
    let mut unique: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    for e in all {
        if !unique.iter().any(|u| **u == *e) {
            unique.push(e);
        }
    }
    unique
}

impl Redactor {
    /// From `(name, value)` pairs: values no longer than `min_length` are not matched (they
    /// would redact ordinary words); their names are returned, for one warning.
    pub fn new<'a>(
        values: impl IntoIterator<Item = (&'a str, &'a str)>,
        min_length: usize,
    ) -> (Redactor, Vec<String>) {
        let mut patterns = Vec::new();
        let mut short = Vec::new();
        for (name, value) in values {
            if value.len() <= min_length {
                if !value.is_empty() && !short.iter().any(|s| s == name) {
                    short.push(name.to_owned());
                }
                continue;
            }
            let name: Arc<str> = Arc::from(name);
            for e in encodings(value) {
                patterns.push((e, Arc::clone(&name)));
            }
        }
        (Redactor::from_patterns(patterns), short)
    }

    fn from_patterns(mut patterns: Vec<(Zeroizing<Vec<u8>>, Arc<str>)>) -> Redactor {
        // One pattern once (the first name it was given keeps it).
        let mut seen: Vec<&[u8]> = Vec::new();
        let mut keep = vec![true; patterns.len()];
        for (i, (p, _)) in patterns.iter().enumerate() {
            if seen.contains(&p.as_slice()) {
                keep[i] = false;
            } else {
                seen.push(p);
            }
        }
        let mut k = keep.into_iter();
        patterns.retain(|_| k.next().unwrap_or(false));
        let matcher = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .start_kind(aho_corasick::StartKind::Anchored)
                .build(patterns.iter().map(|(p, _)| p.as_slice()))
                .ok()
        };
        let shortest = patterns.iter().map(|(p, _)| p.len()).min().unwrap_or(0);
        let stride = shortest.saturating_sub(3).clamp(1, 16);
        let filter = (shortest >= 4).then(|| {
            let mut bits = vec![0u64; FILTER_BITS / 64].into_boxed_slice();
            for (p, _) in &patterns {
                for k in 0..stride {
                    let h = filter_hash(&p[k..k + 4]);
                    bits[h / 64] |= 1 << (h % 64);
                }
            }
            bits
        });
        let replacements = patterns
            .iter()
            .map(|(_, n)| Arc::from(format!("[redacted:{n}]").into_bytes()))
            .collect();
        let mut sorted: Vec<Zeroizing<Vec<u8>>> = patterns.iter().map(|(p, _)| p.clone()).collect();
        sorted.sort_unstable_by(|a, b| a.as_slice().cmp(b.as_slice()));
        let longest = patterns.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        Redactor {
            matcher,
            filter,
            stride,
            replacements,
            sorted,
            patterns,
            longest,
        }
    }

    /// This redactor and `more`'s patterns: after a rotation the new values are matched, and
    /// the old ones still are.
    pub fn with(&self, more: &Redactor) -> Redactor {
        let mut patterns = self.patterns.clone();
        patterns.extend(more.patterns.iter().cloned());
        Redactor::from_patterns(patterns)
    }

    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// Every pattern (value or encoding), for `::add-mask::`.
    pub fn patterns(&self) -> impl Iterator<Item = &[u8]> {
        self.patterns.iter().map(|(p, _)| p.as_slice())
    }

    /// Where a found pattern is, and whose value it is.
    pub fn find_all<'h>(
        &'h self,
        haystack: &'h [u8],
    ) -> impl Iterator<Item = (usize, &'h str)> + 'h {
        self.matches(haystack)
            .map(|m| (m.start(), &*self.patterns[m.pattern().as_usize()].1))
    }

    /// Leftmost-longest matches, not overlapping. With the filter, only every `stride`-th
    /// position is read: a pattern at least `stride + 3` bytes long always has one of its
    /// four-byte windows there, so a window that is no pattern's rules out the `stride`
    /// positions before it; at a hit, those positions are tried, leftmost first.
    fn matches<'h>(&'h self, hay: &'h [u8]) -> impl Iterator<Item = aho_corasick::Match> + 'h {
        let mut at = 0;
        std::iter::from_fn(move || {
            let matcher = self.matcher.as_ref()?;
            let anchored_at = |p: usize| {
                matcher.find(
                    aho_corasick::Input::new(hay)
                        .range(p..)
                        .anchored(aho_corasick::Anchored::Yes),
                )
            };
            let Some(bits) = &self.filter else {
                while at < hay.len() {
                    if let Some(m) = anchored_at(at) {
                        at = m.end();
                        return Some(m);
                    }
                    at += 1;
                }
                return None;
            };
            let s = self.stride;
            let mut q = at.div_ceil(s) * s;
            while q + 4 <= hay.len() {
                let h = filter_hash(&hay[q..q + 4]);
                if bits[h / 64] & (1 << (h % 64)) != 0 {
                    for p in (q + 1).saturating_sub(s).max(at)..=q {
                        if let Some(m) = anchored_at(p) {
                            at = m.end();
                            return Some(m);
                        }
                    }
                }
                q += s;
            }
            at = hay.len();
            None
        })
    }

    /// Whether `bytes` are the beginning of a pattern (or a whole one).
    fn could_begin(&self, bytes: &[u8]) -> bool {
        let i = self.sorted.partition_point(|p| p.as_slice() < bytes);
        self.sorted.get(i).is_some_and(|p| p.starts_with(bytes))
    }

    /// The earliest position from which the end of `buf` could still grow into a pattern.
    fn hold_from(&self, buf: &[u8], from: usize) -> usize {
        let start = from.max(buf.len().saturating_sub(self.longest.saturating_sub(1)));
        (start..buf.len())
            .find(|&p| self.could_begin(&buf[p..]))
            .unwrap_or(buf.len())
    }
}

/// The size of the filter: with a few hundred patterns, about one position in two thousand
/// is looked at closer for nothing.
const FILTER_BITS: usize = 1 << 20;

fn filter_hash(four: &[u8]) -> usize {
    let w = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
    (w.wrapping_mul(0x9E37_79B1) >> 12) as usize
}

/// One stream being redacted: the bytes held back between chunks.
#[derive(Default)]
pub struct Stream {
    pending: Zeroizing<Vec<u8>>,
}

/// What is held back may be the beginning of a value: only its length is shown.
impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Stream {
    /// Adds `chunk`; appends to `out` what is known clean, with every value replaced.
    pub fn feed(&mut self, r: &Redactor, chunk: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(chunk);
        self.process(r, out, false);
    }

    /// The end of the stream: everything held back goes out, values replaced.
    pub fn finish(&mut self, r: &Redactor, out: &mut Vec<u8>) {
        self.process(r, out, true);
    }

    fn process(&mut self, r: &Redactor, out: &mut Vec<u8>, end: bool) {
        let buf = &self.pending;
        if r.matcher.is_none() {
            out.extend_from_slice(buf);
            self.pending.clear();
            return;
        }
        let hold = if end { buf.len() } else { r.hold_from(buf, 0) };
        let mut emitted = 0;
        for m in r.matches(buf.as_slice()) {
            if m.start() >= hold {
                break;
            }
            out.extend_from_slice(&buf[emitted..m.start()]);
            out.extend_from_slice(&r.replacements[m.pattern().as_usize()]);
            emitted = m.end();
        }
        let clean_to = hold.max(emitted);
        out.extend_from_slice(&buf[emitted..clean_to]);
        let rest = Zeroizing::new(buf[clean_to..].to_vec());
        self.pending = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(pairs: &[(&str, &str)]) -> Redactor {
        Redactor::new(pairs.iter().copied(), 5).0
    }

    fn through(r: &Redactor, chunks: &[&[u8]]) -> String {
        let mut s = Stream::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(r, c, &mut out);
        }
        s.finish(r, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn a_value_split_at_every_offset_is_caught() {
        let r = redactor(&[("TOKEN", "s3cr3t-token")]);
        let text = b"before s3cr3t-token after s3cr3t-token";
        for cut in 0..=text.len() {
            for cut2 in cut..=text.len() {
                let out = through(&r, &[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                assert_eq!(
                    out, "before [redacted:TOKEN] after [redacted:TOKEN]",
                    "cuts {cut} {cut2}"
                );
            }
        }
    }

    #[test]
    fn encodings_longest_and_short_values() {
        let (r, short) = Redactor::new(
            [
                ("A", "abcdefgh"),
                ("AB", "abcdefgh-and-more"),
                ("PW", "p@ss/w:rd"),
                ("PIN", "1234"),
            ],
            5,
        );
        assert_eq!(short, ["PIN"]);
        assert_eq!(
            through(&r, &[b"x abcdefgh-and-more y abcdefgh z 1234"]),
            "x [redacted:AB] y [redacted:A] z 1234"
        );
        assert_eq!(
            through(
                &r,
                &[b"url p%40ss%2Fw%3Ard b64 cEBzcy93OnJk json \"p@ss/w:rd\""]
            ),
            "url [redacted:PW] b64 [redacted:PW] json \"[redacted:PW]\""
        );
    }

    #[test]
    fn the_sampling_filter_finds_what_a_full_search_finds() {
        // Against aho-corasick's own leftmost-longest search of every position.
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..300 {
            let alphabet = b"abcxyz";
            let word = |rng: &mut fastrand::Rng, n: usize| -> String {
                (0..n)
                    .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
                    .collect()
            };
            let count = rng.usize(1..6);
            let values: Vec<String> = (0..count)
                .map(|_| {
                    let n = rng.usize(7..14);
                    word(&mut rng, n)
                })
                .collect();
            let pairs: Vec<(String, String)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("V{i}"), v.clone()))
                .collect();
            let (r, _) = Redactor::new(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())), 6);
            let n = rng.usize(0..200);
            let mut hay = word(&mut rng, n);
            for v in &values {
                let at = rng.usize(..=hay.len());
                hay.insert_str(at, v);
            }
            let full = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(r.patterns())
                .unwrap();
            let want: Vec<(usize, usize)> = full
                .find_iter(hay.as_bytes())
                .map(|m| (m.start(), m.end()))
                .collect();
            let got: Vec<(usize, usize)> = r
                .matches(hay.as_bytes())
                .map(|m| (m.start(), m.end()))
                .collect();
            assert_eq!(got, want, "round {round}: {hay:?} {values:?}");
        }
    }

    #[test]
    fn clean_output_is_not_held_back() {
        let r = redactor(&[("TOKEN", "s3cr3t-token")]);
        let mut s = Stream::default();
        let mut out = Vec::new();
        s.feed(&r, b"Password: ", &mut out);
        assert_eq!(out, b"Password: ", "a prompt must appear at once");
        out.clear();
        s.feed(&r, b"ok s3cr", &mut out);
        assert_eq!(out, b"ok ", "only what could begin a value is held");
    }
}
