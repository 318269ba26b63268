//! The frame codec: `[magic: 4 bytes]["version": 1 byte][length: u32 LE][body]`.
//!
//! Both ports speak frames. A frame whose magic, version or length is wrong
//! is a protocol error: the reader closes that connection and nothing else.

use std::io::{self, Read, Write};

use crate::{Error, Result};

/// The first bytes of every frame.
pub const MAGIC: [u8; 4] = *b"KVAC";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 9;
/// Default limit on the body of one frame.
pub const MAX_FRAME: usize = 64 << 20;

/// Writes one frame. The caller flushes.
pub fn write_frame<W: Write>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame body too large"))?;
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[5..].copy_from_slice(&len.to_le_bytes());
    w.write_all(&header)?;
    w.write_all(body)
}

/// Reads one frame body of at most `max` bytes. Returns `Ok(None)` on a clean
/// end of stream before a frame starts.
pub fn read_frame<R: Read>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match r.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(Error::Protocol(
                    "connection closed inside a frame header".into(),
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading frame header", e)),
        }
    }
    let len = body_len(&header, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| Error::io("reading frame body", e))?;
    Ok(Some(body))
}

/// Checks a frame header and returns the length of the body that follows.
pub fn body_len(header: &[u8; HEADER_LEN], max: usize) -> Result<usize> {
    if header[..4] != MAGIC {
        return Err(Error::Protocol(format!(
            "bad frame magic {:02x?} (not a kvapp-c peer or client)",
            &header[..4]
        )));
    }
    if header[4] != VERSION {
        return Err(Error::Protocol(format!(
            "unsupported protocol version {} (this build speaks {VERSION})",
            header[4]
        )));
    }
    let len = u32::from_le_bytes(header[5..].try_into().expect("4 bytes")) as usize;
    if len > max {
        return Err(Error::Protocol(format!(
            "frame of {len} bytes exceeds the limit of {max} bytes"
        )));
    }
    Ok(len)
}

/// Encodes a value with postcard.
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("serializing to memory cannot fail")
}

/// Encodes a value with postcard, appending the bytes to `buf`. Clearing and
/// reusing one buffer for many values avoids an allocation per value.
pub fn encode_into<T: serde::Serialize>(value: &T, buf: &mut Vec<u8>) {
    postcard::to_io(value, buf).expect("serializing to memory cannot fail");
}

/// Appends a whole frame (header and postcard body) holding `value` to
/// `buf`, ready to send with one write. Fails if the body exceeds the 4 GiB
/// a frame's length field can say; `buf` is then as it was.
pub fn encode_frame_into<T: serde::Serialize>(value: &T, buf: &mut Vec<u8>) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    encode_into(value, buf);
    let Ok(len) = u32::try_from(buf.len() - start - HEADER_LEN) else {
        buf.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame body too large",
        ));
    };
    buf[start..start + 4].copy_from_slice(&MAGIC);
    buf[start + 4] = VERSION;
    buf[start + 5..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Decodes a value encoded by [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Protocol(format!("malformed message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame built in place equals one written from an encoded body, and
    /// appends after what the buffer already held.
    #[test]
    fn frames_built_in_place_match_written_ones() {
        let value = (7u64, String::from("value"));
        let mut written = b"prefix".to_vec();
        write_frame(&mut written, &encode(&value)).unwrap();
        let mut built = b"prefix".to_vec();
        encode_frame_into(&value, &mut built).unwrap();
        assert_eq!(built, written);
        let mut r = &built[6..];
        let body = read_frame(&mut r, 100).unwrap().unwrap();
        assert_eq!(decode::<(u64, String)>(&body).unwrap(), value);
    }

    #[test]
    fn round_trip_and_clean_eof() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        write_frame(&mut buf, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 100).unwrap().is_none());
    }

    #[test]
    fn rejects_garbage_oversize_and_truncation() {
        let mut r = &b"GET / HTTP/1.1\r\n\r\n"[..];
        assert!(matches!(read_frame(&mut r, 100), Err(Error::Protocol(_))));

        let mut buf = Vec::new();
        write_frame(&mut buf, &[7u8; 50]).unwrap();
        assert!(matches!(
            read_frame(&mut &buf[..], 10),
            Err(Error::Protocol(_))
        ));
        assert!(read_frame(&mut &buf[..20], 100).is_err());
        assert!(read_frame(&mut &buf[..4], 100).is_err());

        let mut bad_version = buf.clone();
        bad_version[4] = 99;
        let err = read_frame(&mut &bad_version[..], 100).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }
}
