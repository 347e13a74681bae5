//! The xenstore wire protocol of Xen's `xs_wire.h`, written from the header's text (the Rust
//! crates that speak it are GPL, which this project's licence cannot take).
//!
//! A message is a header of four little-endian `u32` (type, request id, transaction id, payload
//! length) and at most [`PAYLOAD_MAX`] bytes of payload: NUL-separated strings for most
//! requests, a path then a raw value for `WRITE`. Replies carry the request's id and type, or
//! type `ERROR` with an errno name (`"ENOENT\0"`); `WATCH_EVENT` (15) arrives at any time, also
//! between a request and its reply. Everything here is pure: bytes in, typed values out, so the
//! codec is unit-tested and fuzzed without a store.
use std::fmt;

/// Bytes in a header.
pub const HEADER_LEN: usize = 16;
/// The largest payload xenstored accepts or sends (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// The longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;

/// The message types of `xs_wire.h` (`enum xsd_sockmsg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl Op {
    /// The type for a header's number, `None` for a number this client does not know.
    pub fn from_u32(n: u32) -> Option<Op> {
        use Op::*;
        Some(match n {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// The errno names xenstored answers with (`xsd_errors` in `xs_wire.h`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Errno {
    Inval,
    Acces,
    Exist,
    IsDir,
    NoEnt,
    NoMem,
    NoSpc,
    Io,
    NotEmpty,
    NoSys,
    RoFs,
    Busy,
    /// A transaction conflicted with another writer: run it again.
    Again,
    IsConn,
    /// Too big: the per-domain quota, or a message over the limit.
    TooBig,
    Perm,
    /// A quota (oxenstored names some refusals `EQUOTA`).
    Quota,
    /// A name this client does not know (kept, at most 32 bytes, for the message).
    Other(String),
}

impl Errno {
    const NAMES: [(&'static str, Errno); 17] = [
        ("EINVAL", Errno::Inval),
        ("EACCES", Errno::Acces),
        ("EEXIST", Errno::Exist),
        ("EISDIR", Errno::IsDir),
        ("ENOENT", Errno::NoEnt),
        ("ENOMEM", Errno::NoMem),
        ("ENOSPC", Errno::NoSpc),
        ("EIO", Errno::Io),
        ("ENOTEMPTY", Errno::NotEmpty),
        ("ENOSYS", Errno::NoSys),
        ("EROFS", Errno::RoFs),
        ("EBUSY", Errno::Busy),
        ("EAGAIN", Errno::Again),
        ("EISCONN", Errno::IsConn),
        ("E2BIG", Errno::TooBig),
        ("EPERM", Errno::Perm),
        ("EQUOTA", Errno::Quota),
    ];

    /// The errno of an `ERROR` reply's payload (the name, NUL-terminated).
    pub fn parse(payload: &[u8]) -> Errno {
        let name = payload.split(|b| *b == 0).next().unwrap_or_default();
        for (n, e) in &Errno::NAMES {
            if n.as_bytes() == name {
                return e.clone();
            }
        }
        let shown: String = String::from_utf8_lossy(name)
            .chars()
            .filter(|c| !c.is_control())
            .take(32)
            .collect();
        Errno::Other(shown)
    }

    /// The errno's name, as xenstored writes it.
    pub fn name(&self) -> &str {
        match self {
            Errno::Other(s) => s,
            e => Errno::NAMES
                .iter()
                .find(|(_, x)| x == e)
                .map(|(n, _)| *n)
                .unwrap_or("E?"),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes are not a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("xenstore message of {0} bytes, over the protocol's {PAYLOAD_MAX}")]
    TooLong(u32),
    #[error("xenstore request of {0} bytes does not fit in one message ({PAYLOAD_MAX} at most)")]
    RequestTooLong(usize),
    #[error("xenstore path with a NUL byte")]
    NulInPath,
}

/// A message's header, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        for (i, v) in [self.kind, self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            kind: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }
}

/// One whole message: its header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payload: Vec<u8>,
}

impl Message {
    /// The message's type, `None` where this client does not know the number.
    pub fn op(&self) -> Option<Op> {
        Op::from_u32(self.header.kind)
    }
}

/// Encodes a request: the header, then `parts` joined as the payload. Each part is taken as is
/// (callers add the NULs the request needs, see [`strings`]).
pub fn encode(op: Op, req_id: u32, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    if payload.len() > PAYLOAD_MAX {
        return Err(WireError::RequestTooLong(payload.len()));
    }
    let header = Header {
        kind: op as u32,
        req_id,
        tx_id,
        len: payload.len() as u32,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// A payload of NUL-terminated strings (`"path\0token\0"`); a string with a NUL inside is refused.
pub fn strings(parts: &[&str]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    for p in parts {
        if p.as_bytes().contains(&0) {
            return Err(WireError::NulInPath);
        }
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    Ok(out)
}

/// A `WRITE` payload: the path, a NUL, then the value's bytes (no NUL after them).
pub fn write_payload(path: &str, value: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut out = strings(&[path])?;
    out.extend_from_slice(value);
    Ok(out)
}

/// Splits a reply of NUL-separated strings (`DIRECTORY`, `GET_PERMS`, `WATCH_EVENT`), dropping
/// the empty piece after the last NUL. Bytes that are not UTF-8 are replaced, never trusted.
pub fn split_strings(payload: &[u8]) -> Vec<String> {
    let mut parts: Vec<&[u8]> = payload.split(|b| *b == 0).collect();
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts
        .into_iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// The reply of `READ` or `GET_DOMAIN_PATH`-like requests as a string, without a trailing NUL.
pub fn reply_string(payload: &[u8]) -> String {
    let p = payload.strip_suffix(&[0]).unwrap_or(payload);
    String::from_utf8_lossy(p).into_owned()
}

/// A watch event: the path that changed and the token given to `WATCH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

impl WatchEvent {
    /// The event in a `WATCH_EVENT` payload, `None` if it lacks the path or the token.
    pub fn parse(payload: &[u8]) -> Option<WatchEvent> {
        let mut parts = split_strings(payload).into_iter();
        Some(WatchEvent {
            path: parts.next()?,
            token: parts.next()?,
        })
    }
}

/// One entry of a node's permissions (`GET_PERMS`): `r5` = domain 5 may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    /// `r`ead, `w`rite, `b`oth, `n`one; the first entry names the owner and everyone's access.
    pub access: u8,
    pub domid: u32,
}

/// The permission list of a `GET_PERMS` reply; `None` if an entry does not parse.
pub fn parse_perms(payload: &[u8]) -> Option<Vec<Perm>> {
    split_strings(payload)
        .iter()
        .map(|p| {
            let (access, domid) = p.split_at_checked(1)?;
            let access = access.as_bytes()[0];
            if !b"rwbn".contains(&access) {
                return None;
            }
            Some(Perm {
                access,
                domid: domid.parse().ok()?,
            })
        })
        .collect()
}

/// Reassembles messages from a byte stream (the unix socket, or the xenbus device's reads),
/// which may cut them anywhere. Holds at most one message and a header.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` until one is there. A header that announces more than
    /// [`PAYLOAD_MAX`] bytes is an error: the stream cannot be trusted past it.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        let Some(head) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::from_bytes(head);
        if header.len as usize > PAYLOAD_MAX {
            return Err(WireError::TooLong(header.len));
        }
        let total = HEADER_LEN + header.len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(Message { header, payload }))
    }

    /// Bytes held that are not yet a whole message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Fuzz entry: feeds `bytes` to a [`Decoder`] in pieces and parses every message as the client
/// would. Returns the number of messages; never panics.
#[doc(hidden)]
pub fn fuzz_stream(bytes: &[u8]) -> usize {
    let mut dec = Decoder::new();
    let mut n = 0;
    let cut = bytes.first().map_or(1, |b| (*b as usize % 64) + 1);
    for chunk in bytes.chunks(cut) {
        dec.push(chunk);
        loop {
            match dec.next_message() {
                Ok(Some(m)) => {
                    n += 1;
                    match m.op() {
                        Some(Op::Error) => {
                            let _ = Errno::parse(&m.payload).name().len();
                        }
                        Some(Op::WatchEvent) => {
                            let _ = WatchEvent::parse(&m.payload);
                        }
                        Some(Op::GetPerms) => {
                            let _ = parse_perms(&m.payload);
                        }
                        _ => {
                            let _ = split_strings(&m.payload);
                            let _ = reply_string(&m.payload);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return n,
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_four_le_words() {
        let b = encode(Op::Write, 7, 3, b"a\0b").unwrap();
        assert_eq!(
            &b[..16],
            &[11, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0][..]
        );
        assert_eq!(&b[16..], b"a\0b");
    }

    #[test]
    fn request_over_the_limit_is_refused() {
        assert_eq!(
            encode(Op::Write, 1, 0, &[b'x'; PAYLOAD_MAX + 1]),
            Err(WireError::RequestTooLong(PAYLOAD_MAX + 1))
        );
        assert!(encode(Op::Write, 1, 0, &[b'x'; PAYLOAD_MAX]).is_ok());
        assert_eq!(strings(&["a\0b"]), Err(WireError::NulInPath));
    }

    #[test]
    fn decoder_reassembles_messages_cut_anywhere() {
        let mut stream = encode(Op::Read, 1, 0, b"42").unwrap();
        stream.extend(encode(Op::WatchEvent, 0, 0, b"/a\0tok\0").unwrap());
        stream.extend(encode(Op::Error, 2, 0, b"EAGAIN\0").unwrap());
        for cut in 1..stream.len() {
            let mut dec = Decoder::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(cut) {
                dec.push(chunk);
                while let Some(m) = dec.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 3, "cut {cut}");
            assert_eq!(got[0].payload, b"42");
            assert_eq!(
                WatchEvent::parse(&got[1].payload),
                Some(WatchEvent {
                    path: "/a".into(),
                    token: "tok".into()
                })
            );
            assert_eq!(Errno::parse(&got[2].payload), Errno::Again);
            assert_eq!(dec.pending(), 0);
        }
    }

    #[test]
    fn decoder_refuses_a_length_over_the_limit() {
        let mut h = Header {
            kind: 2,
            req_id: 1,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        }
        .to_bytes()
        .to_vec();
        h.extend([0; 8]);
        let mut dec = Decoder::new();
        dec.push(&h);
        assert_eq!(
            dec.next_message(),
            Err(WireError::TooLong(PAYLOAD_MAX as u32 + 1))
        );
    }

    #[test]
    fn errno_names() {
        assert_eq!(Errno::parse(b"ENOENT\0"), Errno::NoEnt);
        assert_eq!(Errno::parse(b"E2BIG\0"), Errno::TooBig);
        assert_eq!(Errno::parse(b"EQUOTA\0"), Errno::Quota);
        assert_eq!(Errno::parse(b"EACCES"), Errno::Acces);
        assert_eq!(Errno::Again.to_string(), "EAGAIN");
        let odd = Errno::parse(b"EWHAT\x1b[31m\0");
        assert_eq!(odd, Errno::Other("EWHAT[31m".into()));
    }

    #[test]
    fn perms_and_strings() {
        assert_eq!(
            parse_perms(b"n5\0r0\0"),
            Some(vec![
                Perm {
                    access: b'n',
                    domid: 5
                },
                Perm {
                    access: b'r',
                    domid: 0
                }
            ])
        );
        assert_eq!(parse_perms(b"x5\0"), None);
        assert_eq!(parse_perms(b"r\0"), None);
        assert_eq!(parse_perms("é5\0".as_bytes()), None);
        assert_eq!(split_strings(b"a\0b\0"), vec!["a", "b"]);
        assert_eq!(split_strings(b""), Vec::<String>::new());
        assert_eq!(reply_string(b"/local/domain/3\0"), "/local/domain/3");
        assert_eq!(WatchEvent::parse(b"/a\0"), None);
    }

    #[test]
    fn fuzz_entry_survives_garbage() {
        let mut junk = encode(Op::GetPerms, 1, 0, b"\xff\xfe\0b").unwrap();
        junk.extend([0xff; 40]);
        assert_eq!(fuzz_stream(&junk), 1);
    }
}
