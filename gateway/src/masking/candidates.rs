//! A cheap pass over a value's bytes that rules detectors out before any of them runs.
//!
//! Each detector has a necessary condition: an e-mail needs `@`, a JWT `eyJ`, an IBAN two capitals and
//! two digits in a row, a card 13 digits among digits, spaces and dashes, and so on. [`candidates`]
//! first summarises which kinds of bytes occur (one table lookup per byte), which settles most values
//! (names, amounts, hashes); only then does it run the few targeted scans the summary leaves open, and
//! returns the detectors whose condition holds.
//!
//! **Invariant:** the conditions are *necessary*, never sufficient: a detector left out here would
//! have found nothing in [`super::detect::find`]. The tests in `detect.rs` check this against the full
//! detectors over a table of values.

use super::detect::{Detector, DetectorSet, ASCII_SEPARATORS};

// Byte classes (bits of `CLASS`). DIGIT is bit 0, so a class masked with it counts digits.
const DIGIT: u32 = 1;
const UPPER: u32 = 1 << 1;
const ALNUM: u32 = 1 << 2;
/// Separators inside numeric runs (`is_run_char` minus digits): space, `-`, `.`, `(`, `)`, `+`.
const RUN_SEP: u32 = 1 << 3;
const AT: u32 = 1 << 4;
const COLON: u32 = 1 << 5;
const UNDERSCORE: u32 = 1 << 6;
const DASH: u32 = 1 << 7;
const DOT: u32 = 1 << 8;
/// `J`, of a JWT's `eyJ`.
const J: u32 = 1 << 9;
/// `B`, of a private key's `-----BEGIN`.
const CAPITAL_B: u32 = 1 << 10;
/// `A`, of AWS's `AKIA` / `ASIA` and Google's `AIza`.
const CAPITAL_A: u32 = 1 << 11;
/// `G`, of SendGrid's `SG.`.
const CAPITAL_G: u32 = 1 << 12;
/// `b` or `B`, of `bearer`.
const LETTER_B: u32 = 1 << 13;
/// `k` or `K`, of `token`.
const LETTER_K: u32 = 1 << 14;
/// `+`, before a phone number.
const PLUS: u32 = 1 << 15;
/// A byte of a multi-byte UTF-8 sequence (or an invalid byte): the value needs UTF-8 validation.
const NON_ASCII: u32 = 1 << 16;
// The other letters of `bearer` and `token`, either case (`b` and `k` are above).
const LETTER_T: u32 = 1 << 17;
const LETTER_O: u32 = 1 << 18;
const LETTER_E: u32 = 1 << 19;
const LETTER_N: u32 = 1 << 20;
const LETTER_A: u32 = 1 << 21;
const LETTER_R: u32 = 1 << 22;
const BEARER: u32 = LETTER_B | LETTER_E | LETTER_A | LETTER_R;
const TOKEN: u32 = LETTER_T | LETTER_O | LETTER_K | LETTER_E | LETTER_N;

const fn class_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let mut k = 0;
        if b.is_ascii_digit() {
            k |= DIGIT | ALNUM;
        }
        if b.is_ascii_uppercase() {
            k |= UPPER | ALNUM;
        }
        if b.is_ascii_lowercase() {
            k |= ALNUM;
        }
        if matches!(b, b' ' | b'-' | b'.' | b'(' | b')' | b'+') {
            k |= RUN_SEP;
        }
        k |= match b {
            b'@' => AT,
            b':' => COLON,
            b'_' => UNDERSCORE,
            b'-' => DASH,
            b'.' => DOT,
            b'J' => J,
            b'B' => CAPITAL_B | LETTER_B,
            b'b' => LETTER_B,
            b'A' => CAPITAL_A,
            b'G' => CAPITAL_G,
            b'k' | b'K' => LETTER_K,
            b'+' => PLUS,
            _ => 0,
        };
        k |= match b | 0x20 {
            b't' => LETTER_T,
            b'o' => LETTER_O,
            b'e' => LETTER_E,
            b'n' => LETTER_N,
            b'a' => LETTER_A,
            b'r' => LETTER_R,
            _ => 0,
        } * (b.is_ascii_alphabetic() as u32);
        if b >= 0x80 {
            k |= NON_ASCII;
        }
        t[c] = k;
        c += 1;
    }
    t
}

