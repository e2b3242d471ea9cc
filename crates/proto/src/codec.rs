//! The codec of keyraft's gRPC servers: prost's, except that a request that is not valid
//! protobuf (invalid UTF-8 in a string, a wrong wire type, a truncated field) is answered
//! INVALID_ARGUMENT, the client's fault, where tonic-prost answers INTERNAL.
//!
//! Only the generated servers use it (`build.rs` generates them apart from the clients): a
//! client that cannot decode a server's answer keeps prost's INTERNAL, which the client
//! library treats as a faulty replica to move away from.

use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

/// Encodes answers with prost; decodes requests with [`RequestDecoder`].
#[derive(Debug, Clone)]
pub struct ServerCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _type: PhantomData }
    }
}

/// Decodes a request message; undecodable bytes are the client's fault.
#[derive(Debug)]
pub struct RequestDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_request(buf).map(Some)
    }
}

/// Decodes a request message of type `U`, INVALID_ARGUMENT naming it if it is not one.
pub fn decode_request<U: Message + Default>(buf: impl prost::bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|e| {
        let name = std::any::type_name::<U>().rsplit("::").next().unwrap_or("request");
        Status::invalid_argument(format!("the request is not a valid {name} protobuf message: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::LookupRequest;

    fn decode(bytes: &[u8]) -> Result<LookupRequest, Status> {
        decode_request(bytes)
    }

    #[test]
    fn undecodable_requests_are_invalid_arguments_naming_the_message() {
        for bad in [&[0x0a, 0x02, 0xff, 0xfe][..], &[0x12, 0x01, 0x00], &[0x0a, 0x05, b'a'], &[0x0f]] {
            let Err(status) = decode(bad) else { panic!("{bad:?} decoded") };
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains("LookupRequest"), "{status:?}");
        }
        let good = LookupRequest { user_id: "bob".into(), ..Default::default() };
        assert_eq!(decode(&good.encode_to_vec()).ok(), Some(good));
    }
}
