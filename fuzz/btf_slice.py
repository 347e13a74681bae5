#!/usr/bin/python3
"""Writes a small slice of a kernel's BTF: the seed of the `btf` fuzz target.

The whole of /sys/kernel/btf/vmlinux (5.5 MB, ~100,000 types) is too big for a seed, so this
keeps what the daemon asks for (`oomcount/src/offsets.rs`, its TABLE: structs with their wanted
members, the anonymous structs and unions those reach, the enums holding its enumerators), a
few members it does not ask for, and one type of each other kind the reader skips. Member
types that are not kept point at the `int` kept as type 1: the reader follows only anonymous
members. Offsets, sizes, bitfield flags and enum values stay the kernel's.

    fuzz/btf_slice.py [/sys/kernel/btf/vmlinux] > fuzz/corpus/btf/vmlinux-6.18-slice
"""
import re
import struct
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "oomcount" / "src" / "offsets.rs"
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
FUNC_PROTO, VAR, DATASEC, DECL_TAG, ENUM64 = 13, 14, 15, 17, 19


def wanted():
    """The structs, members and enumerators of offsets.rs's TABLE."""
    table = SRC.read_text().split("const TABLE: &[Entry] = &[", 1)[1].split("\n];", 1)[0]
    structs, members, enumerators = [], [], []
    for of, names in re.findall(r'"(\w+)"\.\[([^\]]*)\]', table) + re.findall(
            r'Source::Member\("(\w+)", &\[([^\]]*)\]\)', table):
        structs.append(of)
        members.extend(re.findall(r'"(\w+)"', names))
    structs.extend(re.findall(r'Source::Size\("(\w+)"\)', table))
    enumerators.extend(re.findall(r'Source::Enum\("(\w+)"\)', table))
    return sorted(set(structs)), sorted(set(members)), sorted(set(enumerators))


def extra(kind, vlen):
    return {INT: 4, VAR: 4, DECL_TAG: 4, ARRAY: 12, FUNC_PROTO: 8 * vlen, DATASEC: 12 * vlen,
            STRUCT: 12 * vlen, UNION: 12 * vlen, ENUM: 8 * vlen, ENUM64: 12 * vlen}.get(kind, 0)


def main():
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "/sys/kernel/btf/vmlinux").read_bytes()
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        "<HBBIIIII", data)
    assert magic == 0xEB9F, "not little-endian BTF"
    strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
    name = lambda off: strings[off:strings.index(b"\0", off)].decode()
    types, pos, end = [None], hdr_len + type_off, hdr_len + type_off + type_len
    while pos < end:
        name_off, info, size = struct.unpack_from("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        body = data[pos + 12:pos + 12 + extra(kind, vlen)]
        types.append((name_off, info, size, kind, vlen, body))
        pos += 12 + len(body)

    structs, members, enumerators = wanted()
    out_strings, out_types, new_id = bytearray(b"\0"), [], {}

    def s(text):
        if not text:
            return 0
        key = text.encode() + b"\0"
        found = out_strings.find(b"\0" + key)
        if found >= 0:
            return found + 1
        out_strings.extend(key)
        return len(out_strings) - len(key)

    def emit(words_or_bytes):
        out_types.append(words_or_bytes)

    emit(struct.pack("<IIII", s("int"), INT << 24, 4, 32))  # type 1
    count = [1]

    def keep_struct(tid, keep_unwanted):
        name_off, info, size, kind, vlen, body = types[tid]
        kept = []
        for i in range(vlen):
            m_name, m_type, m_off = struct.unpack_from("<III", body, 12 * i)
            text = name(m_name) if m_name else ""
            if m_name == 0:
                kept.append((0, anonymous(m_type), m_off))
            elif text in members or (keep_unwanted and i < 2):
                kept.append((s(text), 1, m_off))
        count[0] += 1
        own = count[0]
        new_id[tid] = own
        words = struct.pack("<III", s(name(name_off)) if name_off else 0,
                            (info & ~0xFFFF) | len(kept), size)
        emit(words + b"".join(struct.pack("<III", *m) for m in kept))
        return own

    def anonymous(tid):
        # Through typedefs and qualifiers to the anonymous struct or union, if any.
        while types[tid][3] not in (STRUCT, UNION) and types[tid][3] in (TYPEDEF, 9, 10, 11):
            tid = types[tid][2]
        if types[tid][3] not in (STRUCT, UNION) or types[tid][0] != 0:
            return 1
        return new_id.get(tid) or keep_struct(tid, False)

    for tid, (name_off, info, size, kind, vlen, body) in enumerate(types[1:], start=1):
        if kind in (STRUCT, UNION) and vlen and name(name_off) in structs:
            keep_struct(tid, True)
            structs.remove(name(name_off))
        elif kind in (ENUM, ENUM64):
            step = 8 if kind == ENUM else 12
            values = [body[i:i + step] for i in range(0, len(body), step)]
            hits = [v for v in values if name(struct.unpack_from("<I", v)[0]) in enumerators]
            if hits:
                kept = values[:1] + [v for v in hits if v != values[0]]
                count[0] += 1
                emit(struct.pack("<III", s(name(name_off)) if name_off else 0,
                                 (info & ~0xFFFF) | len(kept), size)
                     + b"".join(struct.pack("<I", s(name(struct.unpack_from("<I", v)[0])))
                                + v[4:] for v in kept))
    # One of each kind the reader skips, pointing at type 1.
    seen = set()
    for name_off, info, size, kind, vlen, body in types[1:]:
        if kind in (PTR, ARRAY, FWD, TYPEDEF, FUNC_PROTO, VAR, DATASEC, DECL_TAG, ENUM64) \
                and kind not in seen and vlen <= 2:
            seen.add(kind)
            count[0] += 1
            if kind == ARRAY:  # element and index types, element count
                body = struct.pack("<III", 1, 1, struct.unpack_from("<III", body)[2])
            elif kind == FUNC_PROTO:  # parameters: name, type
                body = struct.pack("<II", 0, 1) * vlen
            elif kind == DATASEC:  # variables: type, offset, size
                body = struct.pack("<III", 1, 0, 4) * vlen
            elif kind == ENUM64:  # enumerators: name, low, high
                body = b"".join(struct.pack("<I", s(name(struct.unpack_from("<I", body, 12 * i)[0])))
                                + body[12 * i + 4:12 * i + 12] for i in range(vlen))
            # The third word is a size for these kinds, a type for the others.
            ref = size if kind in (ENUM64, DATASEC) else 1
            emit(struct.pack("<III", s(name(name_off)) if name_off else 0, info, ref) + body)

    type_bytes = b"".join(out_types)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(type_bytes), len(type_bytes),
                         len(out_strings))
    sys.stdout.buffer.write(header + type_bytes + bytes(out_strings))
    if structs:
        print(f"not in this BTF: {structs}", file=sys.stderr)


main()