static CLASS: [u32; 256] = class_table();

// Byte counts, in 8-bit fields of the low half of a `BYTE` entry; values are counted in chunks short
// enough that no field overflows into the next.
const COUNT_DIGIT: u64 = 1;
/// `A`–`Z` or `0`–`9`: the characters of an IBAN.
const COUNT_UPPER_OR_DIGIT: u64 = 1 << 8;
const COUNT_DOT: u64 = 1 << 16;
const COUNT_COLON: u64 = 1 << 24;
const COUNT_CHUNK: usize = u8::MAX as usize;
/// Where a `BYTE` entry keeps its byte class (the low half holds the counts).
const CLASS_SHIFT: u32 = 32;

/// Per byte, its class (`CLASS`) in the high half and its counts in the low half: the first pass ORs
/// entries for the classes and adds them for the counts, so it costs one lookup per byte. (The sum's
/// high half and the OR's low half are meaningless and ignored.)
const fn byte_table() -> [u64; 256] {
    let class = class_table();
    let mut t = [0u64; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let mut k = (class[c] as u64) << CLASS_SHIFT;
        if b.is_ascii_digit() {
            k |= COUNT_DIGIT | COUNT_UPPER_OR_DIGIT;
        }
        if b.is_ascii_uppercase() {
            k |= COUNT_UPPER_OR_DIGIT;
        }
        if b == b'.' {
            k |= COUNT_DOT;
        }
        if b == b':' {
            k |= COUNT_COLON;
        }
        t[c] = k;
        c += 1;
    }
    t
}

static BYTE: [u64; 256] = byte_table();

/// What one pass over a value's bytes found: which byte classes occur and how many of some.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    seen: u32,
    digits: usize,
    upper_or_digit: usize,
    dots: usize,
    colons: usize,
}

impl Summary {
    #[inline(always)]
    fn of(b: &[u8]) -> Summary {
        // Most values fit one count chunk.
        if b.len() <= COUNT_CHUNK {
            return Summary::of_chunk(b);
        }
        let mut s = Summary::default();
        for chunk in b.chunks(COUNT_CHUNK) {
            let c = Summary::of_chunk(chunk);
            s.seen |= c.seen;
            s.digits += c.digits;
            s.upper_or_digit += c.upper_or_digit;
            s.dots += c.dots;
            s.colons += c.colons;
        }
        s
    }

    /// [`Summary::of`] a value of at most [`COUNT_CHUNK`] bytes.
    #[inline(always)]
    fn of_chunk(chunk: &[u8]) -> Summary {
        let (mut seen, mut counts) = (0u64, 0u64);
        // Four bytes per step: independent lookups, and a quarter of the loop overhead.
        let mut quads = chunk.chunks_exact(4);
        for q in &mut quads {
            let (e0, e1) = (BYTE[usize::from(q[0])], BYTE[usize::from(q[1])]);
            let (e2, e3) = (BYTE[usize::from(q[2])], BYTE[usize::from(q[3])]);
            seen |= (e0 | e1) | (e2 | e3);
            // Wrapping: the high halves (class bits) overflow harmlessly.
            counts = counts.wrapping_add(e0.wrapping_add(e1).wrapping_add(e2.wrapping_add(e3)));
        }
        for &c in quads.remainder() {
            let e = BYTE[usize::from(c)];
            seen |= e;
            counts = counts.wrapping_add(e);
        }
        let field = |shift: u32| ((counts >> shift) & 0xff) as usize;
        Summary {
            seen: (seen >> CLASS_SHIFT) as u32,
            digits: field(0),
            upper_or_digit: field(8),
            dots: field(16),
            colons: field(24),
        }
    }
}

