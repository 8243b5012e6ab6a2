//! A connection on the local administrator's unix socket, made acceptable to
//! hyper whatever `:authority` the client sends.
//!
//! gRPC clients name a unix socket's authority after its path: grpcio (C-core)
//! 1.6x and later send `:authority: tmp%2Fdir%2Fshoal.sock` for
//! `unix:///tmp/dir/shoal.sock`. The `http` crate refuses a `%` in a host, so
//! h2 answers every request with RST_STREAM(PROTOCOL_ERROR) before tonic sees
//! it; the client's only way out was to set `grpc.default_authority` itself.
//! On this socket the authority means nothing (the socket is the address and
//! its mode is the access check), so the client-to-server bytes pass through
//! [`AuthorityFix`], which re-encodes every header block with an `:authority`
//! hyper accepts (`localhost` in place of one it would refuse). The TCP
//! listener does not use it: there, hyper's checks stay as they are.
//!
//! Invariant: every header block the client sends is decoded with a decoder
//! that mirrors the client's HPACK state and encoded again with an encoder
//! whose state the server mirrors; every other frame passes byte for byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::OwnedSemaphorePermit;
use tonic::codegen::http::uri::Authority;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// One accepted connection on the unix socket.
pub struct LocalConn {
    stream: UnixStream,
    fix: AuthorityFix,
    scratch: Box<[u8]>,
    _permit: OwnedSemaphorePermit,
}

impl LocalConn {
    pub(crate) fn new(stream: UnixStream, permit: OwnedSemaphorePermit) -> Self {
        LocalConn {
            stream,
            fix: AuthorityFix::default(),
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
            _permit: permit,
        }
    }
}

impl Connected for LocalConn {
    type ConnectInfo = UdsConnectInfo;
    fn connect_info(&self) -> UdsConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LocalConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.fix.take_output(buf) {
                return Poll::Ready(Ok(()));
            }
            let mut scratch = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut scratch) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // End of file; a frame cut short is the server's to judge.
                Poll::Ready(Ok(())) if scratch.filled().is_empty() => {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => this.fix.push(scratch.filled())?,
            }
        }
    }
}

impl AsyncWrite for LocalConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Frames we write carry at most this much: the smallest maximum frame size
/// a server may announce, so every server accepts it.
const MAX_FRAME: usize = 16 * 1024;
/// A header block larger than this is refused (hyper's own limit on a
/// header list is 16 KiB; this only bounds what we buffer).
const MAX_BLOCK: usize = 1024 * 1024;
/// What a refused `:authority` becomes.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

/// Where the client-to-server byte stream is.
#[derive(Debug, Clone, Copy)]
enum At {
    Preface,
    FrameHeader,
    /// Payload bytes of a frame that passes unchanged.
    Passing(usize),
    /// The payload of a HEADERS or CONTINUATION frame, read whole.
    HeaderPayload {
        kind: u8,
        flags: u8,
        len: usize,
    },
}

/// A header block being gathered from HEADERS and CONTINUATION frames.
struct Block {
    stream_id: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The rewriter of the client's HTTP/2 header blocks (see the module doc).
pub(crate) struct AuthorityFix {
    at: At,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

impl Default for AuthorityFix {
    fn default() -> Self {
        AuthorityFix {
            at: At::Preface,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            block: None,
            decoder: loona_hpack::Decoder::new(),
            encoder: loona_hpack::Encoder::new(),
        }
    }
}

fn malformed(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

impl AuthorityFix {
    /// Move rewritten bytes into `buf`; false when there are none yet.
    pub(crate) fn take_output(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let ready = &self.output[self.sent..];
        if ready.is_empty() || buf.remaining() == 0 {
            return false;
        }
        let n = ready.len().min(buf.remaining());
        buf.put_slice(&ready[..n]);
        self.sent += n;
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
        }
        true
    }

    /// Take bytes the client sent.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.input.extend_from_slice(bytes);
        let mut used = 0;
        loop {
            let rest = &self.input[used..];
            match self.at {
                At::Preface if rest.len() >= PREFACE_LEN => {
                    self.output.extend_from_slice(&rest[..PREFACE_LEN]);
                    used += PREFACE_LEN;
                    self.at = At::FrameHeader;
                }
                At::FrameHeader if rest.len() >= FRAME_HEADER_LEN => {
                    let header: [u8; FRAME_HEADER_LEN] =
                        rest[..FRAME_HEADER_LEN].try_into().expect("nine bytes");
                    used += FRAME_HEADER_LEN;
                    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                    let (kind, flags) = (header[3], header[4]);
                    if kind == HEADERS || kind == CONTINUATION {
                        if len > MAX_BLOCK {
                            return Err(malformed("HTTP/2 header frame too large"));
                        }
                        if kind == HEADERS {
                            self.block = Some(Block {
                                stream_id: header[5..9].try_into().expect("four bytes"),
                                end_stream: flags & END_STREAM != 0,
                                priority: None,
                                fragment: Vec::new(),
                            });
                        }
                        self.at = At::HeaderPayload { kind, flags, len };
                    } else {
                        self.output.extend_from_slice(&header);
                        self.at = At::Passing(len);
                    }
                }
                At::Passing(0) => self.at = At::FrameHeader,
                At::Passing(left) if !rest.is_empty() => {
                    let n = left.min(rest.len());
                    self.output.extend_from_slice(&rest[..n]);
                    used += n;
                    self.at = At::Passing(left - n);
                }
                At::HeaderPayload { kind, flags, len } if rest.len() >= len => {
                    let payload = rest[..len].to_vec();
                    used += len;
                    self.at = At::FrameHeader;
                    self.header_payload(kind, flags, &payload)?;
                }
                _ => break,
            }
        }
        self.input.drain(..used);
        Ok(())
    }

