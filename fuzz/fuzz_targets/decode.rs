//! Feeds arbitrary bytes, cut into arbitrary reads, to both decoders: they
//! must never panic, and must yield the same frames however the input was
//! split. Run with `cargo +nightly fuzz run decode` (see the README).
#![no_main]

use bytes::BytesMut;
use herald::net::{ClientCodec, ServerCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fn decode_all<D: Decoder>(mut codec: D, input: &[u8], step: usize) -> Vec<D::Item>
where
    D::Error: std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in input.chunks(step.max(1)) {
        buf.extend_from_slice(chunk);
        while let Ok(Some(item)) = codec.decode(&mut buf) {
            out.push(item);
        }
    }
    while let Ok(Some(item)) = codec.decode_eof(&mut buf) {
        out.push(item);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let max = usize::from(first % 64) + 1;
    let step = usize::from(first / 64) * 7 + 1;
    let whole = decode_all(ServerCodec::new(max), input, input.len().max(1));
    let split = decode_all(ServerCodec::new(max), input, step);
    assert_eq!(whole, split);
    let _ = decode_all(ClientCodec::new(max), input, step);
});
