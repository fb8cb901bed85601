//! Value detectors: find sensitive substrings in a text value, validating with checksums where a format
//! has one (Luhn for cards, mod 97 for IBANs) so ordinary numbers stay clear.

use serde::Deserialize;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

/// A kind of sensitive value a rule can detect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// E-mail address.
    Email,
    /// Phone number: `+` and 7–15 digits, or a 3-3-4 North American layout.
    Phone,
    /// Payment card number: 13–19 digits, issuer prefix 2–6, Luhn-valid.
    Card,
    /// IBAN: country, check digits and BBAN, mod 97 = 1.
    Iban,
    /// US social security number `AAA-GG-SSSS` (area not 000/666/9xx, group and serial not zero).
    Ssn,
    /// JSON Web Token (three base64url parts, header starting `eyJ`).
    Jwt,
    /// API keys with a well-known prefix and secrets following `Bearer`.
    ApiKey,
    /// PEM private key block.
    PrivateKey,
    /// IPv4 address.
    Ipv4,
    /// IPv6 address.
    Ipv6,
}

impl Detector {
    /// Every detector, in the order the config documents them.
    pub const ALL: [Detector; 10] = [
        Detector::Email,
        Detector::Phone,
        Detector::Card,
        Detector::Iban,
        Detector::Ssn,
        Detector::Jwt,
        Detector::ApiKey,
        Detector::PrivateKey,
        Detector::Ipv4,
        Detector::Ipv6,
    ];

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::Card => "card",
            Detector::Iban => "iban",
            Detector::Ssn => "ssn",
            Detector::Jwt => "jwt",
            Detector::ApiKey => "api_key",
            Detector::PrivateKey => "private_key",
            Detector::Ipv4 => "ipv4",
            Detector::Ipv6 => "ipv6",
        }
    }
}

/// A detected sensitive substring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Byte range in the value.
    pub range: Range<usize>,
    /// What was found.
    pub detector: Detector,
}

/// Which detectors are switched on (a bit per detector, so checks cost one AND).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DetectorSet(u16);

impl DetectorSet {
    /// Adds a detector.
    pub fn insert(&mut self, d: Detector) {
        self.0 |= 1 << d as u16;
    }

    /// True when `d` is on.
    pub fn contains(self, d: Detector) -> bool {
        self.0 & (1 << d as u16) != 0
    }

    /// True when no detector is on.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The detectors in both sets.
    pub const fn intersect(self, other: DetectorSet) -> DetectorSet {
        DetectorSet(self.0 & other.0)
    }

    /// True when some detector is in both sets.
    pub const fn intersects(self, other: DetectorSet) -> bool {
        self.0 & other.0 != 0
    }

    /// The detectors in either set.
    pub const fn union(self, other: DetectorSet) -> DetectorSet {
        DetectorSet(self.0 | other.0)
    }

    /// The set of these detectors.
    pub const fn of(detectors: &[Detector]) -> DetectorSet {
        let mut bits = 0;
        let mut i = 0;
        while i < detectors.len() {
            bits |= 1 << detectors[i] as u16;
            i += 1;
        }
        DetectorSet(bits)
    }
}

/// Detectors that classify whitespace-separated tokens.
const TOKEN_DETECTORS: DetectorSet = DetectorSet::of(&[
    Detector::Email,
    Detector::Jwt,
    Detector::ApiKey,
    Detector::Iban,
    Detector::Ipv4,
    Detector::Ipv6,
]);

/// Detectors that read runs of digits and separators.
const NUMERIC_DETECTORS: DetectorSet =
    DetectorSet::of(&[Detector::Card, Detector::Phone, Detector::Ssn]);

impl FromIterator<Detector> for DetectorSet {
    fn from_iter<I: IntoIterator<Item = Detector>>(iter: I) -> Self {
        let mut s = DetectorSet::default();
        for d in iter {
            s.insert(d);
        }
        s
    }
}

/// Finds sensitive substrings of `text` for the detectors in `on`; findings are sorted and disjoint.
pub fn find(text: &str, on: DetectorSet, out: &mut Vec<Finding>) {
    out.clear();
    if on.is_empty() || text.is_empty() {
        return;
    }
    // One cheap pass rules out the detectors that cannot match; most values need none of them.
    let on = super::candidates::candidates(text.as_bytes(), on);
    if !on.is_empty() {
        scan(text, on, out);
    }
}

/// [`find`] for a value whose candidates [`super::candidates::screen`] has already picked out of the
/// detectors that are on (the screen's result, never the full set: that would skip no scanner).
pub fn find_among(text: &str, candidates: DetectorSet, out: &mut Vec<Finding>) {
    out.clear();
    if !candidates.is_empty() && !text.is_empty() {
        scan(text, candidates, out);
    }
}

/// Runs the scanners `on` needs over `text`, then keeps the first of overlapping findings.
fn scan(text: &str, on: DetectorSet, out: &mut Vec<Finding>) {
    if on.contains(Detector::PrivateKey) {
        find_private_keys(text, out);
    }
    if on.intersects(TOKEN_DETECTORS) {
        find_in_tokens(text, on, out);
    }
    if on.intersects(NUMERIC_DETECTORS) {
        find_in_numeric_runs(text, on, out);
    }
    if on.contains(Detector::Iban) {
        find_spaced_ibans(text, out);
    }
    if out.len() > 1 {
        out.sort_by_key(|f| f.range.start);
        // Keep the first of overlapping findings; the earlier passes are the more specific ones.
        let mut end = 0;
        out.retain(|f| {
            let keep = f.range.start >= end;
            if keep {
                end = f.range.end;
            }
            keep
        });
    }
}

/// IBANs as printed, in groups of four after single spaces (`GB82 WEST 1234 5698 7654 32`), which
/// the token scan sees one group at a time. The longest run of groups that checks out is taken (a
/// word of four capitals may follow an IBAN whose last group is full).
fn find_spaced_ibans(text: &str, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let iban_char = |c: u8| c.is_ascii_digit() || c.is_ascii_uppercase();
    let mut i = 0;
    while i + 5 <= b.len() {
        let starts = b[i].is_ascii_uppercase()
            && b[i + 1].is_ascii_uppercase()
            && b[i + 2].is_ascii_digit()
            && b[i + 3].is_ascii_digit()
            && b[i + 4] == b' '
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric());
        if !starts {
            i += 1;
            continue;
        }
        // Ends of the groups after the first: at most 30 characters more (34 in all).
        let mut ends = [0usize; 8];
        let (mut n, mut end) = (0, i + 4);
        while n < ends.len() && b.get(end) == Some(&b' ') {
            let from = end + 1;
            let mut e = from;
            while e < b.len() && e - from < 4 && iban_char(b[e]) {
                e += 1;
            }
            if e == from || (e < b.len() && b[e].is_ascii_alphanumeric()) {
                break;
            }
            ends[n] = e;
            n += 1;
            end = e;
            if e - from < 4 {
                break; // a short group is the last
            }
        }
        let found = ends[..n]
            .iter()
            .rev()
            .map(|&e| i..e)
            .find(|r| is_iban(&text[r.clone()]) && !overlaps(out, r));
        match found {
            Some(range) => {
                i = range.end;
                out.push(Finding {
                    range,
                    detector: Detector::Iban,
                });
            }
            None => i += 1,
        }
    }
}

