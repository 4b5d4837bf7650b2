//! The parser on synthetic ELF files built here byte by byte: every field
//! it reads, both byte orders and classes, and the edge cases a corrupt
//! file may have. Real binaries (Go builds of both kinds, a C binary) are
//! parsed in tests/gobuild.rs.

#![allow(clippy::pedantic, reason = "pedantic is for the shipped code")]

use proptest::prelude::*;

use super::*;

/// A minimal ELF64 little-endian file: the given program headers (type,
/// flags) and sections (name, type, content).
fn elf64(e_type: u16, segments: &[(u32, u32)], sections: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&e_type.to_le_bytes());
    // Program headers right after the header.
    let phoff = 64u64;
    out[32..40].copy_from_slice(&phoff.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    let mut data_at = 64 + 56 * segments.len();
    let contents_at = data_at;
    // Section contents, then the name table, then the section headers.
    let mut contents = Vec::new();
    let mut offsets = Vec::new();
    for (_, _, c) in sections {
        offsets.push((data_at + contents.len()) as u64);
        contents.extend_from_slice(c);
        while contents.len() % 16 != 0 {
            contents.push(0);
        }
    }
    let mut names = vec![0u8];
    let mut name_at = Vec::new();
    for (n, _, _) in sections {
        name_at.push(names.len() as u32);
        names.extend_from_slice(n.as_bytes());
        names.push(0);
    }
    name_at.push(names.len() as u32);
    names.extend_from_slice(b".shstrtab\0");
    let names_off = (data_at + contents.len()) as u64;
    data_at += contents.len() + names.len();
    let shoff = data_at as u64;
    out[40..48].copy_from_slice(&shoff.to_le_bytes());
    out[58..60].copy_from_slice(&64u16.to_le_bytes());
    let shnum = sections.len() + 2;
    out[60..62].copy_from_slice(&(shnum as u16).to_le_bytes());
    out[62..64].copy_from_slice(&((shnum - 1) as u16).to_le_bytes());
    for (kind, flags) in segments {
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&kind.to_le_bytes());
        ph[4..8].copy_from_slice(&flags.to_le_bytes());
        ph[8..16].copy_from_slice(&(contents_at as u64).to_le_bytes());
        ph[32..40].copy_from_slice(&(contents.len() as u64).to_le_bytes());
        out.extend(ph);
    }
    out.extend(&contents);
    out.extend(&names);
    let sh = |name: u32, kind: u32, off: u64, size: u64| {
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&kind.to_le_bytes());
        h[24..32].copy_from_slice(&off.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        h
    };
    out.extend(sh(0, 0, 0, 0));
    for (i, (_, kind, c)) in sections.iter().enumerate() {
        out.extend(sh(name_at[i], *kind, offsets[i], c.len() as u64));
    }
    out.extend(sh(
        name_at[sections.len()],
        3,
        names_off,
        names.len() as u64,
    ));
    out
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A Go 1.18+ build-information blob with the given version and module
/// information (framed by the sentinels Go writes).
fn blob(version: &str, modinfo: &str) -> Vec<u8> {
    let mut b = BUILDINFO_MAGIC.to_vec();
    b.push(8);
    b.push(2);
    b.resize(32, 0);
    varint(version.len(), &mut b);
    b.extend(version.as_bytes());
    let framed = format!("0123456789abcdef{modinfo}\nfedcba9876543210");
    varint(framed.len(), &mut b);
    b.extend(framed.as_bytes());
    b
}

const MODINFO: &str = "path\texample.com/app\nmod\texample.com/app\t(devel)\t\nbuild\t-buildmode=exe\nbuild\t-compiler=gc\nbuild\t-ldflags=\"-s -w -X main.v=1\"\nbuild\tCGO_ENABLED=1\nbuild\t\"we=ird\"=x\nbuild\tGOOS=linux";