/// The shortest digit run any condition asks about (a phone's 7 digits after a `+`).
const SHORTEST_RUN: usize = 7;

// Word-at-a-time byte tests: a `u64` holds eight bytes; masks have 0x80 in the bytes that pass.
const ONES: u64 = u64::from_le_bytes([1; 8]);
const HIGH: u64 = ONES << 7;
const LOW7: u64 = ONES * 0x7f;

/// The bytes of `x` (each below 0x80) that equal `c`. Exact: no carry crosses a byte.
fn bytes_equal(x: u64, c: u8) -> u64 {
    let z = x ^ (ONES * u64::from(c));
    !((z + LOW7) | z | LOW7)
}

/// The bytes of `x` (each below 0x80) in `lo..=hi` (both below 0x80).
fn bytes_between(x: u64, lo: u8, hi: u8) -> u64 {
    let at_least_lo = x + ONES * u64::from(0x80 - lo);
    let above_hi = x + ONES * u64::from(0x7f - hi);
    at_least_lo & !above_hi & HIGH
}

/// How many bytes a mask has.
fn count_bytes(mask: u64) -> usize {
    ((mask >> 7).wrapping_mul(ONES) >> 56) as usize
}

/// The most digits in one run of digits and separators (`is_run_char`), exact when it is at least
/// [`SHORTEST_RUN`]; below that it may read lower (every condition compares it with that or more).
fn max_digit_run(b: &[u8]) -> usize {
    let (mut run, mut max_run) = (0usize, 0usize);
    // Eight bytes at a time: masks of the digits and of the bytes that end a run.
    let mut words = b.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        // Non-ASCII bytes end runs; the tests see only the low seven bits of the others.
        let non_ascii = x & HIGH;
        let y = x & LOW7;
        let digits = bytes_between(y, b'0', b'9') & !non_ascii;
        // Space, and `(`–`.` but for `*` and `,`: the separators of `is_run_char`.
        let separators = (bytes_equal(y, b' ')
            | (bytes_between(y, b'(', b'.') & !bytes_equal(y, b'*') & !bytes_equal(y, b',')))
            & !non_ascii;
        let breaks = HIGH & !(digits | separators);
        if breaks == 0 {
            run += count_bytes(digits);
            continue;
        }
        // The digits before the word's first break end the current run; those after its last
        // start the next. A run between two breaks of one word has at most six digits.
        let first = breaks.trailing_zeros();
        run += count_bytes(digits & ((1u64 << first) - 1));
        max_run = max_run.max(run);
        let last = 63 - breaks.leading_zeros();
        run = count_bytes(digits.checked_shr(last + 1).unwrap_or(0));
    }
    max_run = max_run.max(run);
    // Branch-free: the run count drops to zero outside a run.
    for &c in words.remainder() {
        let k = CLASS[c as usize];
        run = (run + (k & DIGIT) as usize) * usize::from(k & (DIGIT | RUN_SEP) != 0);
        max_run = max_run.max(run);
    }
    max_run
}

/// The outcome of [`screen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Screen {
    /// The detectors that could find something (as [`candidates`] returns them).
    pub candidates: DetectorSet,
    /// True when every byte is ASCII, so the value is valid UTF-8 without further checking.
    pub ascii: bool,
}

fn is(b: u8, class: u32) -> bool {
    CLASS[b as usize] & class != 0
}

/// True when the bytes before `i` are `pat`.
fn before(b: &[u8], i: usize, pat: &[u8]) -> bool {
    i >= pat.len() && &b[i - pat.len()..i] == pat
}

