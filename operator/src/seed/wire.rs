//! The re-seed stream between a donor's agent and the receiving Job: an HMAC challenge, then
//! the mbstream bytes in length-prefixed frames and a trailer saying how the backup ended.
//!
//! The trailer is why there is framing at all: a stream cut short (a killed backup, a dead
//! donor) must never pass for a complete copy, and mbstream alone cannot tell.
//!
//! ```text
//! donor  → MAGIC, 32-byte nonce
//! client → HMAC-SHA256(key, CONTEXT ‖ nonce)
//! donor  → [u32 len > 0][len bytes] …  then  [u32 0][u8 status][u32 n][n bytes of message]
//! ```
//!
//! The key is the administrative user's password, which both sides already hold; it never
//! crosses the wire. (The data itself is not encrypted, like replication today: the internal
//! plane's TLS is a separate piece of work.)

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a donor says first, so a client that reached something else fails clearly.
pub const MAGIC: &[u8; 8] = b"CCSEED1\n";
/// Bound into every MAC, so it proves nothing outside this protocol.
const CONTEXT: &[u8] = b"chatcluster-seed-v1";
/// Length of the nonce and of the MAC.
pub const NONCE_LEN: usize = 32;
/// Largest data frame: the donor sends at most this much at once, and a client refuses more.
pub const MAX_FRAME: u32 = 1 << 20;
/// Largest trailer message.
const MAX_MESSAGE: u32 = 64 << 10;

/// Errors of the wire protocol.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection failed.
    #[error("seed stream: {0}")]
    Io(#[from] std::io::Error),
    /// The peer is not a re-seed donor.
    #[error("the peer is not a re-seed donor (no greeting)")]
    NotADonor,
    /// A frame larger than allowed.
    #[error("seed stream: frame of {0} bytes (at most {MAX_FRAME})")]
    Oversized(u32),
    /// The donor ended the stream with a failure.
    #[error("the donor failed: {0}")]
    Failed(String),
}

/// How a stream ended, as its trailer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trailer {
    /// The backup completed: everything was sent.
    Complete,
    /// It did not; why.
    Failed(String),
}

/// The MAC a client answers `nonce` with.
pub fn answer(key: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(CONTEXT);
    mac.update(nonce);
    mac.finalize().into_bytes().to_vec()
}

/// Whether `mac` answers `nonce` under `key`, compared in constant time.
pub fn verify(key: &[u8], nonce: &[u8], mac: &[u8]) -> bool {
    let Ok(mut expected) = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return false;
    };
    expected.update(CONTEXT);
    expected.update(nonce);
    expected.verify_slice(mac).is_ok()
}

/// Send one data frame (`data` non-empty, at most [`MAX_FRAME`]).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> Result<(), Error> {
    let len = u32::try_from(data.len()).map_err(|_| Error::Oversized(u32::MAX))?;
    if len == 0 || len > MAX_FRAME {
        return Err(Error::Oversized(len));
    }
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(data).await?;
    Ok(())
}

/// Send the trailer.
pub async fn write_trailer<W: AsyncWrite + Unpin>(w: &mut W, t: &Trailer) -> Result<(), Error> {
    let (status, message) = match t {
        Trailer::Complete => (0u8, ""),
        Trailer::Failed(m) => (1u8, m.as_str()),
    };
    let limit = usize::try_from(MAX_MESSAGE).unwrap_or(usize::MAX);
    let message = &message.as_bytes()[..message.len().min(limit)];
    w.write_all(&0u32.to_be_bytes()).await?;
    w.write_all(&[status]).await?;
    w.write_all(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes())
        .await?;
    w.write_all(message).await?;
    w.flush().await?;
    Ok(())
}

/// What the next read of a stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Bytes of the copy.
    Data(Vec<u8>),
    /// The end, and how it went.
    End(Trailer),
}

/// Read the next frame; an oversized one is refused before its bytes are read.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, Error> {
    let len = r.read_u32().await?;
    if len == 0 {
        let status = r.read_u8().await?;
        let n = r.read_u32().await?;
        if n > MAX_MESSAGE {
            return Err(Error::Oversized(n));
        }
        let mut message = vec![0; usize::try_from(n).unwrap_or(0)];
        r.read_exact(&mut message).await?;
        let message = String::from_utf8_lossy(&message).into_owned();
        return Ok(Frame::End(if status == 0 {
            Trailer::Complete
        } else {
            Trailer::Failed(message)
        }));
    }
    if len > MAX_FRAME {
        return Err(Error::Oversized(len));
    }
    let mut data = vec![0; usize::try_from(len).unwrap_or(0)];
    r.read_exact(&mut data).await?;
    Ok(Frame::Data(data))
}

/// The client's side of the greeting: check the donor's magic and prove the key.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &[u8],
) -> Result<(), Error> {
    let mut magic = [0u8; MAGIC.len()];
    s.read_exact(&mut magic)
        .await
        .map_err(|_| Error::NotADonor)?;
    if &magic != MAGIC {
        return Err(Error::NotADonor);
    }
    let mut nonce = [0u8; NONCE_LEN];
    s.read_exact(&mut nonce).await?;
    s.write_all(&answer(key, &nonce)).await?;
    s.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_the_right_key_answers_a_nonce() {
        let nonce = [7u8; NONCE_LEN];
        let mac = answer(b"secret", &nonce);
        assert!(verify(b"secret", &nonce, &mac));
        assert!(!verify(b"other", &nonce, &mac));
        assert!(!verify(b"secret", &[8u8; NONCE_LEN], &mac));
        assert!(!verify(b"secret", &nonce, &mac[..31]));
    }

    #[tokio::test]
    async fn frames_and_trailer_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abc").await.unwrap();
        write_trailer(&mut buf, &Trailer::Failed("disk full".into()))
            .await
            .unwrap();
        let mut r = buf.as_slice();
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Frame::Data(b"abc".to_vec())
        );
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Frame::End(Trailer::Failed("disk full".into()))
        );
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_its_bytes() {
        let bytes = (MAX_FRAME + 1).to_be_bytes();
        let err = read_frame(&mut bytes.as_slice()).await.unwrap_err();
        assert!(
            matches!(err, Error::Oversized(n) if n == MAX_FRAME + 1),
            "{err}"
        );
        assert!(write_frame(&mut Vec::new(), &[]).await.is_err());
    }

    #[tokio::test]
    async fn a_stream_cut_short_is_an_error_not_an_end() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abcdef").await.unwrap();
        buf.truncate(buf.len() - 2);
        let mut r = buf.as_slice();
        assert!(read_frame(&mut r).await.is_err());
    }
}
