//! kilnd's gRPC protocol (proto/kiln/v1/build.proto), generated at build time.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("kiln.v1");
}
