//! The re-seed stream between a donor's agent and the receiving Job: a mutual HMAC
//! challenge, then the mbstream bytes in length-prefixed frames and a trailer saying how the
//! backup ended; every frame and the end carry MACs.
//!
//! The trailer is why there is framing at all: a stream cut short (a killed backup, a dead
//! donor) must never pass for a complete copy, and mbstream alone cannot tell. The proofs and
//! the MACs keep anything but the real donor from feeding a replica a copy: each frame is
//! checked before its bytes reach mbstream, which trusts the paths it unpacks.
//!
//! ```text
//! donor  → MAGIC, donor nonce (32 bytes)
//! client → HMAC(key, "client" ‖ donor nonce), client nonce (32 bytes)
//! donor  → HMAC(key, "donor" ‖ client nonce ‖ donor nonce)   (zeros when it refuses)
//! donor  → [u32 len > 0][len bytes][MAC of frame number ‖ bytes] …
//!          [u32 0][u8 status][u32 n][n bytes]: status 0 and the end's MAC, or 1 and why
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
    /// A frame's MAC, or the end's, does not match what arrived.
    #[error("the copy arrived altered (a MAC does not match)")]
    Altered,
}

/// How a stream ended, as its trailer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trailer {
    /// The backup completed; the MAC of the stream's end.
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

/// One session's MACs: every frame, and the end of the stream, carries one bound to both
/// nonces and to the frame's number, so only the donor's bytes — in order, none left out —
/// reach mbstream, each checked before it is unpacked.
pub struct Session {
    key: Vec<u8>,
    nonces: Vec<u8>,
    seq: u64,
}

impl Session {
    /// The session that exchanged these nonces.
    pub fn new(key: &[u8], donor_nonce: &[u8], client_nonce: &[u8]) -> Result<Self, Error> {
        mac(key, &[])?;
        Ok(Self {
            key: key.to_vec(),
            nonces: [donor_nonce, client_nonce].concat(),
            seq: 0,
        })
    }

    fn tag(&self, kind: &[u8], data: &[u8]) -> Result<Hmac, Error> {
        mac(
            &self.key,
            &[kind, &self.nonces, &self.seq.to_be_bytes(), data],
        )
    }

    /// The MAC of the next frame, `data`.
    pub fn seal(&mut self, data: &[u8]) -> Result<Vec<u8>, Error> {
        let tag = self.tag(b"frame", data)?.finalize().into_bytes().to_vec();
        self.seq += 1;
        Ok(tag)
    }

    /// Whether `tag` is the MAC of the next frame, `data` (constant time).
    pub fn open(&mut self, data: &[u8], tag: &[u8]) -> bool {
        let ok = self
            .tag(b"frame", data)
            .is_ok_and(|m| m.verify_slice(tag).is_ok());
        self.seq += 1;
        ok
    }

    /// The MAC of the stream's end, after every frame sent.
    pub fn end(&self) -> Result<Vec<u8>, Error> {
        Ok(self.tag(b"end", &[])?.finalize().into_bytes().to_vec())
    }

    /// Whether `tag` ends the stream after every frame received (constant time).
    pub fn check_end(&self, tag: &[u8]) -> bool {
        self.tag(b"end", &[])
            .is_ok_and(|m| m.verify_slice(tag).is_ok())
    }
}

/// Send one data frame (`data` non-empty, at most [`MAX_FRAME`]) and its MAC.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    tag: &[u8],
) -> Result<(), Error> {
    let len = u32::try_from(data.len()).map_err(|_| Error::Oversized(u32::MAX))?;
    if len == 0 || len > MAX_FRAME || tag.len() != MAC_LEN {
        return Err(Error::Oversized(len));
    }
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(data).await?;
    w.write_all(tag).await?;
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
    /// Bytes of the copy, and their MAC.
    Data(Vec<u8>, Vec<u8>),
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
    let mut tag = vec![0; MAC_LEN];
    r.read_exact(&mut tag).await?;
    Ok(Frame::Data(data, tag))
}

/// The client's side of the greeting: check the donor's magic, prove the key, check the
/// donor's proof; the session whose MACs the stream that follows must carry.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &[u8],
) -> Result<Session, Error> {
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
    Session::new(key, &donor_nonce, &client_nonce)
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
    fn each_frame_is_bound_to_its_session_and_its_place() {
        let session = |n: u8| Session::new(b"k", &[n; NONCE_LEN], &[1; NONCE_LEN]).unwrap();
        let mut donor = session(0);
        let tags: Vec<_> = [b"abc", b"def"]
            .iter()
            .map(|d| donor.seal(*d).unwrap())
            .collect();
        let end = donor.end().unwrap();
        let mut client = session(0);
        assert!(client.open(b"abc", &tags[0]) && client.open(b"def", &tags[1]));
        assert!(client.check_end(&end));
        // Reordered, altered, another session's, cut short: each fails.
        let mut reordered = session(0);
        assert!(!reordered.open(b"def", &tags[1]));
        assert!(!session(0).open(b"abC", &tags[0]));
        assert!(!session(9).open(b"abc", &tags[0]));
        let mut cut = session(0);
        assert!(cut.open(b"abc", &tags[0]));
        assert!(!cut.check_end(&end), "an end after one frame of two");
        assert!(Session::new(b"", &[0; NONCE_LEN], &[1; NONCE_LEN]).is_err());
    }

    #[tokio::test]
    async fn frames_and_trailer_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abc", &[3; MAC_LEN]).await.unwrap();
        write_trailer(&mut buf, &Trailer::Failed("disk full".into()))
            .await
            .unwrap();
        write_trailer(&mut buf, &Trailer::Complete(vec![5; MAC_LEN]))
            .await
            .unwrap();
        let mut r = buf.as_slice();
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Frame::Data(b"abc".to_vec(), vec![3; MAC_LEN])
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
        assert!(
            write_frame(&mut Vec::new(), &[], &[0; MAC_LEN])
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_stream_cut_short_is_an_error_not_an_end() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abcdef", &[0; MAC_LEN])
            .await
            .unwrap();
        buf.truncate(buf.len() - 2);
        let mut r = buf.as_slice();
        assert!(read_frame(&mut r).await.is_err());
    }
}