/// True when `needle` occurs in `hay`; `fold` ignores ASCII case (`needle` is then lower-case letters).
fn contains(hay: &[u8], needle: &[u8], fold: bool) -> bool {
    debug_assert!(!fold || needle.iter().all(u8::is_ascii_lowercase));
    let Some(last) = hay.len().checked_sub(needle.len()) else {
        return false;
    };
    // Folding sets the lower-case bit; a lower-case needle letter then matches either case.
    let fold_bit = if fold { 0x20 } else { 0 };
    let first = needle[0];
    let at = |i: usize| {
        hay[i..i + needle.len()]
            .iter()
            .zip(needle)
            .all(|(c, n)| c | fold_bit == *n)
    };
    // Eight bytes at a time: the bytes of a word that can start the needle are the zero bytes of
    // `word ^ first`, found exactly with carry-free arithmetic; only those are compared further.
    // Most values hold few or none.
    let (fold_word, first_word) = (ONES * u64::from(fold_bit), ONES * u64::from(first));
    let starts = last + 1;
    let mut base = 0;
    while base < starts {
        // The word at `base`; past the end of `hay`, zero padding.
        let mut bytes = [0; 8];
        match hay.get(base..base + 8) {
            Some(word) => bytes.copy_from_slice(word),
            None => bytes[..hay.len() - base].copy_from_slice(&hay[base..]),
        }
        let x = (u64::from_le_bytes(bytes) | fold_word) ^ first_word;
        // 0x80 in each byte of `x` that is zero, nothing elsewhere (no carry crosses a byte).
        let mut zeros = !(((x & LOW7) + LOW7) | x | LOW7);
        if starts - base < 8 {
            // Bytes too close to the end to start the needle (and padding) are no start.
            zeros &= (1u64 << (8 * (starts - base))) - 1;
        }
        while zeros != 0 {
            if at(base + (zeros.trailing_zeros() / 8) as usize) {
                return true;
            }
            zeros &= zeros - 1;
        }
        base += 8;
    }
    false
}

/// The detectors in `on` that could find something in `b`; every other detector would find nothing.
pub fn candidates(b: &[u8], on: DetectorSet) -> DetectorSet {
    screen(b, on).candidates
}

/// [`candidates`], and whether `b` is all ASCII (one pass serves both, so a value that no detector
/// can match needs no separate UTF-8 validation when it is ASCII).
#[inline]
pub fn screen(b: &[u8], on: DetectorSet) -> Screen {
    let summary = Summary::of(b);
    Screen {
        candidates: if on.is_empty() {
            DetectorSet::default()
        } else {
            candidates_from(b, on, summary)
        },
        ascii: summary.seen & NON_ASCII == 0,
    }
}

