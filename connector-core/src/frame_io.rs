//! Reading and writing whole protocol frames on a stream: the thin async
//! shell around the sans-IO codec in [`crate::proto`]. Reads consume exactly
//! one frame, so raw bytes that follow it stay in the stream.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::proto::{DecodeError, EncodeError, Frame, FrameHeader, HEADER_LEN};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    /// The stream ended before a whole frame arrived.
    #[error("stream ended before a complete frame")]
    Eof,
    /// The bytes were not a valid frame.
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// The frame could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for FrameIoError {
    fn from(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameIoError::Eof
        } else {
            FrameIoError::Io(err)
        }
    }
}

/// Reads one frame whose payload may not exceed `max_payload` bytes. At most
/// `max_payload` bytes are allocated, and only after the header checked out.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    recv: &mut R,
    max_payload: usize,
) -> Result<Frame, FrameIoError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let header = FrameHeader::parse(header, max_payload)?;
    // Zeroed when dropped: a `Hello` payload holds the agent's token.
    let mut payload = Zeroizing::new(vec![0u8; header.len]);
    recv.read_exact(&mut payload).await?;
    Ok(header.decode_payload(&payload)?)
}

/// Encodes and writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(send: &mut W, frame: &Frame) -> Result<(), FrameIoError> {
    // Zeroed when dropped, as the `Hello` holds the agent's token.
    let bytes = Zeroizing::new(frame.encode()?);
    send.write_all(&bytes).await?;
    Ok(())
}
