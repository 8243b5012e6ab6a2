//! The gRPC codec of every service: prost's, with small first buffers.
//!
//! tonic gives each call a buffer to encode its replies and one to decode its
//! requests, 8 KiB each at first, and a stream keeps them for its lifetime. An
//! agent holds four streams open on its manager (session, assignments, status
//! reports, log subscriptions), so at 10,000 nodes those idle buffers alone
//! were about 300 MiB of the manager's memory. The messages of an idle
//! stream are a few hundred bytes; a buffer still grows, by doubling, for a
//! large one (a node's whole assignment set, a Raft snapshot chunk).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// First size of a call's encode and decode buffers.
pub const BUFFER_SIZE: usize = 512;

/// Encoded replies gathered before a stream yields them to the connection
/// (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers; the generated clients and
/// servers use it (`build.rs`).
#[derive(Debug, Clone)]
pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codec::{Decoder, Encoder};

    #[test]
    fn both_sides_start_small() {
        let mut codec = SmallCodec::<crate::HeartbeatRequest, crate::HeartbeatResponse>::default();
        let small = format!("{:?}", settings());
        assert!(small.contains("buffer_size: 512"), "{small}");
        assert_eq!(format!("{:?}", codec.encoder().buffer_settings()), small);
        assert_eq!(format!("{:?}", codec.decoder().buffer_settings()), small);
    }
}
