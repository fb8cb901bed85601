//! UTF-8 validation for values that need only a yes or no: a value no detector can match is never
//! read as text, but must still be valid UTF-8 to pass (fail closed). Cheaper than
//! `std::str::from_utf8` on short values, which are most.

const ONES: u64 = u64::from_le_bytes([1; 8]);
const HIGH: u64 = ONES << 7;

/// True when `b` is valid UTF-8: exactly what `std::str::from_utf8` accepts (no overlong forms,
/// surrogates or code points past U+10FFFF).
pub fn is_valid(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        // Eight bytes at a time: past ASCII bytes to the word's first other byte.
        if let Some(word) = b.get(i..i + 8) {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(word);
            let high = u64::from_le_bytes(bytes) & HIGH;
            if high == 0 {
                i += 8;
                continue;
            }
            i += (high.trailing_zeros() / 8) as usize;
        } else if b[i] < 0x80 {
            i += 1;
            continue;
        }
        let lead = b[i];
        // The sequence length and the range of its second byte (Unicode table 3-7); the others
        // are continuation bytes.
        let (len, lo, hi) = match lead {
            0xC2..=0xDF => (2, 0x80, 0xBF),
            0xE0 => (3, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80, 0xBF),
            0xED => (3, 0x80, 0x9F),
            0xF0 => (4, 0x90, 0xBF),
            0xF1..=0xF3 => (4, 0x80, 0xBF),
            0xF4 => (4, 0x80, 0x8F),
            _ => return false,
        };
        let Some(rest) = b.get(i + 1..i + len) else {
            return false;
        };
        if !(lo..=hi).contains(&rest[0]) || !rest[1..].iter().all(|&c| c & 0xC0 == 0x80) {
            return false;
        }
        i += len;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agrees(b: &[u8]) {
        assert_eq!(is_valid(b), std::str::from_utf8(b).is_ok(), "{b:x?}");
    }

    #[test]
    fn agrees_with_std_on_every_one_and_two_byte_sequence() {
        for x in 0..=255u8 {
            agrees(&[x]);
            for y in 0..=255u8 {
                agrees(&[x, y]);
            }
        }
    }

    #[test]
    fn agrees_with_std_on_longer_sequences_of_boundary_bytes_at_every_offset() {
        let edges = [
            0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0,
            0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff,
        ];
        let leads = [
            0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5,
        ];
        for lead in leads {
            for &a in &edges {
                for &b in &edges {
                    for &c in &edges {
                        let seq = [lead, a, b, c];
                        for cut in 2..=4 {
                            for pad in [0, 1, 7, 8, 9] {
                                let mut v = vec![b'x'; pad];
                                v.extend_from_slice(&seq[..cut]);
                                agrees(&v);
                                v.extend_from_slice(b"tail of ascii");
                                agrees(&v);
                            }
                        }
                    }
                }
            }
        }
        for text in [
            "Grüße aus Köln, Straße 12",
            "ключ",
            "✓ done",
            "𝄞 music",
            "plain ascii text",
        ] {
            agrees(text.as_bytes());
        }
    }
}