fn overlaps(found: &[Finding], r: &Range<usize>) -> bool {
    found
        .iter()
        .any(|f| f.range.start < r.end && r.start < f.range.end)
}

fn find_private_keys(text: &str, out: &mut Vec<Finding>) {
    let mut from = 0;
    while let Some(start) = find_marker(text, from, "BEGIN ") {
        let header_end = text[start + 11..].find("-----").map(|j| start + 11 + j + 5);
        let Some(header_end) = header_end else { break };
        if !text[start..header_end]
            .to_ascii_uppercase()
            .contains("PRIVATE KEY")
        {
            from = header_end;
            continue;
        }
        // Without an END line the rest of the value is the key: mask to the end rather than leak it.
        let end = match find_marker(text, header_end, "END ") {
            Some(e) => text[e + 9..]
                .find("-----")
                .map(|k| e + 9 + k + 5)
                .unwrap_or(text.len()),
            None => text.len(),
        };
        out.push(Finding {
            range: start..end,
            detector: Detector::PrivateKey,
        });
        from = end;
    }
}

/// The next `-----WORD` from byte `from`, the word in any case (PEM armour is upper case, but a key
/// pasted through a lower-casing tool is still a key).
fn find_marker(text: &str, mut from: usize, word: &str) -> Option<usize> {
    while let Some(i) = text.get(from..)?.find("-----") {
        let at = from + i;
        let after = at + 5;
        if text
            .as_bytes()
            .get(after..after + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word.as_bytes()))
        {
            return Some(at);
        }
        from = after;
    }
    None
}

/// ASCII bytes that end a token (the rest are the non-ASCII whitespace [`separator_len`] decodes).
const fn ascii_separators() -> [bool; 128] {
    let mut t = [false; 128];
    let mut c = 0;
    while c < 128 {
        t[c] = matches!(
            c as u8,
            b' ' | b'\t'
                | b'\n'
                | 0x0b
                | 0x0c
                | b'\r'
                | b','
                | b';'
                | b'('
                | b')'
                | b'['
                | b']'
                | b'{'
                | b'}'
                | b'<'
                | b'>'
                | b'"'
                | b'\''
                | b'`'
                | b'='
                | b'|'
        );
        c += 1;
    }
    t
}

pub(super) static ASCII_SEPARATORS: [bool; 128] = ascii_separators();

/// The length of the token separator starting at byte `i` of `text` (0 when there is none): an ASCII
/// separator, or any Unicode whitespace. Continuation bytes of a multi-byte character are never one.
fn separator_len(text: &str, i: usize) -> usize {
    let c = text.as_bytes()[i];
    if c < 0x80 {
        return usize::from(ASCII_SEPARATORS[usize::from(c)]);
    }
    match text.get(i..).and_then(|rest| rest.chars().next()) {
        Some(ch) if ch.is_whitespace() => ch.len_utf8(),
        _ => 0,
    }
}

/// Trailing punctuation a sentence puts after a token; `::` (an IPv6 address's tail) is kept.
fn trim_token(raw: &str) -> &str {
    let token = raw.trim_end_matches(['.', '!', '?']);
    if token.ends_with("::") {
        token
    } else {
        token.trim_end_matches([':', '.', '!', '?'])
    }
}

/// Bytes that may end a token: ASCII separators, and every non-ASCII byte (its character may be
/// Unicode whitespace, which [`separator_len`] decides).
const fn token_stops() -> [bool; 256] {
    let ascii = ascii_separators();
    let mut t = [true; 256];
    let mut c = 0;
    while c < 128 {
        t[c] = ascii[c];
        c += 1;
    }
    t
}

static TOKEN_STOPS: [bool; 256] = token_stops();

/// The first separator at or after byte `from` of `text` (a character boundary): its position and
/// length, or the end of `text` and 0.
fn next_separator(text: &str, from: usize) -> (usize, usize) {
    let b = text.as_bytes();
    let mut i = from;
    // Token bytes are passed over with one lookup each; only stops need a closer look.
    while let Some(k) = b[i..].iter().position(|&c| TOKEN_STOPS[usize::from(c)]) {
        i += k;
        let sep = separator_len(text, i);
        if sep > 0 {
            return (i, sep);
        }
        i += 1;
    }
    (b.len(), 0)
}

fn find_in_tokens(text: &str, on: DetectorSet, out: &mut Vec<Finding>) {
    let mut after_bearer = false;
    // `i` is always at a token's start or a separator: the start of `text` or just after a separator.
    let mut i = 0;
    while i < text.len() {
        let start = i;
        let (token_end, sep) = next_separator(text, i);
        i = token_end + sep;
        if token_end == start {
            continue;
        }
        judge_token(text, start..token_end, on, &mut after_bearer, out);
    }
}

/// Classifies the token at `at` in `text`, after a token that left `after_bearer` (`Bearer`, `token`),
/// and pushes what it finds; a token that is nothing whole gets a second look in pieces
/// ([`find_in_pieces`]).
fn judge_token(
    text: &str,
    at: Range<usize>,
    on: DetectorSet,
    after_bearer: &mut bool,
    out: &mut Vec<Finding>,
) {
    let raw = &text[at.clone()];
    let token = trim_token(raw);
    let range = at.start..at.start + token.len();
    if token.is_empty() || overlaps(out, &range) {
        *after_bearer = false;
        return;
    }
    let was_bearer = *after_bearer;
    *after_bearer = token.eq_ignore_ascii_case("bearer") || token.eq_ignore_ascii_case("token");
    if let Some(detector) = classify_token(token, on, was_bearer) {
        out.push(Finding { range, detector });
        return;
    }
    // Non-ASCII characters cut a token only around an `@` (an address glued to `«`, `“`, CJK text):
    // words like `Straße` are left alone, as no piece of them could be anything.
    let has_at = raw.as_bytes().contains(&b'@');
    if raw.bytes().any(|c| match c {
        0x80.. => has_at,
        _ => c == b':' || PIECE_STOPS[usize::from(c)],
    }) && find_in_pieces(raw, at.start, on, out)
    {
        *after_bearer = true;
    }
}

/// Bytes that cut a token into pieces for a second look ([`find_in_pieces`]): URL, path and query
/// punctuation, and a backslash (a JSON or C escape before the value).
const fn piece_stops() -> [bool; 128] {
    let mut t = [false; 128];
    let mut c = 0;
    while c < 128 {
        t[c] = matches!(c as u8, b'/' | b'&' | b'?' | b'#' | b'%' | b'\\');
        c += 1;
    }
    t
}

