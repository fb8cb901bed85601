//! Replacement styles: what a masked value (or a detected substring) becomes.

use super::hash_cache::{HashCache, DIGEST};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The text every fully redacted value becomes.
pub const REDACTED: &str = "[redacted]";

/// Style names as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StyleName {
    /// `[redacted]`.
    Redact,
    /// Every character but the last `keep` becomes `*` (all of them when the value is that short).
    KeepLast,
    /// Letters and digits become `*`, punctuation stays; e-mails keep the first letter and the domain,
    /// other values their last four letters or digits when they have at least eight.
    Partial,
    /// `hash:` and 32 hex digits of HMAC-SHA256 under the configured key: stable per value, so joins and
    /// grouping still work.
    Hash,
}

/// A compiled style.
#[derive(Clone)]
pub enum Style {
    /// See [`StyleName::Redact`].
    Redact,
    /// See [`StyleName::KeepLast`].
    KeepLast(usize),
    /// See [`StyleName::Partial`].
    Partial,
    /// See [`StyleName::Hash`]; holds the keyed MAC state, cloned per value.
    Hash(Box<Hmac<Sha256>>),
}

impl Style {
    /// True when both show a value alike (the hash style holds one key per connection).
    pub fn same_as(&self, other: &Style) -> bool {
        match (self, other) {
            (Style::KeepLast(a), Style::KeepLast(b)) => a == b,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl std::fmt::Debug for Style {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Style::Redact => f.write_str("Redact"),
            Style::KeepLast(n) => write!(f, "KeepLast({n})"),
            Style::Partial => f.write_str("Partial"),
            // Never print key material.
            Style::Hash(_) => f.write_str("Hash(<key>)"),
        }
    }
}

impl Style {
    /// A keyed-hash style; any key length is accepted by HMAC.
    pub fn hash(key: &[u8]) -> Style {
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| {
            // HMAC accepts keys of every length; this arm is unreachable but must not panic.
            <Hmac<Sha256> as Mac>::new_from_slice(b"countersign").expect("fixed key")
        });
        Style::Hash(Box::new(mac))
    }

    /// Appends the replacement for `value` to `out`.
    pub fn apply(&self, value: &str, out: &mut String) {
        match self {
            Style::Redact => out.push_str(REDACTED),
            Style::KeepLast(n) => {
                let count = value.chars().count();
                let keep = if count > *n { *n } else { 0 };
                let hidden = count - keep;
                push_stars(out, hidden);
                let kept = value
                    .char_indices()
                    .nth(hidden)
                    .map_or(value.len(), |(i, _)| i);
                out.push_str(&value[kept..]);
            }
            Style::Partial => partial(value, out),
            Style::Hash(mac) => push_hash(&keyed_hash(mac, value), out),
        }
    }

    /// [`Style::apply_cached`] for a value the e-mail detector found: the partial style keeps its
    /// domain without checking again that it is an address.
    pub fn apply_to_email(&self, value: &str, out: &mut String, cache: &mut HashCache) {
        match (self, value.split_once('@')) {
            (Style::Partial, Some((local, domain))) if value.is_ascii() => {
                if let Some(first) = local.chars().next() {
                    out.push(first);
                    push_stars(out, local.len() - 1);
                }
                out.push('@');
                out.push_str(domain);
            }
            _ => self.apply_cached(value, out, cache),
        }
    }

    /// Like [`Style::apply`], taking keyed-hash outputs from `cache` when it has them (and filling it).
    /// The cache must belong to one [`super::Masker`]: its hash styles share one key.
    pub fn apply_cached(&self, value: &str, out: &mut String, cache: &mut HashCache) {
        let Style::Hash(mac) = self else {
            return self.apply(value, out);
        };
        let digest = match cache.get(value.as_bytes()) {
            Some(d) => *d,
            None => {
                let d = keyed_hash(mac, value);
                cache.put(value.as_bytes(), &d);
                d
            }
        };
        push_hash(&digest, out);
    }
}

