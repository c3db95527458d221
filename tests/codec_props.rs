//! Property tests of the codec: no input makes it panic, the frames it
//! yields do not depend on how the bytes were split into reads, and every
//! frame survives encoding and decoding.

use bytes::{Bytes, BytesMut};
use herald::net::{
    ByeReason, ClientCodec, ClientFrame, ErrorCode, FrameError, ServerCodec, ServerFrame, Tags,
};
use herald::{ClientId, Seq};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

type Item = Result<ClientFrame, FrameError>;

/// Decodes `input` delivered in pieces cut at `cuts`, then end of stream.
fn decode_in_pieces(max: usize, input: &[u8], cuts: &[usize]) -> Vec<Item> {
    let mut codec = ServerCodec::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut from = 0;
    for to in points {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        while let Some(item) = codec
            .decode(&mut buf)
            .expect("decode never fails the stream")
        {
            out.push(item);
        }
    }
    while let Some(item) = codec
        .decode_eof(&mut buf)
        .expect("decode never fails the stream")
    {
        out.push(item);
    }
    out
}

/// Bytes that look like protocol traffic often enough to reach every parser
/// branch, with garbage, long lines and odd line ends mixed in.
fn traffic() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"LOGIN a\n".to_vec()),
        Just(b"SEND hi there\r\n".to_vec()),
        Just(b"ACK 12\n".to_vec()),
        Just(b"PING tok\n".to_vec()),
        Just(b"QUIT\n".to_vec()),
        Just(b"@mid=x1;k=v\\s SEND t\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(vec![0xff, 0xfe]),
        "[ -~]{0,80}".prop_map(|s| s.into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(piece, 0..30).prop_map(|v| v.concat())
}

fn client_id() -> impl Strategy<Value = ClientId> {
    "[A-Za-z0-9_.-]{1,64}".prop_map(|s| ClientId::new(&s).unwrap())
}

/// Text without line ends (what a frame can carry), at least one byte.
fn text() -> impl Strategy<Value = Bytes> {
    "[^\r\n]{1,200}".prop_map(Bytes::from)
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (client_id(), proptest::option::of("[!-~]{1,40}"))
            .prop_map(|(id, secret)| ClientFrame::Login { id, secret }),
        (text(), proptest::option::of("[A-Za-z0-9_.-]{1,64}")).prop_map(|(text, mid)| {
            ClientFrame::Send {
                text,
                tags: Tags { mid },
            }
        }),
        any::<u64>().prop_map(|n| ClientFrame::Ack { seq: Seq(n) }),
        proptest::option::of(text()).prop_map(|token| ClientFrame::Ping { token }),
        Just(ClientFrame::Quit),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let code = prop_oneof![
        Just(ErrorCode::BadFrame),
        Just(ErrorCode::FrameTooLong),
        Just(ErrorCode::NotLoggedIn),
        Just(ErrorCode::AlreadyLoggedIn),
        Just(ErrorCode::UnknownClient),
        Just(ErrorCode::EmptyMessage),
        Just(ErrorCode::BadAck),
        Just(ErrorCode::AuthFailed),
        Just(ErrorCode::Limit),
    ];
    let reason = prop_oneof![
        Just(ByeReason::Quit),
        Just(ByeReason::Replaced),
        Just(ByeReason::Shutdown),
        Just(ByeReason::Idle),
        Just(ByeReason::UnknownClient),
        Just(ByeReason::AuthFailed),
        Just(ByeReason::Limit),
    ];
    prop_oneof![
        (client_id(), any::<u64>()).prop_map(|(id, pending)| ServerFrame::Welcome { id, pending }),
        (any::<u64>(), any::<u64>(), client_id(), text()).prop_map(|(seq, unix_ms, from, text)| {
            ServerFrame::Msg {
                seq: Seq(seq),
                unix_ms,
                from,
                text,
            }
        }),
        any::<u64>().prop_map(|n| ServerFrame::Sent { seq: Seq(n) }),
        proptest::option::of(text()).prop_map(|token| ServerFrame::Pong { token }),
        (code, "[^\r\n]{0,80}").prop_map(|(code, r)| ServerFrame::Err(FrameError::new(code, r))),
        reason.prop_map(|reason| ServerFrame::Bye { reason }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_in_any_pieces_decode_the_same(
        input in traffic(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        max in 4usize..64,
    ) {
        let whole = decode_in_pieces(max, &input, &[]);
        let pieces = decode_in_pieces(max, &input, &cuts);
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..4096), max in 1usize..128) {
        let _ = decode_in_pieces(max, &input, &[1, 7, 100]);
        let mut codec = ClientCodec::new(max);
        let mut buf = BytesMut::from(&input[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let got = decode_in_pieces(1 << 20, &buf, &[]);
        prop_assert_eq!(got, vec![Ok(frame)]);
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let mut codec = ClientCodec::new(1 << 20);
        let got = codec.decode(&mut buf).unwrap();
        prop_assert_eq!(got, Some(Ok(frame)));
        prop_assert!(buf.is_empty());
    }
}
