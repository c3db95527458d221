//! Codec micro-benchmarks: decoding client frames and encoding server
//! frames, per frame. `cargo bench --bench codec`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::net::{ClientCodec, ServerCodec, ServerFrame};
use herald::{ClientId, Message, Seq};
use tokio_util::codec::Decoder;

const FRAMES: usize = 1000;

fn decode_sends(c: &mut Criterion) {
    let text = "x".repeat(100);
    let mut input = Vec::new();
    for i in 0..FRAMES {
        input.extend_from_slice(format!("SEND {i:06} {text}\n").as_bytes());
    }
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.bench_function("SEND 100 B", |b| {
        b.iter(|| {
            let mut codec = ServerCodec::new(65_536);
            let mut buf = BytesMut::from(&input[..]);
            let mut n = 0;
            while let Ok(Some(item)) = codec.decode(&mut buf) {
                assert!(item.is_ok());
                n += 1;
            }
            assert_eq!(n, FRAMES);
        })
    });
    let mut msgs = Vec::new();
    for i in 0..FRAMES {
        let m = Message::new(
            Seq(i as u64 + 1),
            1_764_080_000_000,
            ClientId::new("sender-7").unwrap(),
            text.as_bytes(),
        );
        msgs.extend_from_slice(m.frame());
    }
    g.bench_function("MSG 100 B (client side)", |b| {
        b.iter(|| {
            let mut codec = ClientCodec::default();
            let mut buf = BytesMut::from(&msgs[..]);
            let mut n = 0;
            while let Ok(Some(item)) = codec.decode(&mut buf) {
                assert!(item.is_ok());
                n += 1;
            }
            assert_eq!(n, FRAMES);
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let text = Bytes::from("x".repeat(100));
    let from = ClientId::new("sender-7").unwrap();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.bench_function("MSG 100 B (once per message)", |b| {
        b.iter(|| {
            for i in 0..FRAMES {
                std::hint::black_box(Message::new(
                    Seq(i as u64 + 1),
                    1_764_080_000_000,
                    from.clone(),
                    &text,
                ));
            }
        })
    });
    g.bench_function("SENT", |b| {
        let mut out = BytesMut::with_capacity(FRAMES * 16);
        b.iter(|| {
            out.clear();
            for i in 0..FRAMES {
                ServerFrame::Sent {
                    seq: Seq(i as u64 + 1_000_000),
                }
                .encode(&mut out);
            }
            std::hint::black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, decode_sends, encode);
criterion_main!(benches);
