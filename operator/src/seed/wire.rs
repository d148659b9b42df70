//! The re-seed stream between a donor's agent and the receiving Job: a mutual HMAC
//! challenge, then the mbstream bytes in length-prefixed frames and a trailer saying how the
//! backup ended — with a MAC over the whole stream when it is complete.
//!
//! The trailer is why there is framing at all: a stream cut short (a killed backup, a dead
//! donor) must never pass for a complete copy, and mbstream alone cannot tell. The proofs and
//! the stream's MAC keep anything but the real donor from feeding a replica a copy.
//!
//! ```text
//! donor  → MAGIC, donor nonce (32 bytes)
//! client → HMAC(key, "client" ‖ donor nonce), client nonce (32 bytes)
//! donor  → HMAC(key, "donor" ‖ client nonce ‖ donor nonce)   (zeros when it refuses)
//! donor  → [u32 len > 0][len bytes] …
//!          [u32 0][u8 status][u32 n][n bytes]: status 0 and the stream's MAC, or 1 and why
//! ```
//!
//! The key is the administrative password, which both sides already hold; it never crosses
//! the wire. The bytes themselves are not encrypted, like replication today (the internal
//! plane's TLS is separate work).

use hmac::{KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type Hmac = hmac::Hmac<Sha256>;

/// What a donor says first, so a client that reached something else fails clearly.
pub const MAGIC: &[u8; 8] = b"CCSEED2\n";
/// Length of a nonce.
pub const NONCE_LEN: usize = 32;
/// Length of a MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
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
    /// The donor did not prove it holds the key.
    #[error("the donor did not prove it holds the key")]
    DonorUnproven,
    /// A frame larger than allowed.
    #[error("seed stream: frame of {0} bytes (at most {MAX_FRAME})")]
    Oversized(u32),
    /// The donor ended the stream with a failure.
    #[error("the donor failed: {0}")]
    Failed(String),
    /// No usable key.
    #[error("no re-seed key")]
    NoKey,
    /// The stream's MAC does not match what arrived.
    #[error("the copy arrived altered (its MAC does not match)")]
    Altered,
}

/// How a stream ended, as its trailer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trailer {
    /// The backup completed; the stream's MAC.
    Complete(Vec<u8>),
    /// It did not; why.
    Failed(String),
}

/// HMAC-SHA256 over `parts`. HMAC takes keys of any length; an empty key (what an unset
/// password would give) is refused, so no stream is ever keyed by nothing.
fn mac(key: &[u8], parts: &[&[u8]]) -> Result<Hmac, Error> {
    if key.is_empty() {
        return Err(Error::NoKey);
    }
    let mut m = <Hmac as KeyInit>::new_from_slice(key).map_err(|_| Error::NoKey)?;
    for p in parts {
        m.update(p);
    }
    Ok(m)
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut n);
    n
}

/// What a client answers the donor's nonce with.
pub fn client_proof(key: &[u8], donor_nonce: &[u8]) -> Result<Vec<u8>, Error> {
    Ok(mac(key, &[b"client", donor_nonce])?
        .finalize()
        .into_bytes()
        .to_vec())
}

/// What the donor answers the client's nonce with.
pub fn donor_proof(key: &[u8], client_nonce: &[u8], donor_nonce: &[u8]) -> Result<Vec<u8>, Error> {
    Ok(mac(key, &[b"donor", client_nonce, donor_nonce])?
        .finalize()
        .into_bytes()
        .to_vec())
}

/// Whether a client's proof answers `donor_nonce` under `key`, compared in constant time.
pub fn verify_client(key: &[u8], donor_nonce: &[u8], proof: &[u8]) -> bool {
    mac(key, &[b"client", donor_nonce]).is_ok_and(|m| m.verify_slice(proof).is_ok())
}

/// The MAC over a whole stream, computed as its bytes pass on both sides.
pub struct StreamMac(Hmac);

impl StreamMac {
    /// The MAC of the session that exchanged these nonces.
    pub fn new(key: &[u8], donor_nonce: &[u8], client_nonce: &[u8]) -> Result<Self, Error> {
        Ok(Self(mac(key, &[b"stream", donor_nonce, client_nonce])?))
    }

    /// Bytes that passed.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The MAC of everything that passed.
    pub fn finish(self) -> Vec<u8> {
        self.0.finalize().into_bytes().to_vec()
    }