static PIECE_STOPS: [bool; 128] = piece_stops();

/// Cuts `token` (at `base` in the value) at the bytes `stop` names and at every non-ASCII character (no
/// detector's kind holds one); calls `each` with every non-empty piece and its offset.
fn pieces(token: &str, base: usize, stop: impl Fn(u8) -> bool, mut each: impl FnMut(&str, usize)) {
    let b = token.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c >= 0x80 || stop(c) {
            if i > start {
                each(&token[start..i], base + start);
            }
            start = i + 1;
        }
    }
    if b.len() > start {
        each(&token[start..], base + start);
    }
}

/// A second look at a token that is nothing whole: a value embedded in a URL, a path, a `key:value`
/// or an escape (`mailto:ann@example.com`, `/u/ann@example.com/x`, `?t=eyJ…&s=1`, `10.1.2.3:5432`,
/// `10.1.2.3/24`, `fe80::1%eth0`, `«ann@example.com»`, `\nann@example.com`). The token is cut at URL
/// punctuation and non-ASCII characters and each piece classified; a piece still unmatched is cut at
/// `:` as well (not at first: IPv6 addresses hold colons). True when the last piece is `bearer` or
/// `token` (`Authorization:Bearer`): the next token is then a secret candidate.
fn find_in_pieces(token: &str, base: usize, on: DetectorSet, out: &mut Vec<Finding>) -> bool {
    let mut last_is_bearer = false;
    let mut look = |p: &str, at: usize, out: &mut Vec<Finding>| {
        let p = trim_token(p);
        last_is_bearer = p.eq_ignore_ascii_case("bearer") || p.eq_ignore_ascii_case("token");
        let found = (!p.is_empty())
            .then(|| classify_token(p, on, false))
            .flatten();
        if let Some(detector) = found {
            out.push(Finding {
                range: at..at + p.len(),
                detector,
            });
        }
        found.is_some()
    };
    pieces(
        token,
        base,
        |c| PIECE_STOPS[usize::from(c)],
        |piece, at| {
            if !look(piece, at, out) && piece.contains(':') {
                pieces(
                    piece,
                    at,
                    |c| c == b':',
                    |p, at| {
                        look(p, at, out);
                    },
                );
            }
        },
    );
    last_is_bearer
}

fn classify_token(t: &str, on: DetectorSet, after_bearer: bool) -> Option<Detector> {
    let b = t.as_bytes();
    if on.contains(Detector::Jwt) && is_jwt(t) {
        return Some(Detector::Jwt);
    }
    if on.contains(Detector::ApiKey) && (is_api_key(t) || (after_bearer && is_opaque_secret(t))) {
        return Some(Detector::ApiKey);
    }
    if b.contains(&b'@') {
        return (on.contains(Detector::Email) && is_email(t)).then_some(Detector::Email);
    }
    if on.contains(Detector::Iban) && b.len() >= 15 && is_iban(t) {
        return Some(Detector::Iban);
    }
    if on.contains(Detector::Ipv4)
        && b.first().is_some_and(u8::is_ascii_digit)
        && t.parse::<Ipv4Addr>().is_ok()
    {
        return Some(Detector::Ipv4);
    }
    if on.contains(Detector::Ipv6)
        && b.contains(&b':')
        && t.len() >= 2
        && t.parse::<Ipv6Addr>().is_ok()
    {
        return Some(Detector::Ipv6);
    }
    None
}

/// Byte tables for e-mail addresses: one lookup per byte instead of a chain of comparisons.
const fn email_bytes(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 128 {
        t[c] = (c as u8).is_ascii_alphanumeric();
        c += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// Bytes of an ordinary local part.
static EMAIL_LOCAL: [bool; 256] = email_bytes(b"._%+-!#$&*/?^~");
/// Bytes of a domain label.
static EMAIL_LABEL: [bool; 256] = email_bytes(b"-");

/// `local@domain.tld` with an ordinary local part and a dotted domain of letters, digits and hyphens.
pub fn is_email(t: &str) -> bool {
    let b = t.as_bytes();
    let Some(at) = b.iter().position(|&c| c == b'@') else {
        return false;
    };
    let (local, domain) = (&b[..at], &b[at + 1..]);
    (1..=64).contains(&local.len())
        && local.iter().all(|&c| EMAIL_LOCAL[usize::from(c)])
        && is_email_domain(domain)
}

/// Dot-separated labels of letters, digits and inner hyphens, at least two, the last (the top-level
/// domain) two or more letters.
fn is_email_domain(d: &[u8]) -> bool {
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in d.split(|&c| c == b'.') {
        let (Some(&first), Some(&end)) = (label.first(), label.last()) else {
            return false;
        };
        if first == b'-' || end == b'-' || !label.iter().all(|&c| EMAIL_LABEL[usize::from(c)]) {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
}

/// The Luhn checksum over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// A card number: 13–19 digits, an issuer prefix (2–6) and a valid Luhn checksum.
pub fn is_card_digits(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len()) && matches!(digits[0], b'2'..=b'6') && luhn_valid(digits)
}

/// An IBAN (spaces allowed): country letters, check digits, 11–30 alphanumerics, mod 97 = 1.
pub fn is_iban(t: &str) -> bool {
    let compact: Vec<u8> = t.bytes().filter(|c| *c != b' ').collect();
    if !(15..=34).contains(&compact.len())
        || !compact[..2].iter().all(u8::is_ascii_uppercase)
        || !compact[2..4].iter().all(u8::is_ascii_digit)
        || !compact[4..]
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return false;
    }
    let mut rem = 0u32;
    for &c in compact[4..].iter().chain(&compact[..4]) {
        if c.is_ascii_digit() {
            rem = (rem * 10 + u32::from(c - b'0')) % 97;
        } else {
            let v = u32::from(c - b'A') + 10;
            rem = (rem * 100 + v) % 97;
        }
    }
    rem == 1
}

/// `AAA-GG-SSSS` with the ranges the SSA never issues excluded.
pub fn is_ssn(t: &str) -> bool {
    let b = t.as_bytes();
    if b.len() != 11 || b[3] != b'-' || b[6] != b'-' {
        return false;
    }
    let digits = |r: Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..3) && digits(4..6) && digits(7..11)) {
        return false;
    }
    let area = &t[0..3];
    area != "000" && area != "666" && b[0] != b'9' && &t[4..6] != "00" && &t[7..11] != "0000"
}

fn is_base64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'=')
}

/// A compact JWS/JWT: `eyJ…` header, payload and signature in base64url.
pub fn is_jwt(t: &str) -> bool {
    if !t.starts_with("eyJ") || t.len() < 20 {
        return false;
    }
    let mut parts = t.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    is_base64url(h) && is_base64url(p) && p.len() >= 4 && (s.is_empty() || is_base64url(s))
}