#[inline(always)]
fn candidates_from(b: &[u8], on: DetectorSet, summary: Summary) -> DetectorSet {
    let Summary {
        seen,
        digits,
        upper_or_digit,
        dots,
        colons,
    } = summary;
    // Most values (words, amounts, hashes, dates) meet no detector's condition; one test settles them.
    // Every condition below needs one of: an `@`, a capital, `_` or `-` (e-mail, JWT, private key,
    // IBAN, vendor key prefixes, SSN), 3 dots (IPv4), 2 colons (IPv6), 10 digits, or 7 and a `+`
    // (card, phone), or a digit in 22+ bytes with the `k` of `token` or the `r` of `bearer`.
    if seen & (AT | UPPER | UNDERSCORE | DASH) == 0
        && dots < 3
        && colons < 2
        && digits < 10
        && (digits < 7 || seen & PLUS == 0)
        && !(digits > 0 && b.len() >= 22 && seen & (LETTER_K | LETTER_R) != 0)
        && !(digits >= 2 && seen & PLUS != 0 && seen & LETTER_E != 0)
    {
        return DetectorSet::default();
    }
    // A card has 13 digits in one run, a phone 7 (after a `+`) or 10, an SSN 9: with fewer digits
    // in the whole value, no run need be measured.
    let numeric = (on.contains(Detector::Card) && digits >= 13)
        || (on.contains(Detector::Phone) && (digits >= 10 || (digits >= 7 && seen & PLUS != 0)))
        || (on.contains(Detector::Ssn) && digits >= 9 && seen & DASH != 0);
    let max_run = if numeric { max_digit_run(b) } else { 0 };
    let mut found = DetectorSet::default();
    let mut check = |d: Detector, possible: bool| {
        if possible {
            found.insert(d);
        }
    };
    // Each condition is evaluated only for detectors that are on (`&&` short-circuits).
    let on_ = |d: Detector| on.contains(d);
    check(Detector::Email, on_(Detector::Email) && seen & AT != 0);
    check(
        Detector::Jwt,
        on_(Detector::Jwt) && seen & J != 0 && seen & DOT != 0 && contains(b, b"eyJ", false),
    );
    check(
        Detector::PrivateKey,
        on_(Detector::PrivateKey)
            && seen & DASH != 0
            && contains(b, b"-----", false)
            && contains(b, b"begin", true),
    );
    // `AA00` starts every IBAN, a token of 15 or more capitals and digits.
    check(
        Detector::Iban,
        on_(Detector::Iban)
            && seen & UPPER != 0
            && digits >= 2
            && upper_or_digit >= 15
            && b.windows(4)
                .any(|w| is(w[0], UPPER) && is(w[1], UPPER) && is(w[2], DIGIT) && is(w[3], DIGIT)),
    );
    // Three `d.d` in an IPv4 address.
    check(
        Detector::Ipv4,
        on_(Detector::Ipv4)
            && dots >= 3
            && digits >= 4
            && b.windows(3)
                .filter(|w| w[1] == b'.' && is(w[0], DIGIT) && is(w[2], DIGIT))
                .count()
                >= 3,
    );
    // IPv6 without `::` has seven colons (six before an embedded IPv4 address).
    check(
        Detector::Ipv6,
        on_(Detector::Ipv6) && (colons >= 6 || (colons >= 2 && contains(b, b"::", false))),
    );
    check(
        Detector::ApiKey,
        on_(Detector::ApiKey) && api_key_possible(b, seen, digits),
    );
    // A card has 13 digits in one run, or is a float in exponent form (`4.111111111111111e+15`).
    check(
        Detector::Card,
        on_(Detector::Card)
            && (max_run >= 13
                || (seen & PLUS != 0 && seen & LETTER_E != 0 && has_float_exponent(b))),
    );
    // A phone has 7 digits after a `+`, or 10 laid out 3-3-4; an SSN 9 digits and two dashes.
    let phone = on.contains(Detector::Phone)
        && (max_run >= 10 || (max_run >= SHORTEST_RUN && seen & PLUS != 0));
    let ssn = on.contains(Detector::Ssn) && max_run >= 9 && seen & DASH != 0;
    if phone {
        let exact = numeric_runs(b);
        for (d, possible) in [(Detector::Phone, phone), (Detector::Ssn, ssn)] {
            if possible && exact.contains(d) {
                found.insert(d);
            }
        }
    } else if ssn && has_ssn_layout(b) {
        // Without a phone to look for, the SSN's layout is matched directly: cheaper than
        // measuring every run, and the same condition as `numeric_runs` checks.
        found.insert(Detector::Ssn);
    }
    found
}

/// True when `0e+0` occurs in `b` (either case of `e`): a float's exponent as PostgreSQL prints it.
fn has_float_exponent(b: &[u8]) -> bool {
    b.windows(4).any(|w| {
        w[0].is_ascii_digit() && (w[1] | 0x20) == b'e' && w[2] == b'+' && w[3].is_ascii_digit()
    })
}

/// True when `0-00-0000` occurs in `b`: the end of every SSN (as [`numeric_runs`] finds it).
fn has_ssn_layout(b: &[u8]) -> bool {
    let digit = |c: u8| c.is_ascii_digit();
    b.windows(9).any(|w| {
        w[4] == b'-'
            && w[1] == b'-'
            && digit(w[0])
            && digit(w[2])
            && digit(w[3])
            && w[5..].iter().all(|&c| digit(c))
    })
}

