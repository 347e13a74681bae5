//! The daemon's request parser on whatever a local user sends to the socket.
//!
//! The input is cut into lines as the daemon cuts them (up to a newline, at most `MAX_LINE`
//! bytes; a longer line ends the connection). Each line must give either a request that means
//! what it says (it survives a round trip through its JSON) or an error answer that is one line a
//! client reads back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomcount::protocol::{MAX_LINE, Response, parse_request};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        let limit = rest.len().min(MAX_LINE);
        let len = rest[..limit]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(limit, |i| i + 1);
        let (line, tail) = rest.split_at(len);
        rest = tail;
        if !line.ends_with(b"\n") && line.len() >= MAX_LINE {
            // The daemon answers "too long" and closes the connection.
            break;
        }
        match parse_request(line) {
            Ok(request) => {
                let json = serde_json::to_vec(&request).expect("a request serializes");
                assert_eq!(parse_request(&json).ok(), Some(request));
            }
            Err(message) => {
                let answer = Response::Error(message);
                let json = serde_json::to_vec(&answer).expect("an answer serializes");
                assert!(!json.contains(&b'\n'), "the answer is one line");
                let read: Response = serde_json::from_slice(&json).expect("a client reads it");
                assert_eq!(read, answer);
            }
        }
    }
});