const KEY_PREFIXES: &[(&str, usize)] = &[
    ("sk_live_", 16),
    ("sk_test_", 16),
    ("rk_live_", 16),
    ("pk_live_", 16),
    ("ghp_", 30),
    ("gho_", 30),
    ("ghs_", 30),
    ("ghu_", 30),
    ("ghr_", 30),
    ("github_pat_", 30),
    ("glpat-", 20),
    ("xoxb-", 20),
    ("xoxp-", 20),
    ("xoxa-", 20),
    ("xapp-", 20),
    ("sk-", 20),
    ("AIza", 35),
    ("SG.", 40),
];

/// A secret with a well-known vendor prefix (Stripe, GitHub, GitLab, Slack, OpenAI, Google, SendGrid, AWS).
pub fn is_api_key(t: &str) -> bool {
    let secret_chars = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
    };
    if t.len() == 20 && (t.starts_with("AKIA") || t.starts_with("ASIA")) {
        return t[4..]
            .bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    }
    KEY_PREFIXES.iter().any(|(p, min_rest)| {
        t.strip_prefix(p)
            .is_some_and(|rest| rest.len() >= *min_rest && secret_chars(rest))
    })
}

/// What follows `Bearer`/`token`: 16+ token characters mixing letters and digits.
fn is_opaque_secret(t: &str) -> bool {
    t.len() >= 16
        && t.bytes().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
        })
        && t.bytes().any(|c| c.is_ascii_digit())
        && t.bytes().any(|c| c.is_ascii_alphabetic())
}

fn is_run_char(c: u8) -> bool {
    c.is_ascii_digit() || matches!(c, b' ' | b'-' | b'.' | b'(' | b')' | b'+')
}

/// Runs of digits with separators: cards (`4111 1111 1111 1111`), phones and SSNs that tokens split up.
fn find_in_numeric_runs(text: &str, on: DetectorSet, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !(b[i].is_ascii_digit() || b[i] == b'+' || b[i] == b'(')
            || (i > 0 && b[i - 1].is_ascii_alphanumeric())
        {
            i += 1;
            continue;
        }
        let start = i;
        // One pass over the run: where it ends, its digits, and where the first separator a card
        // never has (`.`, `(`, `)`, `+`) is.
        let (mut end, mut count, mut non_card_sep) = (i, 0usize, usize::MAX);
        while let Some(&c) = b.get(end).filter(|c| is_run_char(**c)) {
            if c.is_ascii_digit() {
                count += 1;
            } else if !matches!(c, b' ' | b'-') {
                non_card_sep = non_card_sep.min(end);
            }
            end += 1;
        }
        let mut stop = end;
        while stop > start && !b[stop - 1].is_ascii_digit() {
            stop -= 1;
        }
        // A run glued to letters (`abc123`, `123abc`) is an identifier, not a number, unless the
        // letter is a float's exponent: `4.111111111111111e+15` (a float8 as text, in an array,
        // JSON or COPY) is an integer a client reads back whole.
        let glued = stop < b.len() && b[stop].is_ascii_alphanumeric();
        i = end.max(start + 1);
        if glued && on.contains(Detector::Card) {
            if let Some(end) = push_exponent_card(b, start..stop, out) {
                i = end;
                continue;
            }
        }
        if glued || stop == start {
            continue;
        }
        let run = &text[start..stop];
        let range = start..stop;
        if overlaps(out, &range) {
            continue;
        }
        // Separators after the last digit are not part of the run; all its digits are before it.
        let card_layout = non_card_sep >= stop;
        if on.contains(Detector::Card) && card_layout && is_card_run(run, count) {
            out.push(Finding {
                range,
                detector: Detector::Card,
            });
        } else if on.contains(Detector::Ssn) && is_ssn(run) {
            out.push(Finding {
                range,
                detector: Detector::Ssn,
            });
        } else if on.contains(Detector::Phone) && is_phone(run, count) {
            out.push(Finding {
                range,
                detector: Detector::Phone,
            });
        } else {
            find_in_run_windows(text, range, on, out);
        }
    }
}

/// Pushes the card a float in exponent form ending `run` is ([`exponent_card`]), unless a finding
/// already covers it; returns where the float ends, to scan on from there.
fn push_exponent_card(b: &[u8], run: Range<usize>, out: &mut Vec<Finding>) -> Option<usize> {
    let found = exponent_card(b, run.start, run.end)?;
    let end = found.end;
    if !overlaps(out, &found) {
        out.push(Finding {
            range: found,
            detector: Detector::Card,
        });
    }
    Some(end)
}

/// The range of a float in exponent form whose mantissa ends `run` (`start..stop`) and whose value is
/// a card number (`4.111111111111111e+15`, as PostgreSQL prints a float8 of 16 digits or more), when
/// there is one.
fn exponent_card(b: &[u8], start: usize, stop: usize) -> Option<Range<usize>> {
    let mut m = stop;
    while m > start && (b[m - 1].is_ascii_digit() || b[m - 1] == b'.') {
        m -= 1;
    }
    let mantissa = b.get(m..stop)?;
    if !mantissa.first()?.is_ascii_digit() {
        return None;
    }
    if !matches!(b.get(stop), Some(b'e' | b'E')) || b.get(stop + 1) != Some(&b'+') {
        return None;
    }
    let exp_start = stop + 2;
    let mut p = exp_start;
    while p < b.len() && b[p].is_ascii_digit() && p - exp_start < 3 {
        p += 1;
    }
    if p == exp_start
        || b.get(p)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'.')
    {
        return None;
    }
    let exp: usize = std::str::from_utf8(&b[exp_start..p]).ok()?.parse().ok()?;
    let (int, frac) = match mantissa.iter().position(|&c| c == b'.') {
        Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
        None => (mantissa, &mantissa[..0]),
    };
    if frac.contains(&b'.') || exp < frac.len() {
        return None;
    }
    let mut digits = [0u8; 19];
    let mut n = 0;
    let zeros = exp - frac.len();
    for &c in int
        .iter()
        .chain(frac)
        .skip_while(|c| **c == b'0')
        .chain(std::iter::repeat_n(&b'0', zeros.min(19)))
    {
        *digits.get_mut(n)? = c;
        n += 1;
    }
    ((13..=19).contains(&n) && is_card_digits(&digits[..n])).then_some(m..p)
}

/// Most digit groups a number is printed in (`+1 (415) 555 0100 x`, a card in five).
const MAX_GROUPS: usize = 6;