#[test]
fn reads_type_interpreter_sections_and_build_information() {
    let file = elf64(
        ET_EXEC,
        &[(PT_INTERP, 4), (PT_LOAD, 5)],
        &[
            (".text", 1, vec![0x90; 8]),
            (".go.buildinfo", 1, blob("go1.22.12", MODINFO)),
            (".symtab", 2, vec![0; 24]),
            (".debug_info", 1, vec![1, 2, 3]),
        ],
    );
    let b = parse(&mut file.as_slice()).unwrap();
    assert_eq!(b.elf_type, ElfType::Exec);
    assert!(b.interpreter && !b.is_pie());
    assert!(b.has_symtab() && !b.is_stripped());
    assert_eq!(b.unstripped_by(), ".symtab, .debug_* (1 sections)");
    let info = b.build().unwrap();
    assert_eq!(info.version, "go1.22.12");
    assert_eq!(info.path.as_deref(), Some("example.com/app"));
    assert_eq!(
        info.main_module,
        Some(("example.com/app".into(), "(devel)".into()))
    );
    assert_eq!(info.buildmode(), Some("exe"));
    assert_eq!(info.setting("-ldflags"), Some("-s -w -X main.v=1"));
    assert_eq!(info.setting("we=ird"), Some("x"));
    assert_eq!(info.setting("GOOS"), Some("linux"));
    assert_eq!(info.cgo(), Some(true));
    assert_eq!(info.trimpath(), Some(false));
    assert_eq!(
        info.summary(),
        "go1.22.12, CGO_ENABLED=1, -buildmode=exe, -ldflags=-s -w -X main.v=1"
    );
}

#[test]
fn a_pie_without_symbols_is_pie_and_stripped() {
    let file = elf64(
        ET_DYN,
        &[(PT_INTERP, 4)],
        &[(
            ".go.buildinfo",
            1,
            blob(
                "go1.23.4",
                "build\t-buildmode=pie\nbuild\t-trimpath=true\nbuild\tCGO_ENABLED=0",
            ),
        )],
    );
    let b = parse(&mut file.as_slice()).unwrap();
    assert!(b.is_pie() && b.is_stripped());
    let info = b.build().unwrap();
    assert_eq!((info.trimpath(), info.cgo()), (Some(true), Some(false)));
    // ET_DYN without an interpreter is a shared library, not a PIE.
    let lib = elf64(ET_DYN, &[], &[]);
    assert!(!parse(&mut lib.as_slice()).unwrap().is_pie());
}

