//! The xenstore client on what xenstored, or a guest through it, may send: the wire codec on a
//! byte stream cut anywhere, and dom0's parsing of the values a guest writes.
//!
//! Every message the decoder gives must encode back to the bytes it came from, and every value
//! that parses as valid must be one the guest writer could have written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomcount::xen::{
    report::{Field, KEYS, Published},
    wire::{self, Decoder, HEADER_LEN, PAYLOAD_MAX},
};

fuzz_target!(|data: &[u8]| {
    // The stream, cut into pieces of the size the first byte says.
    let cut = data.first().map_or(1, |b| usize::from(*b % 64) + 1);
    let mut dec = Decoder::new();
    let mut offset = 0;
    'stream: for chunk in data.chunks(cut) {
        dec.push(chunk);
        loop {
            match dec.next_message() {
                Ok(Some(m)) => {
                    assert!(m.payload.len() <= PAYLOAD_MAX);
                    let mut again = m.header.to_bytes().to_vec();
                    again.extend_from_slice(&m.payload);
                    assert_eq!(&data[offset..offset + again.len()], &again[..]);
                    offset += HEADER_LEN + m.payload.len();
                }
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
    }
    wire::fuzz_stream(data);

    // The values: one piece per key, split at NULs.
    let pieces: Vec<&[u8]> = data.split(|b| *b == 0).collect();
    let p = Published::parse(|key| {
        let i = KEYS.iter().position(|k| *k == key)?;
        pieces.get(i).copied()
    });
    if let Field::Valid(n) = p.kills {
        let digits = std::str::from_utf8(pieces[0]).expect("valid means ASCII digits");
        assert_eq!(digits.parse::<u64>().ok(), Some(n));
    }
    if let Field::Valid(c) = &p.last_kill_comm {
        assert!(!c.chars().any(char::is_control));
    }
    let _ = p.invalid_keys();
});