/// A run that is no number as a whole may hold numbers side by side (`id 7 123-45-6789`,
/// `4111111111111111 5500005555555559`, `call 415-555-0100 - 415-555-0101`). From each digit group on,
/// the stretches of up to [`MAX_GROUPS`] groups (and 19 digits) are judged, longest first, each as
/// one number; a found number's groups are not judged again. A card must be laid out as one (one
/// group, groups of four with a shorter last, or 4-6-5 / 4-6-4), so neighbouring numbers that
/// happen to pass Luhn together are not taken for one.
fn find_in_run_windows(text: &str, run: Range<usize>, on: DetectorSet, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut g = run.start;
    loop {
        while g < run.end && !b[g].is_ascii_digit() {
            g += 1;
        }
        if g >= run.end {
            return;
        }
        // A `(` right before the group, or a `+` with nothing alphanumeric before it, starts a
        // phone number (`7+44 20…` is no phone number, as the prefilter reads it).
        let mut start = g;
        while start > run.start
            && (b[start - 1] == b'('
                || (b[start - 1] == b'+' && (start < 2 || !b[start - 2].is_ascii_alphanumeric())))
        {
            start -= 1;
        }
        // One group of digits right after `digit.` is a decimal fraction, not a number of its own
        // (`4.666666666666667` holds no card); groups laid out as a card's (`1.4111 1111 1111 1111`)
        // are no fraction.
        let fraction = g >= 2 && b[g - 1] == b'.' && b[g - 2].is_ascii_digit();
        // Ends and lengths of the groups from `g` on.
        let (mut ends, mut lens, mut n, mut digits, mut p) =
            ([0; MAX_GROUPS], [0; MAX_GROUPS], 0, 0, g);
        while n < MAX_GROUPS && p < run.end {
            let from = p;
            while p < run.end && b[p].is_ascii_digit() {
                p += 1;
            }
            digits += p - from;
            if digits > 19 {
                break;
            }
            (ends[n], lens[n]) = (p, p - from);
            n += 1;
            while p < run.end && !b[p].is_ascii_digit() {
                p += 1;
            }
        }
        let found = (0..n).rev().find_map(|k| {
            let range = start..ends[k];
            if range == run {
                return None; // judged whole already
            }
            let window = &text[range.clone()];
            let count: usize = lens[..=k].iter().sum();
            let detector = if on.contains(Detector::Card)
                && !(fraction && k == 0)
                && card_shaped(&lens[..=k])
                && window
                    .bytes()
                    .all(|c| c.is_ascii_digit() || c == b' ' || c == b'-')
                && is_card_run(window, count)
            {
                Detector::Card
            } else if on.contains(Detector::Ssn) && is_ssn(window) {
                Detector::Ssn
            } else if on.contains(Detector::Phone) && is_phone(window, count) {
                Detector::Phone
            } else {
                return None;
            };
            Some(Finding { range, detector })
        });
        match found {
            Some(f) => {
                g = f.range.end;
                if !overlaps(out, &f.range) {
                    out.push(f);
                }
            }
            // On past this group (digits from `g` on).
            None => {
                g = b[g..run.end]
                    .iter()
                    .position(|c| !c.is_ascii_digit())
                    .map_or(run.end, |i| g + i)
            }
        }
    }
}

/// True when the `count` digits of `run` (13–19 of them, as a card has) are a card number.
fn is_card_run(run: &str, count: usize) -> bool {
    // No card has more than 19 digits: they fit on the stack.
    let mut digits = [0u8; 19];
    if !(13..=digits.len()).contains(&count) {
        return false;
    }
    for (d, c) in digits
        .iter_mut()
        .zip(run.bytes().filter(u8::is_ascii_digit))
    {
        *d = c;
    }
    is_card_digits(&digits[..count])
}

/// Digit group lengths a card is printed in.
fn card_shaped(lens: &[usize]) -> bool {
    match lens {
        [_] => true,
        [4, 6, 5] | [4, 6, 4] => true,
        [first @ .., last] => first.iter().all(|&l| l == 4) && (1..=4).contains(last),
        [] => false,
    }
}

