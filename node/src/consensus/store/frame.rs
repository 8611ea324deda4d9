//! Checksummed values: every value the store writes is framed as
//!
//! ```text
//!   ┌──────────────┬───────────────┬───────────────────────┐
//!   │ "DRV1" (4 B) │ CRC-32 (4 B,  │ payload (JSON or a    │
//!   │  format tag  │ little-endian)│ snapshot's raw bytes) │
//!   └──────────────┴───────────────┴───────────────────────┘
//! ```
//!
//! and checked on every read. redb keeps its own page checksums, but it verifies them only
//! when it recovers from an unclean shutdown; a byte changed inside a committed value (a flipped
//! bit on disk, a hand edit) would otherwise be decoded and believed. The CRC is over the
//! format tag and the payload, so a value moved under another format is caught too.

/// Identifies the frame format; changes if the framing ever does.
const TAG: &[u8; 4] = b"DRV1";
const HEADER_LEN: usize = 8;

/// Why a stored value failed its check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum FrameError {
    /// Shorter than the header, or without the format tag.
    #[error("not a drover value (no DRV1 header; {len} bytes)")]
    NoHeader {
        /// The value's length in bytes.
        len: usize,
    },
    /// The checksum does not match the content.
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// The CRC-32 the value carries.
        stored: u32,
        /// The CRC-32 of what is there now.
        computed: u32,
    },
}

/// Frames `payload` with the tag and its checksum.
pub(super) fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(TAG);
    out.extend_from_slice(&crc32(&[TAG, payload]).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a framed value and returns its payload.
pub(super) fn open(bytes: &[u8]) -> Result<&[u8], FrameError> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != TAG {
        return Err(FrameError::NoHeader { len: bytes.len() });
    }
    let mut stored = [0u8; 4];
    stored.copy_from_slice(&bytes[4..HEADER_LEN]);
    let stored = u32::from_le_bytes(stored);
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32(&[TAG, payload]);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok(payload)
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) over the concatenation of `parts`.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &byte in *part {
            crc = CRC_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    #[test]
    fn sealed_value_opens_to_its_payload() {
        let sealed = seal(br#"{"epoch":1}"#);
        assert_eq!(open(&sealed), Ok(br#"{"epoch":1}"#.as_slice()));
        assert_eq!(open(&seal(b"")), Ok(b"".as_slice()));
    }

    #[test]
    fn every_single_byte_change_is_detected() {
        let sealed = seal(br#"{"epoch":1,"site":"prod"}"#);
        for i in 0..sealed.len() {
            for flip in [0x01u8, 0x06, 0x80] {
                let mut damaged = sealed.clone();
                damaged[i] ^= flip;
                assert!(open(&damaged).is_err(), "byte {i} ^ {flip:#x} went unnoticed");
            }
        }
    }

    #[test]
    fn short_or_untagged_values_are_refused() {
        assert_eq!(open(b"DRV"), Err(FrameError::NoHeader { len: 3 }));
        assert_eq!(open(br#"{"epoch":1}"#), Err(FrameError::NoHeader { len: 11 }));
    }
}
