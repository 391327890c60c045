//! The client port's Ordo service as it is served: the generated router for every method but
//! the two feed streams, Watch and WatchNotifications, whose messages arrive already encoded.
//!
//! A feed stream's producer runs on the feed runtime at the lowest priority
//! (`background.rs`). Were it to hand over messages, tonic would encode them in the
//! connection's task on the request runtime, at normal priority beside the epochs: a million
//! notifications is about 60 MB of protobuf to build. So each producer encodes its messages
//! itself ([`Outbox`](super::outbox::Outbox)) and the stream carries the bytes; the codec here
//! copies them into the HTTP/2 body. Requests are decoded as tonic's prost codec would. The
//! `Ordo` trait's `watch` and `watch_notifications` stay correct for anything that serves the
//! generated router alone (they decode the bytes back), but the node never does.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use ordo_proto::v1;
use ordo_proto::v1::ordo_server::OrdoServer;
use prost::bytes::{BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::{NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

use super::OrdoService;

/// A stream of messages encoded by their producer.
pub type EncodedStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

const WATCH_PATH: &str = "/ordo.v1.Ordo/Watch";
const WATCH_NOTIFICATIONS_PATH: &str = "/ordo.v1.Ordo/WatchNotifications";

/// The `ordo.v1.Ordo` service on the client port.
#[derive(Clone)]
pub struct ClientPort {
    generated: OrdoServer<OrdoService>,
    service: Arc<OrdoService>,
    message_bytes_max: usize,
}

impl ClientPort {
    /// Serves `service`, refusing requests and responses over `message_bytes_max`.
    pub fn new(service: OrdoService, message_bytes_max: usize) -> Self {
        let service = Arc::new(service);
        service
            .me
            .set(Arc::downgrade(&service))
            .expect("a service is shared once");
        let generated = OrdoServer::from_arc(service.clone())
            .max_decoding_message_size(message_bytes_max)
            .max_encoding_message_size(message_bytes_max);
        ClientPort {
            generated,
            service,
            message_bytes_max,
        }
    }

    /// Watch and WatchNotifications streams open now.
    pub fn watchers_open(&self) -> usize {
        self.service.watchers_open()
    }

    /// Bytes the feed streams' buffers hold now, all together.
    pub fn stream_buffer_bytes(&self) -> usize {
        self.service.stream_buffer_bytes()
    }

    fn feed_stream<Req, S, B>(
        &self,
        method: S,
        req: http::Request<B>,
    ) -> <Self as Service<http::Request<B>>>::Future
    where
        Req: Message + Default + Send + 'static,
        S: ServerStreamingService<Req, Response = Bytes> + Send + 'static,
        S::ResponseStream: Send + 'static,
        S::Future: Send,
        B: tonic::codegen::Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let max = self.message_bytes_max;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(PreEncoded::<Req>(PhantomData))
                .apply_max_message_size_config(Some(max), Some(max));
            Ok(grpc.server_streaming(method, req).await)
        })
    }
}

impl NamedService for ClientPort {
    const NAME: &'static str = <OrdoServer<OrdoService> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for ClientPort
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            WATCH_PATH => self.feed_stream(Watch(self.service.clone()), req),
            WATCH_NOTIFICATIONS_PATH => {
                self.feed_stream(WatchNotifications(self.service.clone()), req)
            }
            _ => self.generated.call(req),
        }
    }
}

struct Watch(Arc<OrdoService>);

impl ServerStreamingService<v1::WatchRequest> for Watch {
    type Response = Bytes;
    type ResponseStream = EncodedStream;
    type Future = BoxFuture<Response<EncodedStream>, Status>;

    fn call(&mut self, request: Request<v1::WatchRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch_inner(request).await })
    }
}

struct WatchNotifications(Arc<OrdoService>);

impl ServerStreamingService<v1::WatchNotificationsRequest> for WatchNotifications {
    type Response = Bytes;
    type ResponseStream = EncodedStream;
    type Future = BoxFuture<Response<EncodedStream>, Status>;

    fn call(&mut self, request: Request<v1::WatchNotificationsRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch_notifications_inner(request).await })
    }
}

/// Decodes a `Req` as tonic's prost codec does; encodes bytes as they are.
struct PreEncoded<Req>(PhantomData<fn() -> Req>);

impl<Req: Message + Default + Send + 'static> Codec for PreEncoded<Req> {
    type Encode = Bytes;
    type Decode = Req;
    type Encoder = AsEncoded;
    type Decoder = Decode<Req>;

    fn encoder(&mut self) -> AsEncoded {
        AsEncoded
    }

    fn decoder(&mut self) -> Decode<Req> {
        Decode(PhantomData)
    }
}

struct AsEncoded;

impl Encoder for AsEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct Decode<Req>(PhantomData<fn() -> Req>);

impl<Req: Message + Default> Decoder for Decode<Req> {
    type Item = Req;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Req>, Status> {
        Req::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
    }
}

/// An encoded stream as the generated `Ordo` trait wants it: decoded again. Only a server
/// that mounts the generated router without [`ClientPort`] pays for this.
pub fn decoded<T: Message + Default + 'static>(
    stream: EncodedStream,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    use futures::StreamExt;
    Box::pin(stream.map(|item| {
        item.and_then(|bytes| {
            T::decode(bytes)
                .map_err(|e| Status::internal(format!("re-decoding a feed message: {e}")))
        })
    }))
}
