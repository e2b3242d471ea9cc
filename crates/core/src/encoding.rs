//! The canonical binary encoding.
//!
//! Every hashed or signed structure has exactly one encoding:
//! - integers are big-endian and fixed-width (`u8`, `u16`, `u64`);
//! - fixed-size values (digests, keys, signatures) are written as raw bytes;
//! - a variable-length byte string is `len (u16) || bytes`;
//! - a list is `count (u16) || item*`, and lists that represent sets are sorted strictly
//!   ascending by their encoded key, so that duplicates are impossible.
//!
//! Decoders are strict: truncated input, trailing bytes, lengths over their limit, unsorted
//! sets and anything else with a second encoding are errors. As a last line of defence,
//! [`decode_canonical`] re-encodes what it decoded and rejects the input unless the bytes are
//! identical, so no decoder can silently accept a second encoding.

use thiserror::Error;

/// Why some bytes are not the canonical encoding of what they were supposed to be.
///
/// Input that fails to decode always comes from outside (a client, a peer, the disk); the
/// `what` field names the structure and field being decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the structure did.
    #[error("{what}: input truncated")]
    Truncated {
        /// The field being decoded.
        what: &'static str,
    },
    /// A length or count exceeds its limit.
    #[error("{what}: {got} exceeds the limit of {max}")]
    TooLong {
        /// The field being decoded.
        what: &'static str,
        /// The limit.
        max: usize,
        /// The value found.
        got: usize,
    },
    /// A length or count is below its minimum.
    #[error("{what}: {got} is below the minimum of {min}")]
    TooShort {
        /// The field being decoded.
        what: &'static str,
        /// The minimum.
        min: usize,
        /// The value found.
        got: usize,
    },
    /// Bytes remain after the structure ended.
    #[error("{what}: {extra} trailing bytes")]
    TrailingBytes {
        /// The structure being decoded.
        what: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// The input decodes, but is not the one canonical encoding of its value.
    #[error("{what}: not canonical ({why})")]
    NonCanonical {
        /// The field being decoded.
        what: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The input decodes to a value that the protocol forbids.
    #[error("{what}: invalid ({why})")]
    Invalid {
        /// The field being decoded.
        what: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

/// A value with a canonical encoding.
pub trait Canonical: Sized {
    /// The name used in decode errors.
    const NAME: &'static str;
    /// Appends the canonical encoding to `out`.
    fn encode_into(&self, out: &mut Vec<u8>);
    /// Reads one value from `r`, leaving the reader after it.
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// The canonical encoding.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Decodes exactly one value from `bytes`, rejecting trailing bytes and any encoding that
/// does not re-encode to the same bytes.
pub fn decode_canonical<T: Canonical>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut r = Reader::new(bytes);
    let value = T::decode_from(&mut r)?;
    r.finish(T::NAME)?;
    if value.encode() != bytes {
        return Err(DecodeError::NonCanonical { what: T::NAME, why: "re-encoding differs" });
    }
    Ok(value)
}

/// A cursor over input bytes; every read is bounds-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails unless every byte was read.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { what, extra: self.rest.len() })
        }
    }

    /// Reads `n` raw bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated { what });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    /// The next byte, not consumed.
    pub fn peek_u8(&self, what: &'static str) -> Result<u8, DecodeError> {
        self.rest.first().copied().ok_or(DecodeError::Truncated { what })
    }

    /// Reads a `u8`.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Reads a `u16` count and checks it against `min..=max`.
    pub fn count(&mut self, min: usize, max: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = usize::from(self.u16(what)?);
        if n > max {
            return Err(DecodeError::TooLong { what, max, got: n });
        }
        if n < min {
            return Err(DecodeError::TooShort { what, min, got: n });
        }
        Ok(n)
    }

    /// Reads `len (u16) || bytes` with `min <= len <= max`.
    pub fn var_bytes(&mut self, min: usize, max: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.count(min, max, what)?;
        self.bytes(n, what)
    }
}

/// Appends `len (u16) || bytes`.
///
/// Callers only pass values that were bounded by a limit far below 64 KiB when they were
/// constructed or decoded; the assertion is an invariant check, not input validation.
pub fn put_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_count(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends a `u16` count.
pub fn put_count(out: &mut Vec<u8>, n: usize) {
    let n = u16::try_from(n).expect("invariant: lengths and counts are bounded by limits below 64 KiB");
    out.extend_from_slice(&n.to_be_bytes());
}

/// Appends a big-endian `u64`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a big-endian `u16`.
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_rejects_truncation_and_trailing_bytes() {
        let mut r = Reader::new(&[0, 5, 1, 2]);
        assert_eq!(r.var_bytes(0, 10, "x"), Err(DecodeError::Truncated { what: "x" }));
        let mut r = Reader::new(&[0, 1, 7, 9]);
        assert_eq!(r.var_bytes(0, 10, "x"), Ok(&[7u8][..]));
        assert_eq!(r.finish("x"), Err(DecodeError::TrailingBytes { what: "x", extra: 1 }));
    }

    #[test]
    fn reader_enforces_limits() {
        let mut r = Reader::new(&[0, 11]);
        assert!(matches!(r.count(0, 10, "n"), Err(DecodeError::TooLong { got: 11, .. })));
        let mut r = Reader::new(&[0, 1]);
        assert!(matches!(r.count(2, 10, "n"), Err(DecodeError::TooShort { got: 1, .. })));
    }
}