    /// Whether `mac` is the MAC of everything that passed, compared in constant time.
    pub fn matches(self, mac: &[u8]) -> bool {
        self.0.verify_slice(mac).is_ok()
    }
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
        Trailer::Complete(mac) => (0u8, mac.as_slice()),
        Trailer::Failed(m) => (1u8, m.as_bytes()),
    };
    let limit = usize::try_from(MAX_MESSAGE).unwrap_or(usize::MAX);
    let message = &message[..message.len().min(limit)];
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
        return Ok(Frame::End(if status == 0 {
            Trailer::Complete(message)
        } else {
            Trailer::Failed(String::from_utf8_lossy(&message).into_owned())
        }));
    }
    if len > MAX_FRAME {
        return Err(Error::Oversized(len));
    }
    let mut data = vec![0; usize::try_from(len).unwrap_or(0)];
    r.read_exact(&mut data).await?;
    Ok(Frame::Data(data))
}

/// The client's side of the greeting: check the donor's magic, prove the key, check the
/// donor's proof; the MAC the stream that follows must carry.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &[u8],
) -> Result<StreamMac, Error> {
    let mut magic = [0u8; MAGIC.len()];
    s.read_exact(&mut magic)
        .await
        .map_err(|_| Error::NotADonor)?;
    if &magic != MAGIC {
        return Err(Error::NotADonor);
    }
    let mut donor_nonce = [0u8; NONCE_LEN];
    s.read_exact(&mut donor_nonce).await?;
    let client_nonce = nonce();
    s.write_all(&client_proof(key, &donor_nonce)?).await?;
    s.write_all(&client_nonce).await?;
    s.flush().await?;
    let mut proof = [0u8; MAC_LEN];
    s.read_exact(&mut proof).await?;
    let expected = mac(key, &[b"donor", &client_nonce, &donor_nonce])?;
    if expected.verify_slice(&proof).is_err() {
        // A donor that refused says why; anything else did not prove the key.
        return Err(match read_frame(s).await {
            Ok(Frame::End(Trailer::Failed(why))) => Error::Failed(why),
            _ => Error::DonorUnproven,
        });
    }
    StreamMac::new(key, &donor_nonce, &client_nonce)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_the_right_key_answers_a_nonce() {
        let nonce = [7u8; NONCE_LEN];
        let proof = client_proof(b"secret", &nonce).unwrap();
        assert!(verify_client(b"secret", &nonce, &proof));
        assert!(!verify_client(b"other", &nonce, &proof));
        assert!(!verify_client(b"secret", &[8u8; NONCE_LEN], &proof));
        assert!(!verify_client(b"secret", &nonce, &proof[..31]));
        // A donor's proof is no client's proof: a reflected answer proves nothing.
        let reflected = donor_proof(b"secret", &nonce, &nonce).unwrap();
        assert!(!verify_client(b"secret", &nonce, &reflected));
        assert!(
            client_proof(b"", &nonce).is_err(),
            "no stream keyed by nothing"
        );
    }

    #[test]
    fn the_stream_mac_covers_every_byte_and_the_session() {
        let mac = |key: &[u8], n: u8, data: &[&[u8]]| {
            let mut m = StreamMac::new(key, &[n; NONCE_LEN], &[1; NONCE_LEN]).unwrap();
            for d in data {
                m.update(d);
            }
            m.finish()
        };
        let good = mac(b"k", 0, &[b"abc", b"def"]);
        let mut check = StreamMac::new(b"k", &[0; NONCE_LEN], &[1; NONCE_LEN]).unwrap();
        check.update(b"abcdef");
        assert!(check.matches(&good), "framing does not matter, bytes do");
        assert_ne!(good, mac(b"k", 0, &[b"abcdeF"]));
        assert_ne!(good, mac(b"k", 9, &[b"abcdef"]), "another session's stream");
        assert_ne!(good, mac(b"x", 0, &[b"abcdef"]));
    }

    #[tokio::test]
    async fn frames_and_trailer_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abc").await.unwrap();
        write_trailer(&mut buf, &Trailer::Failed("disk full".into()))
            .await
            .unwrap();
        write_trailer(&mut buf, &Trailer::Complete(vec![5; MAC_LEN]))
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
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Frame::End(Trailer::Complete(vec![5; MAC_LEN]))
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