#[test]
fn binaries_without_go_information_are_not_go_and_not_errors() {
    let c = elf64(
        ET_DYN,
        &[(PT_INTERP, 4)],
        &[
            (".text", 1, vec![0; 16]),
            (
                ".data",
                1,
                b"\xff Go buildinf: but not aligned or complete".to_vec(),
            ),
        ],
    );
    assert_eq!(parse(&mut c.as_slice()).unwrap().go, Go::NotGo);
    // A misaligned magic is skipped, an aligned one later is found.
    let mut data = vec![0u8; 3];
    data.extend(BUILDINFO_MAGIC);
    data.resize(48, 0);
    data.extend(blob("go1.22.1", ""));
    match buildinfo(&data).unwrap() {
        Go::Build(b) => {
            assert_eq!(b.version, "go1.22.1");
            assert!(b.settings.is_empty() && b.path.is_none());
            // No build lines: trimpath cannot be told.
            assert_eq!(b.trimpath(), None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_pre_1_18_format_is_recognised_not_decoded() {
    let mut b = BUILDINFO_MAGIC.to_vec();
    b.extend([8, 0]);
    b.resize(32, 0);
    assert_eq!(
        buildinfo(&b).unwrap(),
        Go::PointerFormat { pointer_size: 8 }
    );
}

#[test]
fn without_a_section_table_the_first_writable_segment_is_searched() {
    let mut file = elf64(
        ET_EXEC,
        &[(PT_LOAD, 6)],
        &[(".go.buildinfo", 1, blob("go1.21.0", "build\tCGO_ENABLED=0"))],
    );
    // Remove the section table: e_shoff = 0, e_shnum = 0.
    file[40..48].fill(0);
    file[60..64].fill(0);
    let b = parse(&mut file.as_slice()).unwrap();
    assert!(b.sections.is_empty());
    assert_eq!(b.build().unwrap().cgo(), Some(false));
}

#[test]
fn truncated_and_corrupt_files_are_clear_errors() {
    let file = elf64(
        ET_EXEC,
        &[(PT_INTERP, 4)],
        &[(".go.buildinfo", 1, blob("go1.22.12", MODINFO))],
    );
    let err = parse(&mut &file[..40]).unwrap_err().to_string();
    assert_eq!(
        err,
        "truncated: the ELF header at offset 0 needs 64 bytes, the file has 40"
    );
    let err = parse(&mut &file[..file.len() - 10])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("truncated: the section header table"),
        "{err}"
    );
    assert!(matches!(
        parse(&mut &b"#!/bin/sh\n"[..]),
        Err(ParseError::NotElf)
    ));
    assert!(matches!(parse(&mut &b""[..]), Err(ParseError::NotElf)));
    let mut bad_class = file.clone();
    bad_class[4] = 9;
    assert_eq!(
        parse(&mut bad_class.as_slice()).unwrap_err().to_string(),
        "corrupt: ELF class 9 is neither 32 nor 64 bit"
    );
    // A version length running past the section.
    let mut b = blob("go1.22.12", MODINFO);
    b[32] = 0xf0;
    b[33] = 0x01;
    let bad = elf64(ET_EXEC, &[], &[(".go.buildinfo", 1, b)]);
    let err = parse(&mut bad.as_slice()).unwrap_err().to_string();
    assert!(
        err.starts_with("corrupt: the Go version is 240 bytes"),
        "{err}"
    );
    let mut b = blob("go1.22.12", MODINFO);
    b[14] = 3;
    assert!(
        buildinfo(&b)
            .unwrap_err()
            .to_string()
            .contains("pointer size of 3")
    );
}

#[test]
fn go_versions_parse_and_order() {
    let v = |s| GoVersion::parse_runtime(s).unwrap();
    assert!(v("go1.22.12") > v("go1.22.2"));
    assert!(v("go1.21rc2") < v("go1.21.0"));
    assert!(v("go1.21rc2") > v("go1.20.14"));
    assert_eq!(v("go1.22.1 X:boringcrypto"), v("go1.22.1"));
    assert_eq!(GoVersion::parse_runtime("devel go1.24-abcdef"), None);
    assert_eq!(GoVersion::parse("1.22"), Some(v("go1.22.0")));
    assert_eq!(GoVersion::parse("1.22").unwrap().to_string(), "go1.22");
    assert_eq!(GoVersion::parse("1.22.3").unwrap().to_string(), "go1.22.3");
    for bad in ["1", "1.x", "2.1", "1.22.3.4", "", "1..2", "1.+2"] {
        assert_eq!(GoVersion::parse(bad), None, "{bad}");
    }
}

proptest! {
    /// Any bytes at all: a result or an error, never a panic.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse(&mut bytes.as_slice());
        let _ = buildinfo(&bytes);
    }

    /// A valid file cut anywhere, or with any byte changed: never a panic,
    /// and a cut inside the headers or tables is an error.
    #[test]
    fn truncated_and_mutated_files_never_panic(cut in 0usize..2000, at in 0usize..2000, byte in any::<u8>()) {
        let file = elf64(ET_DYN, &[(PT_INTERP, 4), (PT_LOAD, 6)], &[
            (".go.buildinfo", 1, blob("go1.22.12", MODINFO)),
            (".symtab", 2, vec![0; 24]),
        ]);
        let cut = cut.min(file.len());
        let truncated = &file[..cut];
        let r = parse(&mut &truncated[..]);
        if cut < file.len() {
            prop_assert!(r.is_err(), "cut at {} of {}", cut, file.len());
        }
        let mut mutated = file.clone();
        let at = at % mutated.len();
        mutated[at] = byte;
        let _ = parse(&mut mutated.as_slice());
        // The build-information blob alone, with any byte changed.
        let mut b = blob("go1.22.12", MODINFO);
        let i = at % b.len();
        b[i] = byte;
        let _ = buildinfo(&b);
    }
}