/// A vendor prefix, or `bearer` / `token` followed by room for a secret with a digit.
fn api_key_possible(b: &[u8], seen: u32, digits: usize) -> bool {
    // sk_ rk_ pk_, ghp_ gho_ ghs_ ghu_ ghr_, github_pat_
    let underscore = |i: usize| {
        before(b, i, b"sk")
            || before(b, i, b"rk")
            || before(b, i, b"pk")
            || (i >= 3 && &b[i - 3..i - 1] == b"gh")
            || before(b, i, b"github")
    };
    // glpat- xoxb- xoxp- xoxa- xapp- sk-
    let dash = |i: usize| {
        before(b, i, b"glpat")
            || (i >= 4 && &b[i - 4..i - 1] == b"xox")
            || before(b, i, b"xapp")
            || before(b, i, b"sk")
    };
    (seen & UNDERSCORE != 0
        && b.iter()
            .enumerate()
            .any(|(i, &c)| c == b'_' && underscore(i)))
        || (seen & DASH != 0 && b.iter().enumerate().any(|(i, &c)| c == b'-' && dash(i)))
        || (seen & CAPITAL_G != 0 && seen & DOT != 0 && contains(b, b"SG.", false))
        || (seen & CAPITAL_A != 0
            && (contains(b, b"AIz", false)
                || contains(b, b"AKIA", false)
                || contains(b, b"ASIA", false)))
        // The secret after `token ` / `bearer ` has 16+ characters, one a digit. The words are
        // looked for first: they rule out more values (prose) than the 16-byte run does.
        || (digits > 0
            && b.len() >= 22
            && ((seen & TOKEN == TOKEN && contains(b, b"token", true))
                || (seen & BEARER == BEARER && contains(b, b"bearer", true)))
            && has_run_of(b, 16))
}

/// True when `b` has `n` bytes in a row none of which is an ASCII token separator: the least a token
/// must be, so a value of short words holds no secret after `bearer`. (Non-ASCII bytes count as token
/// bytes, so Unicode whitespace only makes runs longer than the tokens it separates.)
fn has_run_of(b: &[u8], n: usize) -> bool {
    let mut run = 0;
    for &c in b {
        let sep = c < 0x80 && ASCII_SEPARATORS[usize::from(c)];
        run = if sep { 0 } else { run + 1 };
        if run >= n {
            return true;
        }
    }
    false
}