/// The first 16 bytes of HMAC-SHA256(key, value).
fn keyed_hash(mac: &Hmac<Sha256>, value: &str) -> [u8; DIGEST] {
    let mut mac = mac.clone();
    mac.update(value.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut digest = [0; DIGEST];
    digest.copy_from_slice(&full[..DIGEST]);
    digest
}

/// Appends `hash:` and the digest in lower-case hex, built on the stack and appended at once.
fn push_hash(digest: &[u8; DIGEST], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = *b"hash:00000000000000000000000000000000";
    for (i, b) in digest.iter().enumerate() {
        text[5 + 2 * i] = HEX[usize::from(b >> 4)];
        text[6 + 2 * i] = HEX[usize::from(b & 15)];
    }
    // Only ASCII was written, so this never fails.
    out.push_str(std::str::from_utf8(&text).unwrap_or_default());
}

fn partial(value: &str, out: &mut String) {
    if value.is_ascii() {
        partial_ascii(value, out)
    } else {
        partial_chars(value, out)
    }
}

/// [`partial`] for any text, character by character.
fn partial_chars(value: &str, out: &mut String) {
    // Only an e-mail address keeps its domain: `pass=P@ssw0rd…` is no address, and its text after
    // the `@` is as secret as the rest.
    if let Some((local, domain)) = value
        .split_once('@')
        .filter(|_| super::detect::is_email(value))
    {
        let mut chars = local.chars();
        if let Some(first) = chars.next() {
            out.push(first);
        }
        push_stars(out, chars.count());
        out.push('@');
        out.push_str(domain);
        return;
    }
    let alnum = value.chars().filter(|c| c.is_alphanumeric()).count();
    // Short values would be mostly revealed by their last four characters: hide them whole.
    let keep = if alnum >= 8 { 4 } else { 0 };
    let mut seen = 0;
    for c in value.chars() {
        if c.is_alphanumeric() {
            seen += 1;
            out.push(if seen > alnum - keep { c } else { '*' });
        } else {
            out.push(c);
        }
    }
}

/// Appends `n` asterisks.
fn push_stars(out: &mut String, mut n: usize) {
    const STARS: &str = "********************************";
    while n > 0 {
        let k = n.min(STARS.len());
        out.push_str(&STARS[..k]);
        n -= k;
    }
}

/// [`partial`] for ASCII text, where a character is a byte (the common case, without char decoding):
/// one pass over the bytes, each appended as itself or as `*`.
fn partial_ascii(value: &str, out: &mut String) {
    let b = value.as_bytes();
    if let Some(at) = b
        .iter()
        .position(|&c| c == b'@')
        .filter(|_| super::detect::is_email(value))
    {
        if at > 0 {
            out.reserve(b.len());
            out.push(char::from(b[0]));
            push_stars(out, at - 1);
        }
        out.push_str(&value[at..]);
        return;
    }
    let alnum = b.iter().filter(|c| c.is_ascii_alphanumeric()).count();
    let keep = if alnum >= 8 { 4 } else { 0 };
    // Alphanumerics up to the `hide`-th become `*`; punctuation between them stays. Short values are
    // built on the stack and appended at once.
    let mut hide = alnum - keep;
    let mut star = |c: u8| {
        if hide > 0 && c.is_ascii_alphanumeric() {
            hide -= 1;
            b'*'
        } else {
            c
        }
    };
    let mut buf = [0u8; 64];
    if let Some(buf) = buf.get_mut(..b.len()) {
        for (o, &c) in buf.iter_mut().zip(b) {
            *o = star(c);
        }
        // Only ASCII was written, so this never fails.
        out.push_str(std::str::from_utf8(buf).unwrap_or_default());
    } else {
        out.extend(b.iter().map(|&c| char::from(star(c))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn styled(style: &Style, value: &str) -> String {
        let mut out = String::new();
        style.apply(value, &mut out);
        out
    }

    #[test]
    fn an_email_finding_is_styled_as_any_value_is() {
        let mut cache = HashCache::default();
        for style in [
            Style::Partial,
            Style::Redact,
            Style::KeepLast(3),
            Style::hash(b"k"),
        ] {
            for email in ["jane.doe@example.com", "a@b.io", "ünï@example.com"] {
                let mut fast = String::new();
                style.apply_to_email(email, &mut fast, &mut cache);
                assert_eq!(fast, styled(&style, email), "{style:?} {email}");
            }
        }
    }

    #[test]
    fn each_style_replaces_as_documented() {
        let cases: &[(Style, &str, &str)] = &[
            (Style::Redact, "123-45-6789", "[redacted]"),
            (Style::KeepLast(4), "4111111111111111", "************1111"),
            (Style::KeepLast(4), "abc", "***"),
            (Style::KeepLast(2), "äöüß", "**üß"),
            (Style::Partial, "4111-1111-1111-1111", "****-****-****-1111"),
            (Style::Partial, "+1 (415) 555-0100", "+* (***) ***-0100"),
            (
                Style::Partial,
                "jane.doe@example.com",
                "j*******@example.com",
            ),
            (Style::Partial, "123-45-67", "***-**-**"),
            // An `@` in something that is no address reveals nothing after it.
            (
                Style::Partial,
                "pass=P@ssw0rd-secret-value",
                "****=*@******-******-*alue",
            ),
            (Style::Partial, "@annsmith_handle", "@********_**ndle"),
            (
                Style::Partial,
                "Jürgen Müller-Lüdenscheidt",
                "****** ******-********eidt",
            ),
        ];
        for (style, input, expected) in cases {
            assert_eq!(&styled(style, input), expected, "{style:?} on {input:?}");
        }
    }

    #[test]
    fn keyed_hash_is_stable_per_value_and_depends_on_the_key() {
        let a = Style::hash(b"key-one");
        let b = Style::hash(b"key-two");
        let x1 = styled(&a, "jane@example.com");
        assert_eq!(x1, styled(&a, "jane@example.com"));
        assert_ne!(x1, styled(&a, "john@example.com"));
        assert_ne!(x1, styled(&b, "jane@example.com"));
        assert!(x1.starts_with("hash:") && x1.len() == 5 + 32, "{x1}");
    }

    #[test]
    fn keyed_hash_matches_an_independent_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let got = styled(&Style::hash(b"Jefe"), "what do ya want for nothing?");
        assert_eq!(got, "hash:5bdcc146bf60754e6a042426089575c7");
    }

    #[test]
    fn cached_keyed_hash_equals_the_uncached_one_and_other_styles_ignore_the_cache() {
        let mut cache = HashCache::default();
        for style in [
            Style::hash(b"k"),
            Style::KeepLast(4),
            Style::Partial,
            Style::Redact,
        ] {
            for value in [
                "jane@example.com",
                "jane@example.com",
                "",
                "Grüße",
                &"x".repeat(200),
            ] {
                let mut cached = String::new();
                style.apply_cached(value, &mut cached, &mut cache);
                assert_eq!(cached, styled(&style, value), "{style:?} on {value:?}");
            }
        }
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        assert_eq!(format!("{:?}", Style::hash(b"secret")), "Hash(<key>)");
    }

    #[test]
    fn partial_of_ascii_text_matches_the_general_path() {
        let values = [
            "",
            "@",
            "a@",
            "@example.com",
            "jane.doe@example.com",
            "a@b@c",
            "4111-1111-1111-1111",
            "+1 (415) 555-0100",
            "123-45-67",
            "1234567",
            "12345678",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "GB82 WEST 1234 5698 7654 32",
            "-----BEGIN PRIVATE KEY-----\nMIIE",
            "fe80::1ff:fe23:4567:890a",
            "a",
            "--",
            "--12345678--",
            "ab-cd-ef-gh-ij",
            "abcdefgh",
            " 1 2 3 4 5 6 7 8 9 ",
            "1234-5678-90ab-cdef-1234-5678-90ab-cdef-1234-5678-90ab-cdef-1234-5678",
        ];
        for v in values {
            let (mut fast, mut general) = (String::new(), String::new());
            partial_ascii(v, &mut fast);
            partial_chars(v, &mut general);
            assert_eq!(fast, general, "{v:?}");
        }
    }
}