    fn header_payload(&mut self, kind: u8, flags: u8, payload: &[u8]) -> io::Result<()> {
        let block = self
            .block
            .as_mut()
            .ok_or_else(|| malformed("HTTP/2 CONTINUATION without HEADERS"))?;
        let mut fragment = payload;
        if kind == HEADERS {
            if flags & PADDED != 0 {
                let (&pad, rest) = fragment
                    .split_first()
                    .ok_or_else(|| malformed("HTTP/2 HEADERS padding"))?;
                fragment = rest
                    .get(..rest.len().saturating_sub(pad as usize))
                    .filter(|_| (pad as usize) <= rest.len())
                    .ok_or_else(|| malformed("HTTP/2 HEADERS padding"))?;
            }
            if flags & PRIORITY != 0 {
                let (priority, rest) = fragment
                    .split_first_chunk::<5>()
                    .ok_or_else(|| malformed("HTTP/2 HEADERS priority"))?;
                block.priority = Some(*priority);
                fragment = rest;
            }
        }
        if block.fragment.len() + fragment.len() > MAX_BLOCK {
            return Err(malformed("HTTP/2 header block too large"));
        }
        block.fragment.extend_from_slice(fragment);
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("checked above");
            self.rewrite(block)?;
        }
        Ok(())
    }

    /// Decode `block`, mend its `:authority`, encode it and frame it again.
    fn rewrite(&mut self, block: Block) -> io::Result<()> {
        let mut fields = self
            .decoder
            .decode(&block.fragment)
            .map_err(|e| malformed(format!("HTTP/2 header block: {e:?}")))?;
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority" && Authority::try_from(value.as_slice()).is_err() {
                *value = LOCAL_AUTHORITY.to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut first = Vec::with_capacity(5);
        let mut flags = 0;
        if block.end_stream {
            flags |= END_STREAM;
        }
        if let Some(priority) = block.priority {
            flags |= PRIORITY;
            first.extend_from_slice(&priority);
        }
        let room = MAX_FRAME - first.len();
        let (head, mut tail) = encoded.split_at(encoded.len().min(room));
        first.extend_from_slice(head);
        if tail.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame(HEADERS, flags, block.stream_id, &first);
        while !tail.is_empty() {
            let (chunk, rest) = tail.split_at(tail.len().min(MAX_FRAME));
            tail = rest;
            let flags = if tail.is_empty() { END_HEADERS } else { 0 };
            self.frame(CONTINUATION, flags, block.stream_id, chunk);
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, stream_id: [u8; 4], payload: &[u8]) {
        let len = (payload.len() as u32).to_be_bytes();
        self.output.extend_from_slice(&len[1..]);
        self.output.extend_from_slice(&[kind, flags]);
        self.output.extend_from_slice(&stream_id);
        self.output.extend_from_slice(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Feed `bytes` one at a time (the worst split) and collect the output.
    fn run(fix: &mut AuthorityFix, bytes: &[u8]) -> Vec<u8> {
        for b in bytes {
            fix.push(std::slice::from_ref(b)).unwrap();
        }
        let mut out = vec![0u8; 1 << 20];
        let mut buf = ReadBuf::new(&mut out);
        while fix.take_output(&mut buf) {}
        buf.filled().to_vec()
    }

    /// The frames in `bytes` after the preface: (kind, flags, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
        bytes = &bytes[PREFACE_LEN..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            out.push((bytes[3], bytes[4], bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    #[test]
    fn a_percent_encoded_authority_becomes_localhost_and_the_rest_passes() {
        let mut client = loona_hpack::Encoder::new();
        let grpcio: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/shoal.v1.Control/ListServices"),
            (b":authority", b"tmp%2Fdir%2Fshoal.sock"),
            (b"te", b"trailers"),
        ];
        let first = client.encode(grpcio.iter().copied());
        // The second request refers to the first one's dynamic table entries.
        let second = client.encode(grpcio.iter().copied());
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &first));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
        // HEADERS split over a CONTINUATION, with padding.
        let (a, b) = second.split_at(second.len() / 2);
        let mut padded = vec![3u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | END_STREAM, 3, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));

        let mut fix = AuthorityFix::default();
        let out = run(&mut fix, &input);
        assert_eq!(&out[..PREFACE_LEN], PREFACE);
        let frames = frames(&out);
        assert_eq!(frames.len(), 4, "{frames:?}");
        assert_eq!((frames[0].0, frames[2].0), (0x4, 0x0));
        assert_eq!(frames[2].2, b"\0\0\0\0\0");
        let mut server = loona_hpack::Decoder::new();
        for (i, end_stream) in [(1, 0), (3, END_STREAM)] {
            let (kind, flags, payload) = &frames[i];
            assert_eq!(*kind, HEADERS);
            assert_eq!(*flags, END_HEADERS | end_stream);
            let fields = server.decode(payload).unwrap();
            let authority = fields.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"localhost");
            let path = fields.iter().find(|(n, _)| n == b":path").unwrap();
            assert_eq!(path.1, b"/shoal.v1.Control/ListServices");
        }
    }

    #[test]
    fn a_valid_authority_is_kept() {
        let mut client = loona_hpack::Encoder::new();
        let block = client.encode([(&b":authority"[..], &b"localhost:4280"[..])]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        let out = run(&mut AuthorityFix::default(), &input);
        let fields = loona_hpack::Decoder::new()
            .decode(&frames(&out)[0].2)
            .unwrap();
        assert_eq!(fields[0].1, b"localhost:4280");
    }
}
