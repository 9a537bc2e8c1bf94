//! One write per gRPC answer on the listener's connections.
//!
//! A gRPC answer is three HTTP/2 frames: HEADERS, DATA and the trailers
//! (`grpc-status`). h2's writer copies a DATA payload into its write buffer
//! only when it is short: below 256 bytes on a connection that supports
//! vectored writes, below 1,024 bytes on one that does not. A longer payload
//! is chained as a separate slice, and nothing more is buffered behind it
//! until it is written, so the trailers go out in a second `writev`: two
//! system calls here and two wake-ups and reads in Envoy for every check.
//! A `CheckResponse` is typically 300-900 bytes, so on a connection with
//! vectored writes every answer is split.
//!
//! [`Coalesced`] is the accepted TCP stream declaring that it does not
//! write vectored: h2 then copies the payload and writes the whole answer
//! at once. Copying a kilobyte costs far less than the second system call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection that h2 writes with plain (not vectored) writes.
pub struct Coalesced(TcpStream);

impl Coalesced {
    pub fn new(stream: TcpStream) -> Self {
        Coalesced(stream)
    }
}

impl AsyncRead for Coalesced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    /// The point of the type: h2 copies short DATA payloads (see the module
    /// doc) instead of chaining them.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connected for Coalesced {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}