/// Phone and SSN conditions (and the card's) over runs of digits and separators.
fn numeric_runs(b: &[u8]) -> DetectorSet {
    let mut found = DetectorSet::default();
    // Digits in the current run of digits and separators, the current digit group, the two groups
    // before it in the run, and digits since a `+` that can start a phone number.
    let (mut run_digits, mut max_run_digits) = (0usize, 0usize);
    let (mut group, mut prev1, mut prev2) = (0usize, 0usize, 0usize);
    let mut plus_digits: Option<usize> = None;
    for (i, &c) in b.iter().enumerate() {
        let k = CLASS[c as usize];
        if k & DIGIT != 0 {
            group += 1;
            run_digits += 1;
            if let Some(n) = &mut plus_digits {
                *n += 1;
                if *n >= 7 {
                    found.insert(Detector::Phone);
                }
            }
            // `0-00-0000` ends every SSN.
            if group == 4
                && i >= 8
                && b[i - 4] == b'-'
                && is(b[i - 5], DIGIT)
                && is(b[i - 6], DIGIT)
                && b[i - 7] == b'-'
                && is(b[i - 8], DIGIT)
            {
                found.insert(Detector::Ssn);
            }
            continue;
        }
        if group > 0 {
            // A 3-3-4 layout of digit groups is a North American phone number.
            if group == 4 && prev1 == 3 && prev2 == 3 {
                found.insert(Detector::Phone);
            }
            (prev2, prev1, group) = (prev1, group, 0);
        }
        if k & RUN_SEP == 0 {
            if run_digits > 0 {
                max_run_digits = max_run_digits.max(run_digits);
                (run_digits, prev1, prev2) = (0, 0, 0);
            }
            plus_digits = None;
        } else if c == b'+' && (i == 0 || !is(b[i - 1], ALNUM)) {
            // A phone number's `+` starts a run: nothing alphanumeric before it. The first such `+`
            // of a run counts the most digits after it.
            plus_digits.get_or_insert(0);
        }
    }
    if group == 4 && prev1 == 3 && prev2 == 3 {
        found.insert(Detector::Phone);
    }
    if max_run_digits.max(run_digits) >= 13 {
        found.insert(Detector::Card);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<&'static str> {
        let set = candidates(text.as_bytes(), Detector::ALL.into_iter().collect());
        Detector::ALL
            .into_iter()
            .filter(|d| set.contains(*d))
            .map(Detector::as_str)
            .collect()
    }

    #[test]
    fn ordinary_values_meet_no_condition() {
        for text in [
            "",
            "note number 1000 about order 7000",
            "c4ca4238a0b923820dcc509a6f75849b",
            "Grüße aus Köln, Straße 12",
            "1000000",
            "2026-05-09 21:35:35.123456+00",
            "12:30:45",
            "v1.2.3",
            "none",
            "Bearish market",
        ] {
            assert_eq!(names(text), Vec::<&str>::new(), "{text:?}");
        }
    }

    #[test]
    fn each_condition_names_its_detector() {
        let cases: &[(&str, &str)] = &[
            ("a@b", "email"),
            ("+1 415 555 0100", "phone"),
            ("(415) 555-0100", "phone"),
            ("4111 1111 1111 1111", "card"),
            ("DE89370400440532013000", "iban"),
            ("123-45-6789", "ssn"),
            ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "jwt"),
            ("sk_live_x", "api_key"),
            ("AKIAIOSFODNN7EXAMPLE", "api_key"),
            ("BEARER abc123def456ghi789", "api_key"),
            ("-----BEGIN", "private_key"),
            ("10.0.0.1", "ipv4"),
            ("fe80::1", "ipv6"),
            ("1:2:3:4:5:6:7:8", "ipv6"),
        ];
        for (text, want) in cases {
            assert!(names(text).contains(want), "{text:?}: {:?}", names(text));
        }
    }

    #[test]
    fn screen_reports_ascii_only_for_all_ascii_values() {
        let on: DetectorSet = Detector::ALL.into_iter().collect();
        assert!(screen(b"plain words 123", on).ascii);
        assert!(screen(b"", on).ascii);
        assert!(!screen("Grüße".as_bytes(), on).ascii);
        assert!(!screen(b"\xff", on).ascii);
        assert!(!screen(b"\xff", DetectorSet::default()).ascii);
    }

    #[test]
    fn contains_agrees_with_a_plain_search() {
        let plain = |hay: &[u8], needle: &[u8], fold: bool| {
            hay.windows(needle.len()).any(|w| {
                w.iter().zip(needle).all(|(c, n)| {
                    if fold {
                        c.to_ascii_lowercase() == *n
                    } else {
                        c == n
                    }
                })
            })
        };
        let hays: &[&[u8]] = &[
            b"",
            b"b",
            b"bearer",
            b"BEARER",
            b"BeArEr x",
            b"x bearer",
            b"beare",
            b"bbearer",
            b"note number 1000 about order 7000",
            b"Authorization: Bearer abc123def456ghi789",
            b"tokentoken",
            b"toke token",
            b"eyJhbGciOi.eyJ",
            b"ey",
            "Grüße bearer ✓".as_bytes(),
            b"\xffbearer\x80",
            b"-----BEGIN",
            b"fe80::1",
            b"0123456bearer",
            b"01234567bearer",
            b"012345678bearer",
            b"0123456789abcdeftoken",
            b"0123456789abcdeToKeN!",
            b"0123456789abcdeftoke",
            b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbearer",
            b"\xe2\xe2\xe2\xe2\xe2\xe2\xe2\xe2\xe2bearer",
        ];
        let needles: &[(&[u8], bool)] = &[
            (b"bearer", true),
            (b"token", true),
            (b"eyJ", false),
            (b"-----B", false),
            (b"::", false),
            (b"bearer", false),
        ];
        for hay in hays {
            for (needle, fold) in needles {
                assert_eq!(
                    contains(hay, needle, *fold),
                    plain(hay, needle, *fold),
                    "{:?} in {:?} (fold {fold})",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(hay)
                );
            }
        }
    }

    /// The byte-at-a-time run measure the word-at-a-time one replaced.
    fn max_digit_run_reference(b: &[u8]) -> usize {
        let (mut run, mut max_run) = (0usize, 0usize);
        for &c in b {
            let k = CLASS[c as usize];
            run = (run + (k & DIGIT) as usize) * usize::from(k & (DIGIT | RUN_SEP) != 0);
            max_run = max_run.max(run);
        }
        max_run
    }

    #[test]
    fn word_at_a_time_digit_runs_agree_with_the_byte_loop_from_the_shortest_run_up() {
        let agrees = |value: &[u8]| {
            let (got, want) = (max_digit_run(value), max_digit_run_reference(value));
            if want >= SHORTEST_RUN {
                assert_eq!(got, want, "{value:?}");
            } else {
                assert!(got < SHORTEST_RUN, "{value:?}: {got} for {want}");
            }
        };
        // Digits, every separator, bytes next to them, and non-ASCII bytes whose low seven bits
        // are a digit or a separator.
        let alphabet: &[u8] = b"0123456789 -.()+*,/'a:\x00\xb0\xb9\xa0\xad\xae\xa8\xff";
        let mut next = crate::masking::fixed_sequence(0x9e37_79b9_7f4a_7c15u64);
        for _ in 0..50_000 {
            let len = next(40);
            // Mostly digits and separators, so long runs occur.
            let value: Vec<u8> = (0..len)
                .map(|_| match next(4) {
                    0 => alphabet[next(alphabet.len())],
                    _ => b"0123456789 -"[next(12)],
                })
                .collect();
            agrees(&value);
        }
        for value in [
            &b"4111 1111 1111 1111"[..],
            b"+1 (415) 555-0100",
            b"123-45-6789",
            b"c4ca4238a0b923820dcc509a6f75849b",
            b"12345678",
            b"1234567x1234567",
            b"x1234567",
            b"\xb01234567",
        ] {
            agrees(value);
        }
    }

    #[test]
    fn the_ssn_layout_test_agrees_with_the_run_scan() {
        let alphabet = b"0123456789--- +.(a";
        let mut next = crate::masking::fixed_sequence(0x2545_f491_4f6c_dd1du64);
        let mut values: Vec<Vec<u8>> = [
            &b"123-45-6789"[..],
            b"078-05-1120",
            b"x1-23-4567",
            b"1-23-45678",
            b"12-345-6789",
            b"123-45-678",
            b"ssn 123-45-6789.",
            b"2026-05-09 21:35:35.123456+00",
        ]
        .iter()
        .map(|v| v.to_vec())
        .collect();
        for _ in 0..50_000 {
            let len = next(24);
            values.push((0..len).map(|_| alphabet[next(alphabet.len())]).collect());
        }
        for v in values {
            assert_eq!(
                has_ssn_layout(&v),
                numeric_runs(&v).contains(Detector::Ssn),
                "{:?}",
                String::from_utf8_lossy(&v)
            );
        }
    }

    #[test]
    fn counts_survive_values_longer_than_a_count_chunk() {
        // Digits, capitals, dots and colons are counted in 16-bit fields per chunk: a long value
        // must not wrap them and drop a detector.
        let mut long = "x".repeat(COUNT_CHUNK - 3);
        long.push_str(" 4111 1111 1111 1111 GB82WEST12345698765432 10.0.0.1 fe80::1 ");
        long.push_str(&"9".repeat(3 * COUNT_CHUNK));
        let found = candidates(long.as_bytes(), Detector::ALL.into_iter().collect());
        for d in [
            Detector::Card,
            Detector::Iban,
            Detector::Ipv4,
            Detector::Ipv6,
        ] {
            assert!(found.contains(d), "{d:?}");
        }
    }
}
