//! The chunked body decoder on arbitrary bytes: never a panic, the same data, end and error
//! whether the body arrives whole, byte by byte or cut anywhere, and never more data than the
//! limit. The first byte picks the limit and where to cut; the rest is the body.
#![no_main]

use fulcrum_balancer::http1::{ChunkError, ChunkedDecoder};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    data: Vec<u8>,
    end: Option<usize>,
    error: Option<ChunkError>,
    trailers: bool,
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    // Small limits hit TooLarge; the largest checks that sizes near u64::MAX do not overflow.
    let max_data = [0, 16, 4096, u64::MAX][usize::from(selector & 3)];
    let whole = decode(body, max_data, &[]);
    let all_bytes: Vec<usize> = (1..body.len()).collect();
    assert_eq!(decode(body, max_data, &all_bytes), whole, "byte by byte");
    let cut = usize::from(selector >> 2) * body.len() / 63;
    assert_eq!(
        decode(body, max_data, &[cut, cut + 1]),
        whole,
        "cut at {cut}"
    );
    assert!(whole.data.len() as u64 <= max_data);
    if let Some(end) = whole.end {
        assert!(body[..end].ends_with(b"\r\n\r\n"));
    }
});

/// Feeds `body` in pieces ending at `cuts` (then the rest), as the proxy does.
fn decode(body: &[u8], max_data: u64, cuts: &[usize]) -> Decoded {
    let mut decoder = ChunkedDecoder::new(max_data);
    let mut out = Decoded {
        data: Vec::new(),
        end: None,
        error: None,
        trailers: false,
    };
    let mut offset = 0;
    for end in cuts.iter().copied().chain([body.len()]) {
        let end = end.clamp(offset, body.len());
        while offset < end {
            let input = &body[offset..end];
            let step = match decoder.feed(input) {
                Ok(step) => step,
                Err(e) => {
                    assert_eq!(decoder.feed(input), Err(e), "an error stays");
                    out.error = Some(e);
                    return out;
                }
            };
            assert!(step.consumed <= input.len());
            assert!(step.consumed > 0 || step.done, "no progress");
            if let Some(span) = step.data {
                assert!(span.start < span.end && span.end as usize <= step.consumed);
                out.data.extend_from_slice(span.of(input));
            }
            offset += step.consumed;
            assert_eq!(decoder.data_bytes(), out.data.len() as u64);
            if step.done {
                out.end = Some(offset);
                out.trailers = decoder.trailers();
                return out;
            }
        }
    }
    out
}
