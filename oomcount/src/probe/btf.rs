//! A small streaming reader of the kernel's BTF: struct member offsets and enum values by name.
//!
//! oomcount's programs follow a few kernel pointers (the victim's task, its memory cgroup, the
//! OOM killer's `oom_control`), whose layouts differ between kernel builds. The offsets come from
//! `/sys/kernel/btf/vmlinux` at load time, as the tracepoint offsets come from tracefs. aya's own
//! BTF parser would hold the whole 5 MB type graph in memory; this reader makes two passes over
//! the file with a small buffer and keeps only the names it was asked for, so the daemon's peak
//! memory stays what its steady state is.
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom},
};

/// Where the running kernel publishes its BTF.
pub(crate) const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
/// Members one lookup may look at. Kernels nest a few anonymous structs and unions a few levels
/// deep; a malformed file whose anonymous types contain each other many times over would
/// otherwise make a lookup take exponential time.
const LOOKUP_BUDGET: usize = 4096;
/// Bytes read at a time (sysfs hands out a page per read whatever is asked; files, more).
const BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read the kernel's BTF")]
    Io(#[from] io::Error),
    #[error("the kernel's BTF is malformed ({0})")]
    Malformed(&'static str),
}

/// BTF kinds (`linux/btf.h`).
mod kind {
    pub(crate) const INT: u32 = 1;
    pub(crate) const ARRAY: u32 = 3;
    pub(crate) const STRUCT: u32 = 4;
    pub(crate) const UNION: u32 = 5;
    pub(crate) const ENUM: u32 = 6;
    pub(crate) const FUNC_PROTO: u32 = 13;
    pub(crate) const VAR: u32 = 14;
    pub(crate) const DATASEC: u32 = 15;
    pub(crate) const DECL_TAG: u32 = 17;
    pub(crate) const ENUM64: u32 = 19;
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield: bool,
}

/// What was kept of the BTF: the wanted structs, all anonymous structs and unions (members of a
/// wanted struct may sit inside one), and the wanted enum values.
#[derive(Debug, Default)]
pub(crate) struct Btf {
    strings: HashMap<String, u32>,
    /// Named structs and unions that were asked for: name offset -> members.
    structs: HashMap<u32, Vec<Member>>,
    /// Their sizes in bytes.
    sizes: HashMap<u32, u32>,
    /// Anonymous structs and unions: type id -> members (only wanted or anonymous ones).
    anonymous: HashMap<u32, Vec<Member>>,
    enum_values: HashMap<u32, i64>,
}

impl Btf {
    /// Reads the running kernel's BTF, keeping `structs`, `members` and `enumerators` by name.
    pub(crate) fn from_sys_fs(
        structs: &[&str],
        members: &[&str],
        enumerators: &[&str],
    ) -> Result<Self, BtfError> {
        Self::read(File::open(VMLINUX)?, structs, members, enumerators)
    }

    /// Reads BTF from `path` (tests and other kernels' files).
    #[cfg(test)]
    pub(crate) fn from_path(
        path: &std::path::Path,
        structs: &[&str],
        members: &[&str],
        enumerators: &[&str],
    ) -> Result<Self, BtfError> {
        Self::read(File::open(path)?, structs, members, enumerators)
    }

    pub(crate) fn read<R: Read + Seek>(
        mut file: R,
        structs: &[&str],
        members: &[&str],
        enumerators: &[&str],
    ) -> Result<Self, BtfError> {
        let mut header = [0u8; 24];
        file.read_exact(&mut header)?;
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        if u16::from_le_bytes([header[0], header[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u64::from(u32_at(4));
        let (type_off, type_len) = (u64::from(u32_at(8)), u64::from(u32_at(12)));
        let (str_off, str_len) = (u64::from(u32_at(16)), u64::from(u32_at(20)));

        let wanted: HashSet<&str> = structs
            .iter()
            .chain(members)
            .chain(enumerators)
            .copied()
            .collect();
        file.seek(SeekFrom::Start(hdr_len + str_off))?;
        let strings = find_strings(
            BufReader::with_capacity(BUFFER, (&mut file).take(str_len)),
            &wanted,
        )?;

        let struct_names: HashSet<u32> = structs
            .iter()
            .filter_map(|s| strings.get(*s))
            .copied()
            .collect();
        let member_names: HashSet<u32> = members
            .iter()
            .filter_map(|s| strings.get(*s))
            .copied()
            .collect();
        let enum_names: HashSet<u32> = enumerators
            .iter()
            .filter_map(|s| strings.get(*s))
            .copied()
            .collect();

        let mut btf = Btf {
            strings,
            ..Btf::default()
        };
        file.seek(SeekFrom::Start(hdr_len + type_off))?;
        let mut types = BufReader::with_capacity(BUFFER, (&mut file).take(type_len));
        let mut type_id = 0u32;
        loop {
            let mut head = [0u8; 12];
            match types.read_exact(&mut head) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(err) => return Err(err.into()),
            }
            type_id += 1;
            let name = u32::from_le_bytes(head[0..4].try_into().unwrap());
            let info = u32::from_le_bytes(head[4..8].try_into().unwrap());
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            match kind {
                kind::STRUCT | kind::UNION => {
                    let keep_struct = name == 0 || struct_names.contains(&name);
                    let mut kept = Vec::new();
                    for _ in 0..vlen {
                        let [m_name, m_type, m_offset] = read_u32s::<3>(&mut types)?;
                        if keep_struct && (m_name == 0 || member_names.contains(&m_name)) {
                            let (bit_offset, bitfield) = if kind_flag {
                                (m_offset & 0xff_ffff, m_offset >> 24 != 0)
                            } else {
                                (m_offset, false)
                            };
                            kept.push(Member {
                                name: m_name,
                                type_id: m_type,
                                bit_offset,
                                bitfield,
                            });
                        }
                    }
                    if name == 0 {
                        btf.anonymous.insert(type_id, kept);
                    } else if keep_struct && vlen > 0 {
                        btf.structs.insert(name, kept);
                        let size = u32::from_le_bytes(head[8..12].try_into().unwrap());
                        btf.sizes.insert(name, size);
                    }
                }
                kind::ENUM => {
                    for _ in 0..vlen {
                        let [e_name, value] = read_u32s::<2>(&mut types)?;
                        if enum_names.contains(&e_name) {
                            btf.enum_values.insert(e_name, i64::from(value as i32));
                        }
                    }
                }
                kind::ENUM64 => {
                    for _ in 0..vlen {
                        let [e_name, lo, hi] = read_u32s::<3>(&mut types)?;
                        if enum_names.contains(&e_name) {
                            btf.enum_values
                                .insert(e_name, ((u64::from(hi) << 32) | u64::from(lo)) as i64);
                        }
                    }
                }
                _ => skip(&mut types, extra_bytes(kind, vlen))?,
            }
        }
        Ok(btf)
    }

    /// The byte offset of `member` in struct `name`, looking through anonymous structs and
    /// unions; `None` if absent or a bitfield.
    pub(crate) fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let members = self.structs.get(self.strings.get(name)?)?;
        let wanted = *self.strings.get(member)?;
        let mut budget = LOOKUP_BUDGET;
        self.find(members, wanted, 0, &mut budget)
            .map(|bits| bits / 8)
    }

    fn find(&self, members: &[Member], wanted: u32, depth: u32, budget: &mut usize) -> Option<u32> {
        if depth > 8 || *budget < members.len() {
            return None;
        }
        *budget -= members.len();
        if let Some(m) = members.iter().find(|m| m.name == wanted) {
            return (!m.bitfield && m.bit_offset % 8 == 0).then_some(m.bit_offset);
        }
        members.iter().filter(|m| m.name == 0).find_map(|m| {
            let inner = self.anonymous.get(&m.type_id)?;
            m.bit_offset
                .checked_add(self.find(inner, wanted, depth + 1, budget)?)
        })
    }

    /// The size in bytes of struct `name`.
    pub(crate) fn struct_size(&self, name: &str) -> Option<u32> {
        self.sizes.get(self.strings.get(name)?).copied()
    }

    /// The value of enumerator `name`.
    pub(crate) fn enum_value(&self, name: &str) -> Option<i64> {
        self.enum_values.get(self.strings.get(name)?).copied()
    }
}

/// Offsets of the wanted strings in the string section.
fn find_strings(
    mut reader: impl BufRead,
    wanted: &HashSet<&str>,
) -> io::Result<HashMap<String, u32>> {
    let mut found = HashMap::new();
    let mut offset = 0u32;
    let mut current = Vec::with_capacity(256);
    // Most of the ~100,000 strings are ruled out by their length alone, before any hashing.
    let lengths: u128 = wanted
        .iter()
        .filter(|w| w.len() < 128)
        .fold(0, |set, w| set | 1 << w.len());
    loop {
        current.clear();
        let n = reader.read_until(0, &mut current)?;
        if n == 0 {
            break;
        }
        let text = current.strip_suffix(&[0]).unwrap_or(&current);
        if text.len() < 128
            && lengths & (1 << text.len()) != 0
            && let Ok(text) = std::str::from_utf8(text)
            && wanted.contains(text)
            && !found.contains_key(text)
        {
            found.insert(text.to_owned(), offset);
        }
        offset += n as u32;
    }
    Ok(found)
}

/// Bytes that follow a type's 12-byte header, for the kinds whose details are skipped.
fn extra_bytes(kind: u32, vlen: usize) -> usize {
    match kind {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::ARRAY => 12,
        kind::FUNC_PROTO => 8 * vlen,
        kind::DATASEC => 12 * vlen,
        _ => 0,
    }
}

fn read_u32s<const N: usize>(reader: &mut impl Read) -> io::Result<[u32; N]> {
    let mut bytes = [0u8; 12];
    reader.read_exact(&mut bytes[..4 * N])?;
    Ok(std::array::from_fn(|i| {
        u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
    }))
}

fn skip(reader: &mut impl BufRead, mut n: usize) -> io::Result<()> {
    while n > 0 {
        let available = reader.fill_buf()?.len();
        if available == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let step = available.min(n);
        reader.consume(step);
        n -= step;
    }
    Ok(())
}

/// BTF blobs for tests, built type by type.
#[cfg(test)]
pub(crate) mod testing {
    use super::{MAGIC, kind};

    pub(crate) struct Blob {
        types: Vec<u8>,
        strings: Vec<u8>,
        offsets: std::collections::HashMap<String, u32>,
        count: u32,
    }

    impl Default for Blob {
        fn default() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                offsets: [(String::new(), 0)].into(),
                count: 0,
            }
        }
    }

    impl Blob {
        /// The offset of `name` in the string section, added if new.
        pub(crate) fn name(&mut self, name: &str) -> u32 {
            if let Some(offset) = self.offsets.get(name) {
                return *offset;
            }
            let offset = self.strings.len() as u32;
            self.strings.extend(name.as_bytes());
            self.strings.push(0);
            self.offsets.insert(name.to_owned(), offset);
            offset
        }

        /// A type's 12-byte header; its id.
        pub(crate) fn push(&mut self, header: &[u32; 3]) -> u32 {
            self.words(header);
            self.count += 1;
            self.count
        }

        /// The words that follow a header (members, enumerators).
        pub(crate) fn words(&mut self, words: &[u32]) {
            words
                .iter()
                .for_each(|w| self.types.extend(w.to_le_bytes()));
        }

        /// `int`.
        pub(crate) fn int(&mut self) -> u32 {
            let name = self.name("int");
            let id = self.push(&[name, kind::INT << 24, 4]);
            self.words(&[32]);
            id
        }

        /// A struct of `int` members (after [`Blob::int`], type 1) at byte offsets.
        pub(crate) fn structure(&mut self, name: &str, size: u32, members: &[(&str, u32)]) -> u32 {
            let name = self.name(name);
            let id = self.push(&[name, (kind::STRUCT << 24) | members.len() as u32, size]);
            for (member, offset) in members {
                let member = self.name(member);
                self.words(&[member, 1, offset * 8]);
            }
            id
        }

        pub(crate) fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
            let name = self.name(name);
            let id = self.push(&[name, (kind::ENUM << 24) | values.len() as u32, 4]);
            for (enumerator, value) in values {
                let enumerator = self.name(enumerator);
                self.words(&[enumerator, *value as u32]);
            }
            id
        }

        pub(crate) fn bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend(MAGIC.to_le_bytes());
            out.extend([1u8, 0]);
            let (types, strings) = (self.types.len() as u32, self.strings.len() as u32);
            for w in [24u32, 0, types, types, strings] {
                out.extend(w.to_le_bytes());
            }
            out.extend(&self.types);
            out.extend(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::Blob, *};

    /// Builds a tiny BTF blob: `struct outer { int a; union { int b; int c; }; }`, and
    /// `enum e { x = 3 }`.
    fn blob() -> Vec<u8> {
        let mut blob = Blob::default();
        let int = blob.int(); // 1
        let union = blob.push(&[0, (kind::UNION << 24) | 2, 4]); // 2: anonymous union
        let (b, c) = (blob.name("b"), blob.name("c"));
        blob.words(&[b, int, 0, c, int, 0]);
        let (outer, a) = (blob.name("outer"), blob.name("a"));
        blob.push(&[outer, (kind::STRUCT << 24) | 2, 8]); // 3: struct outer
        blob.words(&[a, int, 0, 0, union, 32]);
        blob.enumeration("e", &[("x", 3)]); // 4: enum e
        blob.bytes()
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::read(io::Cursor::new(blob()), &["outer"], &["a", "c"], &["x"]).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Some(0));
        assert_eq!(btf.member_offset("outer", "c"), Some(4));
        assert_eq!(btf.member_offset("outer", "b"), None, "not asked for");
        assert_eq!(btf.struct_size("outer"), Some(8));
        assert_eq!(btf.enum_value("x"), Some(3));
    }

    /// Found by the `btf` fuzz target: an anonymous member's offset plus the offset inside it
    /// overflowed.
    #[test]
    fn offsets_past_u32_are_absent() {
        let mut blob = Blob::default();
        let int = blob.int();
        let inner = blob.push(&[0, (kind::STRUCT << 24) | 1, 8]);
        let a = blob.name("a");
        blob.words(&[a, int, 64]);
        let outer = blob.name("outer");
        blob.push(&[outer, (kind::STRUCT << 24) | 1, 8]);
        blob.words(&[0, inner, u32::MAX - 7]);
        let btf = Btf::read(io::Cursor::new(blob.bytes()), &["outer"], &["a"], &[]).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), None);
    }

    /// Anonymous structs that hold each other many times over (no kernel has them): a lookup
    /// of a member that is not there gives up after [`LOOKUP_BUDGET`] members, where it
    /// would otherwise look at 64^9 of them.
    #[test]
    fn nested_anonymous_loops_end() {
        let mut blob = Blob::default();
        let int = blob.int();
        let a = blob.name("a");
        let anonymous = blob.push(&[0, (kind::STRUCT << 24) | 64, 8]);
        for _ in 0..64 {
            blob.words(&[0, anonymous, 0]);
        }
        let outer = blob.name("outer");
        blob.push(&[outer, (kind::STRUCT << 24) | 2, 8]);
        blob.words(&[0, anonymous, 0, a, int, 32]);
        blob.name("b");
        let btf = Btf::read(io::Cursor::new(blob.bytes()), &["outer"], &["a", "b"], &[]).unwrap();
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(btf.member_offset("outer", "b")).unwrap());
        let found = wait
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a lookup in looping anonymous structs ends");
        assert_eq!(found, None);
    }

    #[test]
    fn rejects_garbage() {
        let err = Btf::read(io::Cursor::new(vec![0u8; 64]), &[], &[], &[]).unwrap_err();
        assert!(matches!(err, BtfError::Malformed(_)), "{err}");
    }

    #[test]
    fn reads_this_kernel() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("skipped: no {VMLINUX} on this kernel");
            return;
        }
        let btf = Btf::from_sys_fs(
            &["task_struct", "oom_control", "kernfs_node"],
            &[
                "pid",
                "tgid",
                "comm",
                "memcg",
                "chosen",
                "constraint",
                "name",
            ],
            &["memory_cgrp_id", "CONSTRAINT_MEMCG"],
        )
        .unwrap();
        let pid = btf
            .member_offset("task_struct", "pid")
            .expect("task_struct.pid");
        let tgid = btf
            .member_offset("task_struct", "tgid")
            .expect("task_struct.tgid");
        assert_eq!(tgid, pid + 4, "pid and tgid are neighbours in every kernel");
        assert!(btf.member_offset("oom_control", "memcg").is_some());
        assert!(btf.member_offset("oom_control", "chosen").is_some());
        assert_eq!(btf.enum_value("CONSTRAINT_MEMCG"), Some(3));
        assert!(btf.enum_value("memory_cgrp_id").is_some());
    }
}