/// `+` followed by 7–15 digits, or ten digits laid out 3-3-4 with separators (`(415) 555-0100`).
pub fn is_phone(run: &str, digit_count: usize) -> bool {
    if let Some(rest) = run.strip_prefix('+') {
        return (7..=15).contains(&digit_count)
            && rest
                .bytes()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == b'(');
    }
    if digit_count != 10 {
        return false;
    }
    let groups: Vec<usize> = run
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .map(str::len)
        .collect();
    groups == [3, 3, 4]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> DetectorSet {
        Detector::ALL.into_iter().collect()
    }

    fn found(text: &str) -> Vec<(Detector, &str)> {
        let mut out = Vec::new();
        find(text, all(), &mut out);
        out.iter()
            .map(|f| (f.detector, &text[f.range.clone()]))
            .collect()
    }

    #[test]
    fn each_detector_finds_its_kind_in_free_text() {
        let cases: &[(&str, Detector, &str)] = &[
            (
                "mail jane.doe+x@example.co.uk now",
                Detector::Email,
                "jane.doe+x@example.co.uk",
            ),
            ("call +1 415 555 0100.", Detector::Phone, "+1 415 555 0100"),
            ("call (415) 555-0100", Detector::Phone, "(415) 555-0100"),
            (
                "card 4111 1111 1111 1111 exp",
                Detector::Card,
                "4111 1111 1111 1111",
            ),
            (
                "card 5500-0000-0000-0004",
                Detector::Card,
                "5500-0000-0000-0004",
            ),
            (
                "pay DE89370400440532013000 ok",
                Detector::Iban,
                "DE89370400440532013000",
            ),
            ("ssn 123-45-6789", Detector::Ssn, "123-45-6789"),
            // Grouped as a card after a numbered item's `1.`.
            (
                "1.4111 1111 1111 1111",
                Detector::Card,
                "4111 1111 1111 1111",
            ),
            // A float8 of a card's digits, as text, in an array or JSON.
            (
                "{4.111111111111111e+15,2}",
                Detector::Card,
                "4.111111111111111e+15",
            ),
            (
                "{\"k\": 5.1051051051051e+15}",
                Detector::Card,
                "5.1051051051051e+15",
            ),
            (
                "t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
                Detector::Jwt,
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            ),
            (
                "key sk_live_4eC39HqLyjWDarjtT1zdp7dc",
                Detector::ApiKey,
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            ),
            (
                "aws AKIAIOSFODNN7EXAMPLE",
                Detector::ApiKey,
                "AKIAIOSFODNN7EXAMPLE",
            ),
            (
                "Authorization: Bearer abc123def456ghi789",
                Detector::ApiKey,
                "abc123def456ghi789",
            ),
            ("from 192.168.10.4:", Detector::Ipv4, "192.168.10.4"),
            (
                "from fe80::1ff:fe23:4567:890a",
                Detector::Ipv6,
                "fe80::1ff:fe23:4567:890a",
            ),
            // A network ending in `::`, at the end of a sentence, keeps its `::`.
            ("route 2001:db8::.", Detector::Ipv6, "2001:db8::"),
            ("via\u{a0}10.0.0.1\u{2003}ok", Detector::Ipv4, "10.0.0.1"),
        ];
        for (text, detector, expected) in cases {
            assert_eq!(found(text), vec![(*detector, *expected)], "in {text:?}");
        }
    }

    #[test]
    fn values_inside_urls_paths_escapes_and_key_value_pairs_are_found() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        let key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
        let cases: Vec<(String, Detector, &str)> = vec![
            (
                "mailto:ann@example.com".into(),
                Detector::Email,
                "ann@example.com",
            ),
            (
                "Email:ann@example.com".into(),
                Detector::Email,
                "ann@example.com",
            ),
            (
                "see /u/ann@example.com/profile".into(),
                Detector::Email,
                "ann@example.com",
            ),
            (
                "?e=ann@example.com&z=1".into(),
                Detector::Email,
                "ann@example.com",
            ),
            (
                "«ann@example.com»".into(),
                Detector::Email,
                "ann@example.com",
            ),
            (
                "日本ann@example.com日本".into(),
                Detector::Email,
                "ann@example.com",
            ),
            (
                "{\\\"email\\\":\\\"ann@example.com\\\"}".into(),
                Detector::Email,
                "ann@example.com",
            ),
            ("host 10.1.2.3:5432".into(), Detector::Ipv4, "10.1.2.3"),
            ("http://10.1.2.3/path".into(), Detector::Ipv4, "10.1.2.3"),
            ("net 10.1.2.3/24".into(), Detector::Ipv4, "10.1.2.3"),
            ("net 2001:db8::1/64".into(), Detector::Ipv6, "2001:db8::1"),
            ("link fe80::1%eth0".into(), Detector::Ipv6, "fe80::1"),
            (
                format!("cb?access_token={jwt}&state=abc"),
                Detector::Jwt,
                jwt,
            ),
            (format!("/t/{jwt}"), Detector::Jwt, jwt),
            (format!("key={key}&b=1"), Detector::ApiKey, key),
            (format!("KEY:{key}"), Detector::ApiKey, key),
            (
                "Authorization:Bearer abc123def456ghi789".into(),
                Detector::ApiKey,
                "abc123def456ghi789",
            ),
        ];
        for (text, detector, expected) in &cases {
            assert_eq!(found(text), vec![(*detector, *expected)], "in {text:?}");
        }
        // Plain words and paths around nothing stay clear.
        for text in [
            "a/b/c?d=e&f",
            "version 1.2.3/x",
            "user@localhost/path",
            "10.1.2/24",
        ] {
            assert_eq!(found(text), vec![], "in {text:?}");
        }
    }

    #[test]
    fn email_addresses_need_a_real_domain() {
        for (text, ok) in [
            ("a@b.co", true),
            ("first.last+tag@mail.example-corp.com", true),
            ("x@sub.domain.io", true),
            ("a@b", false),
            ("a@b.c", false),
            ("a@b.c0", false),
            ("a@-b.com", false),
            ("a@b-.com", false),
            ("a@b..com", false),
            ("a@.com", false),
            ("a@b.com.", false),
            ("@b.com", false),
            ("a b@c.com", false),
            ("a@b_c.com", false),
            ("a@bü.com", false),
        ] {
            assert_eq!(is_email(text), ok, "{text}");
        }
    }

    /// The per-byte-comparison `is_email` the table version replaced, kept to check it against.
    fn is_email_reference(t: &str) -> bool {
        let Some(at) = t.bytes().position(|c| c == b'@') else {
            return false;
        };
        let (local, domain) = (&t[..at], &t.as_bytes()[at + 1..]);
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._%+-!#$&*/?^~".contains(&c));
        let (mut labels, mut start) = (0, 0);
        for i in 0..=domain.len() {
            if i < domain.len() && domain[i] != b'.' {
                if !(domain[i].is_ascii_alphanumeric() || domain[i] == b'-') {
                    return false;
                }
                continue;
            }
            let label = &domain[start..i];
            if label.is_empty() || label[0] == b'-' || label[label.len() - 1] == b'-' {
                return false;
            }
            labels += 1;
            if i == domain.len() {
                return local_ok
                    && labels >= 2
                    && label.len() >= 2
                    && label.iter().all(u8::is_ascii_alphabetic);
            }
            start = i + 1;
        }
        false
    }

    #[test]
    fn table_driven_email_check_agrees_with_the_reference() {
        let (longest, too_long) = ("l".repeat(64), "l".repeat(65));
        let parts = [
            "",
            "a",
            "A1",
            "jane.doe+x",
            "x_y",
            "a b",
            "ü",
            "é",
            "-",
            "-a",
            "a-",
            "a-b",
            ".",
            "..",
            "co",
            "c0",
            "com",
            "c",
            "@",
            "x\u{0}",
            longest.as_str(),
            too_long.as_str(),
        ];
        for local in parts {
            for d1 in parts {
                for d2 in parts {
                    for text in [
                        format!("{local}@{d1}"),
                        format!("{local}@{d1}.{d2}"),
                        format!("{local}@{d1}.{d2}.com"),
                        format!("{local}@{d1}-{d2}.io"),
                    ] {
                        assert_eq!(is_email(&text), is_email_reference(&text), "{text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn private_key_block_is_found_whole_and_unterminated_block_to_the_end() {
        let pem = "x -----BEGIN RSA PRIVATE KEY-----\nMIIE\nabc\n-----END RSA PRIVATE KEY----- y";
        let f = found(pem);
        assert_eq!(f.len(), 1);
        assert!(f[0].1.starts_with("-----BEGIN") && f[0].1.ends_with("KEY-----"));
        let cut = "-----BEGIN PRIVATE KEY-----\nMIIE";
        assert_eq!(found(cut), vec![(Detector::PrivateKey, cut)]);
        assert!(found("-----BEGIN CERTIFICATE-----\nMIIE\n-----END CERTIFICATE-----").is_empty());
        // Lower-cased armour is still a key, found whole.
        let lower = "k: -----begin rsa private key-----\nmiie\n-----end rsa private key----- done";
        let f = found(lower);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].1.starts_with("-----begin") && f[0].1.ends_with("key-----"));
    }

    #[test]
    fn numbers_side_by_side_in_one_run_are_found_each() {
        for (text, want) in [
            ("id 7 123-45-6789", vec![(Detector::Ssn, "123-45-6789")]),
            ("123-45-6789 2024", vec![(Detector::Ssn, "123-45-6789")]),
            (
                "4111111111111111 5500005555555559",
                vec![
                    (Detector::Card, "4111111111111111"),
                    (Detector::Card, "5500005555555559"),
                ],
            ),
            (
                "2024-01-05 4111111111111111",
                vec![(Detector::Card, "4111111111111111")],
            ),
            (
                "paid 12.50 4111 1111 1111 1111",
                vec![(Detector::Card, "4111 1111 1111 1111")],
            ),
            (
                "4111111111111111 123",
                vec![(Detector::Card, "4111111111111111")],
            ),
            (
                "call 415-555-0100 - 415-555-0101",
                vec![
                    (Detector::Phone, "415-555-0100"),
                    (Detector::Phone, "415-555-0101"),
                ],
            ),
            (
                "ref 12 (415) 555-0100",
                vec![(Detector::Phone, "(415) 555-0100")],
            ),
        ] {
            assert_eq!(found(text), want, "{text:?}");
        }
        // Neighbouring numbers are not one card because together they pass Luhn.
        for text in [
            "50 4111 1111 1111",
            "12 34 5678 9012 3456",
            "2024 05 09 1234",
        ] {
            assert!(
                !found(text).iter().any(|(d, _)| *d == Detector::Card),
                "{text:?}: {:?}",
                found(text)
            );
        }
    }

    #[test]
    fn ibans_printed_in_groups_of_four_are_found() {
        for (text, iban) in [
            ("GB82 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 32"),
            (
                "pay to DE89 3704 0044 0532 0130 00 today",
                "DE89 3704 0044 0532 0130 00",
            ),
            ("NL91 ABNA 0417 1643 00 EUR", "NL91 ABNA 0417 1643 00"),
            (
                "iban: FR14 2004 1010 0505 0001 3M02 606",
                "FR14 2004 1010 0505 0001 3M02 606",
            ),
        ] {
            assert_eq!(found(text), vec![(Detector::Iban, iban)], "{text:?}");
        }
        for text in ["GB82 WEST 1234 5698 7654 33", "AB12 CDEF GHIJ"] {
            assert_eq!(found(text), vec![], "{text:?} must stay clear");
        }
    }

    #[test]
    fn numbers_failing_their_checksums_stay_clear() {
        for text in [
            "4111 1111 1111 1112", // Luhn fails
            "4.666666666666667",   // a fraction that passes Luhn is no card
            "512.6666666666666",
            "{4.666666666666667,1.5e+20}",
            "4.111111111111112e+15", // Luhn fails
            "4.111111111111111e+05", // a float of six digits
            "4.111111111111111e-15",
            "1234567890123452",            // Luhn-valid, but 1 is no issuer prefix
            "order 9780306406157 shipped", // ISBN-13, prefix 9
            "DE89370400440532013001",      // IBAN check digits wrong
            "000-12-3456",                 // never-issued SSN area
            "123-00-4567",
            "1700000000", // epoch seconds: ten digits without a phone layout
            "2024-01-15 10:30:00",
            "v1.2.3",
            "999.1.1.1",
            "12:30:45",
            "user@localhost",
            "eyJnotajwt",
            "Bearer short",
            "sk-short",
        ] {
            assert_eq!(found(text), vec![], "{text:?} must stay clear");
        }
    }

    #[test]
    fn luhn_and_mod97_match_known_vectors() {
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b"79927398710"));
        assert!(is_iban("GB82 WEST 1234 5698 7654 32"));
        assert!(!is_iban("GB82 WEST 1234 5698 7654 33"));
    }

    #[test]
    fn multibyte_text_around_findings_keeps_char_boundaries() {
        let text = "Grüße an josé@example.com — Karte 4111111111111111 ✓";
        let f = found(text);
        assert_eq!(f, vec![(Detector::Card, "4111111111111111")]);
        let text = "Grüße an jose@exämple.com und ana@example.com ✓";
        assert_eq!(found(text), vec![(Detector::Email, "ana@example.com")]);
    }

    /// Sensitive values, near misses and ordinary text that the property tests combine.
    const FRAGMENTS: &[&str] = &[
        "jane.doe+x@example.co.uk",
        "josé@example.com",
        "ana@exämple.com",
        "user@localhost",
        "+1 415 555 0100",
        "+44 (20) 7946 0958",
        "(415) 555-0100",
        "415.555.0100",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "4111 1111 1111 1112",
        "5500000000000004",
        "378282246310005",
        "9780306406157",
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "DE89370400440532013001",
        "123-45-6789",
        "078-05-1120",
        "000-12-3456",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "eyJnotajwt",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "sk-abcdefghijklmnopqrstuvwx",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "github_pat_abcdefghijklmnopqrstuvwxyz0123456789",
        "glpat-abcdefghijklmnopqrstuv",
        "xoxb-123456789012-abcdefghijkl",
        "xapp-123456789012-abcdefghijkl",
        "AIzaSyA1234567890abcdefghijklmnopqrstuvw",
        "SG.abcdefghijklmnopqrstuv.wxyz0123456789abcdefghijklmnopq",
        "AKIAIOSFODNN7EXAMPLE",
        "ASIAIOSFODNN7EXAMPLE",
        "Bearer",
        "BeArEr",
        "TOKEN",
        "token:",
        "abc123def456ghi789",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\nabc\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\nMIIE",
        "-----BEGIN CERTIFICATE-----",
        "192.168.10.4",
        "999.1.1.1",
        "10.0.0.1/32",
        "fe80::1ff:fe23:4567:890a",
        "::1",
        "1:2:3:4:5:6:7:8",
        "::ffff:1.2.3.4",
        "12:30:45",
        "2026-05-09 21:35:35.123456+00",
        "1700000000",
        "v1.2.3",
        "c4ca4238a0b923820dcc509a6f75849b",
        "Grüße aus Köln",
        "note number 1000 about order 7000",
        "✓",
        "—",
        "",
    ];

    const SEPARATORS: &[&str] = &[
        " ", ", ", "\n", "=", ":", ": ", "—", "ü", "(", ")", "\"", "'", "", ".", "-", "+", "a", "7",
    ];

    /// Every detector set the tests try: all, none but one, and each alone.
    fn detector_sets() -> Vec<DetectorSet> {
        let mut sets = vec![all()];
        for d in Detector::ALL {
            sets.push([d].into_iter().collect());
            sets.push(Detector::ALL.into_iter().filter(|x| *x != d).collect());
        }
        sets
    }

    /// `find` (with its prefilter) must report exactly what every scanner run unconditionally reports.
    fn assert_prefilter_keeps_findings(text: &str) {
        for on in detector_sets() {
            let (mut got, mut want) = (Vec::new(), Vec::new());
            find(text, on, &mut got);
            scan(text, on, &mut want);
            assert_eq!(
                got, want,
                "prefilter changed the findings in {text:?} for {on:?}"
            );
        }
    }

    /// The byte-by-byte tokenizer `find_in_tokens` replaced, kept to check it against.
    fn find_in_tokens_reference(text: &str, on: DetectorSet, out: &mut Vec<Finding>) {
        let mut after_bearer = false;
        let mut start = None;
        let mut i = 0;
        while i <= text.len() {
            let sep = if i == text.len() {
                1
            } else {
                separator_len(text, i)
            };
            if sep == 0 {
                start.get_or_insert(i);
                i += 1;
                continue;
            }
            let token_end = i;
            i += sep;
            let Some(s) = start.take() else { continue };
            // What a token holds is judged alike; this checks where tokens start and end.
            judge_token(text, s..token_end, on, &mut after_bearer, out);
        }
    }

    /// The numeric-run scanner before it measured runs in one pass, kept to check it against.
    fn find_in_numeric_runs_reference(text: &str, on: DetectorSet, out: &mut Vec<Finding>) {
        let b = text.as_bytes();
        let mut i = 0;
        let mut digits = [0u8; 19];
        while i < b.len() {
            if !(b[i].is_ascii_digit() || b[i] == b'+' || b[i] == b'(')
                || (i > 0 && b[i - 1].is_ascii_alphanumeric())
            {
                i += 1;
                continue;
            }
            let start = i;
            let mut end = i;
            while end < b.len() && is_run_char(b[end]) {
                end += 1;
            }
            let mut stop = end;
            while stop > start && !b[stop - 1].is_ascii_digit() {
                stop -= 1;
            }
            let glued = stop < b.len() && b[stop].is_ascii_alphanumeric();
            i = end.max(start + 1);
            if glued && on.contains(Detector::Card) {
                if let Some(end) = push_exponent_card(b, start..stop, out) {
                    i = end;
                    continue;
                }
            }
            if glued || stop == start {
                continue;
            }
            let run = &text[start..stop];
            let range = start..stop;
            if overlaps(out, &range) {
                continue;
            }
            let mut count = 0;
            for c in run.bytes().filter(u8::is_ascii_digit) {
                if let Some(d) = digits.get_mut(count) {
                    *d = c;
                }
                count += 1;
            }
            let card_layout = run
                .bytes()
                .all(|c| c.is_ascii_digit() || c == b' ' || c == b'-');
            let detector = if on.contains(Detector::Card)
                && card_layout
                && count <= digits.len()
                && is_card_digits(&digits[..count])
            {
                Detector::Card
            } else if on.contains(Detector::Ssn) && is_ssn(run) {
                Detector::Ssn
            } else if on.contains(Detector::Phone) && is_phone(run, count) {
                Detector::Phone
            } else {
                find_in_run_windows(text, range, on, out);
                continue;
            };
            out.push(Finding { range, detector });
        }
    }

    #[test]
    fn numeric_runs_agree_with_the_reference() {
        let separators = [" ", "-", ".", "(", ")", "+", " - ", "a", "ü", ""];
        for a in FRAGMENTS {
            for sep in separators {
                for b in FRAGMENTS {
                    let text = format!("{sep}{a}{sep}{b}{sep}");
                    for on in detector_sets() {
                        let (mut got, mut want) = (Vec::new(), Vec::new());
                        find_in_numeric_runs(&text, on, &mut got);
                        find_in_numeric_runs_reference(&text, on, &mut want);
                        assert_eq!(got, want, "{text:?} for {on:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn tokenizer_agrees_with_the_byte_by_byte_reference() {
        let separators = [
            " ", "\u{a0}", "\u{2003}", "\u{3000}", "—", "ü", ",", "\t", "",
        ];
        for a in FRAGMENTS {
            for sep in separators {
                for b in FRAGMENTS {
                    let text = format!("{sep}{a}{sep}{b}{sep}");
                    let (mut got, mut want) = (Vec::new(), Vec::new());
                    find_in_tokens(&text, all(), &mut got);
                    find_in_tokens_reference(&text, all(), &mut want);
                    assert_eq!(got, want, "{text:?}");
                }
            }
        }
    }

    #[test]
    fn prefilter_drops_no_finding_of_any_fragment_or_pair() {
        for a in FRAGMENTS {
            assert_prefilter_keeps_findings(a);
            for b in FRAGMENTS {
                for sep in [" ", "—", ""] {
                    assert_prefilter_keeps_findings(&format!("{a}{sep}{b}"));
                }
            }
        }
    }

    #[test]
    fn prefilter_drops_no_finding_in_generated_values() {
        // A fixed linear congruential generator: the same 20,000 values on every run.
        let mut next = crate::masking::fixed_sequence(0x2545_f491_4f6c_dd1du64);
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..1 + next(4) {
                text.push_str(SEPARATORS[next(SEPARATORS.len())]);
                let fragment = FRAGMENTS[next(FRAGMENTS.len())];
                // Cut some fragments short (at a char boundary) to make near misses.
                let cut = if next(3) == 0 {
                    let mut at = next(fragment.len() + 1);
                    while !fragment.is_char_boundary(at) {
                        at -= 1;
                    }
                    at
                } else {
                    fragment.len()
                };
                text.push_str(&fragment[..cut]);
            }
            assert_prefilter_keeps_findings(&text);
        }
    }

    #[test]
    fn every_detector_still_catches_its_kind_behind_the_prefilter() {
        let cases: &[(&str, Detector)] = &[
            ("Grüße, jane.doe+x@example.co.uk ✓", Detector::Email),
            ("tel:+44 (20) 7946 0958", Detector::Phone),
            ("Rückruf 415.555.0100 bitte", Detector::Phone),
            ("Karte—4111-1111-1111-1111—ok", Detector::Card),
            ("amex 378282246310005", Detector::Card),
            ("IBAN: GB82WEST12345698765432", Detector::Iban),
            ("SSN=078-05-1120", Detector::Ssn),
            (
                "„{\"t\": \"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl\"}",
                Detector::Jwt,
            ),
            ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", Detector::ApiKey),
            ("xoxb-123456789012-abcdefghijkl", Detector::ApiKey),
            ("AIzaSyA1234567890abcdefghijklmnopqrstuvw", Detector::ApiKey),
            ("BeArEr abc123def456ghi789", Detector::ApiKey),
            ("token: abc123def456ghi789", Detector::ApiKey),
            (
                "ключ -----BEGIN PRIVATE KEY-----\nMIIE",
                Detector::PrivateKey,
            ),
            ("host 10.0.0.1, port 5432", Detector::Ipv4),
            ("peer ::ffff:1.2.3.4 ✓", Detector::Ipv6),
            ("peer 1:2:3:4:5:6:7:8", Detector::Ipv6),
        ];
        for (text, detector) in cases {
            let mut out = Vec::new();
            find(text, all(), &mut out);
            assert!(
                out.iter().any(|f| f.detector == *detector),
                "{detector:?} missed in {text:?}: {out:?}"
            );
        }
    }

    #[test]
    fn luhn_failing_numbers_stay_clear_behind_the_prefilter() {
        for text in [
            "4111 1111 1111 1112",
            "4111-1111-1111-1113",
            "Bestellnummer 5500000000000005 ✓",
            "9780306406157",
        ] {
            let mut out = Vec::new();
            find(text, all(), &mut out);
            assert!(out.is_empty(), "{text:?} must stay clear: {out:?}");
        }
    }

    #[test]
    fn detectors_that_are_off_find_nothing() {
        let mut out = Vec::new();
        let only_email: DetectorSet = [Detector::Email].into_iter().collect();
        find("4111111111111111 a@example.com", only_email, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].detector, Detector::Email);
    }
}
