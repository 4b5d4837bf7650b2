//! How a running binary was built: its ELF header (type, interpreter), the
//! names of its sections (`.symtab`, `.debug_*`), and the Go build
//! information every Go binary carries in `.go.buildinfo` (what `go version
//! -m BINARY` prints). Pure: the parser reads through [`ReadAt`], which a
//! byte slice implements for tests and an open file implements in
//! [`observe`]; only the few hundred bytes it needs are read.
//!
//! Formats followed (design notes §10):
//! - ELF: the System V gABI headers, 32 and 64 bit, either byte order; PIE
//!   is `ET_DYN` with a `PT_INTERP` segment; stripped is no `.symtab` and no
//!   `.debug_*`/`.zdebug_*` section (`-ldflags='-s -w'`).
//! - Go build information, as Go's `debug/buildinfo` reads it: a 32-byte
//!   header on a 16-byte boundary starting with the magic `\xff Go
//!   buildinf:`, then the pointer size and a flags byte. Go 1.18 and later
//!   set flag bit 2 and put the version and the module information inline
//!   after the header, each prefixed by its length as an unsigned varint;
//!   the module information is framed by 16-byte sentinels. Older binaries
//!   hold pointers to those strings instead: reported as such
//!   ([`Go::PointerFormat`]), not decoded.
//!
//! Never panics on any input: every offset and length is checked, and a
//! truncated or corrupt file is a [`ParseError`] saying what was wrong
//! where (a property test feeds it random and truncated bytes).

pub mod findings;
pub mod maxprocs;
pub mod observe;
pub mod plan;
pub mod releases;

use std::collections::BTreeMap;
use std::fmt;

/// What the `go_build` area read.
#[derive(Debug, Clone, Default)]
pub struct GoBuildHost {
    /// systemd is PID 1 on this host.
    pub systemd: bool,
    /// Why systemd was not asked, when it was not.
    pub not_queried: Option<String>,
    pub units: BTreeMap<String, Running>,
}

/// A managed service's main process and its binary.
#[derive(Debug, Clone)]
pub enum Running {
    /// systemd could not say (the error).
    Unknown(String),
    /// No main process.
    NotRunning,
    Binary {
        pid: u32,
        /// Where `/proc/PID/exe` points (`... (deleted)` for a replaced
        /// file).
        exe: String,
        read: Result<Binary, String>,
    },
}

/// One `go_build` expectation of a service (one item each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expectation {
    Pie,
    Stripped,
    Trimpath,
    Cgo,
    MinVersion,
}

impl Expectation {
    pub fn as_str(self) -> &'static str {
        match self {
            Expectation::Pie => "pie",
            Expectation::Stripped => "stripped",
            Expectation::Trimpath => "trimpath",
            Expectation::Cgo => "cgo",
            Expectation::MinVersion => "min_version",
        }
    }
}

/// Random access to a binary's bytes.
pub trait ReadAt {
    /// The size in bytes.
    fn size(&self) -> u64;
    /// Up to `len` bytes at `offset`; fewer only at the end of the data.
    fn read_at(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>>;
}

impl ReadAt for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let end = start.saturating_add(len).min(self.len());
        Ok(self[start..end].to_vec())
    }
}

/// Why a binary could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not an ELF file (it does not start with \\x7fELF)")]
    NotElf,
    #[error("truncated: the {what} at offset {offset} needs {need} bytes, the file has {size}")]
    Truncated {
        what: &'static str,
        offset: u64,
        need: u64,
        size: u64,
    },
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("read failed: {0}")]
    Read(#[from] std::io::Error),
}

/// The ELF file type (`e_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfType {
    /// `ET_EXEC`: linked at a fixed address.
    Exec,
    /// `ET_DYN`: position-independent (a PIE when it has an interpreter).
    Dyn,
    Other(u16),
}

impl ElfType {
    pub fn name(self) -> String {
        match self {
            ElfType::Exec => "ET_EXEC".into(),
            ElfType::Dyn => "ET_DYN".into(),
            ElfType::Other(n) => format!("e_type {n}"),
        }
    }
}

/// What a binary says about how it was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    pub elf_type: ElfType,
    /// It has a `PT_INTERP` segment (a dynamic loader).
    pub interpreter: bool,
    /// Section names, in section-table order (empty when the section table
    /// was removed).
    pub sections: Vec<String>,
    pub go: Go,
}

impl Binary {
    /// Position-independent executable: `ET_DYN` with an interpreter.
    pub fn is_pie(&self) -> bool {
        self.elf_type == ElfType::Dyn && self.interpreter
    }

    pub fn has_symtab(&self) -> bool {
        self.sections.iter().any(|s| s == ".symtab")
    }

    /// DWARF sections (`.debug_*`, or `.zdebug_*` compressed by older Go).
    pub fn debug_sections(&self) -> Vec<&str> {
        self.sections
            .iter()
            .filter(|s| s.starts_with(".debug_") || s.starts_with(".zdebug_"))
            .map(String::as_str)
            .collect()
    }

    /// No symbol table and no DWARF (`-ldflags='-s -w'`).
    pub fn is_stripped(&self) -> bool {
        !self.has_symtab() && self.debug_sections().is_empty()
    }

    /// What makes it unstripped, e.g. `.symtab, .debug_* (12 sections)`.
    pub fn unstripped_by(&self) -> String {
        let mut parts = Vec::new();
        if self.has_symtab() {
            parts.push(".symtab".to_string());
        }
        let debug = self.debug_sections();
        if !debug.is_empty() {
            parts.push(format!(".debug_* ({} sections)", debug.len()));
        }
        parts.join(", ")
    }

    /// The Go build information, when it is a Go binary of Go 1.18 or later.
    pub fn build(&self) -> Option<&BuildInfo> {
        match &self.go {
            Go::Build(b) => Some(b),
            _ => None,
        }
    }
}

/// Whether and how a binary carries Go build information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Go {
    /// No Go build information: not a Go binary (or built by a toolchain
    /// that does not record it, or with the section removed).
    NotGo,
    /// The pre-1.18 format, which holds pointers into the data segment:
    /// recognised, not decoded.
    PointerFormat {
        pointer_size: u8,
    },
    Build(BuildInfo),
}

/// The build information of a Go 1.18+ binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// As the runtime reports it, e.g. `go1.22.12`.
    pub version: String,
    /// The main package's import path (`path` line).
    pub path: Option<String>,
    /// The main module (`mod` line): path and version.
    pub main_module: Option<(String, String)>,
    /// `build` lines in order: `-buildmode=pie`, `CGO_ENABLED=0`, ...
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The parsed toolchain version; `None` for a development build.
    pub fn go_version(&self) -> Option<GoVersion> {
        GoVersion::parse_runtime(&self.version)
    }

    /// `-buildmode` (Go records it for every `go build`).
    pub fn buildmode(&self) -> Option<&str> {
        self.setting("-buildmode")
    }

    /// Whether `-trimpath` was used; `None` when the binary records no
    /// build settings at all (built outside `go build`).
    pub fn trimpath(&self) -> Option<bool> {
        if self.settings.is_empty() {
            return None;
        }
        Some(self.setting("-trimpath") == Some("true"))
    }

    /// Whether cgo was enabled (`CGO_ENABLED=1`); `None` when not recorded.
    pub fn cgo(&self) -> Option<bool> {
        self.setting("CGO_ENABLED").map(|v| v == "1")
    }

    /// A one-line summary for reports: `go1.22.12, CGO_ENABLED=1,
    /// -buildmode=exe`.
    pub fn summary(&self) -> String {
        let mut parts = vec![self.version.clone()];
        for key in ["CGO_ENABLED", "-buildmode", "-trimpath", "-ldflags"] {
            if let Some(v) = self.setting(key) {
                parts.push(format!("{key}={v}"));
            }
        }
        parts.join(", ")
    }
}

/// A Go release: `1.22` or `1.22.12`; a pre-release (`go1.23rc1`) sorts
/// before the release it precedes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub prerelease: bool,
}

impl GoVersion {
    /// Parses a policy's `1.22` or `1.22.3` (an optional `go` prefix).
    pub fn parse(s: &str) -> Option<GoVersion> {
        let s = s.strip_prefix("go").unwrap_or(s);
        let mut parts = s.split('.');
        let num = |p: Option<&str>| -> Option<u32> {
            let p = p?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 9 {
                return None;
            }
            p.parse().ok()
        };
        let major = num(parts.next())?;
        let minor = num(parts.next())?;
        let patch = match parts.next() {
            None => 0,
            p => num(p)?,
        };
        if parts.next().is_some() || major != 1 {
            return None;
        }
        Some(GoVersion {
            major,
            minor,
            patch,
            prerelease: false,
        })
    }

    /// Parses `runtime.Version()` as build information records it:
    /// `go1.22.12`, `go1.21rc2`, `go1.22.1 X:boringcrypto`. A development
    /// toolchain (`devel go1.24-abc`) has no release number: `None`.
    pub fn parse_runtime(s: &str) -> Option<GoVersion> {
        let s = s.split_whitespace().next()?.strip_prefix("go")?;
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (release, rest) = s.split_at(end);
        let mut v = GoVersion::parse(release.trim_end_matches('.'))?;
        v.prerelease = !rest.is_empty();
        Some(v)
    }

    /// The major release (`1.22`) this version belongs to.
    pub fn release(self) -> (u32, u32) {
        (self.major, self.minor)
    }

    fn order_key(self) -> (u32, u32, u32, bool) {
        (self.major, self.minor, self.patch, !self.prerelease)
    }
}

impl PartialOrd for GoVersion {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for GoVersion {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order_key().cmp(&other.order_key())
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.patch == 0 {
            write!(f, "go{}.{}", self.major, self.minor)
        } else {
            write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
        }
    }
}

const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PF_W: u32 = 2;
const SHT_NOBITS: u32 = 8;
const SHN_XINDEX: u32 = 0xffff;
const PN_XNUM: u32 = 0xffff;
/// More sections or segments than this is not a binary anyone runs.
const MAX_TABLE_ENTRIES: u64 = 1 << 16;
/// The most of the section-name table read.
const MAX_SHSTRTAB: u64 = 1 << 20;
/// The most of `.go.buildinfo` read (Go writes a few KiB; the module
/// information of a large program can reach a few hundred).
const MAX_BUILDINFO: u64 = 4 << 20;
/// Without a section table, how much of the first writable segment is
/// searched for the magic (as Go's reader does).
const SEGMENT_SEARCH: u64 = 64 << 10;

pub const BUILDINFO_MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const BUILDINFO_HEADER: usize = 32;
const BUILDINFO_ALIGN: usize = 16;

/// The fields of the ELF header the parser uses.
struct Header {
    is64: bool,
    big_endian: bool,
    elf_type: u16,
    phoff: u64,
    phentsize: u16,
    phnum: u32,
    shoff: u64,
    shentsize: u16,
    shnum: u32,
    shstrndx: u32,
}

struct Section {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
}

struct Segment {
    kind: u32,
    flags: u32,
    offset: u64,
    filesz: u64,
}

/// The fixed-width unsigned fields of one ELF structure, in the file's byte
/// order. Callers have checked the length; a field out of range reads as 0.
struct Fields<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl Fields<'_> {
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        self.bytes
            .get(at..at + N)
            .and_then(|b| <[u8; N]>::try_from(b).ok())
            .unwrap_or([0; N])
    }

    fn u16(&self, at: usize) -> u16 {
        let a = self.array(at);
        if self.big_endian {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }

    fn u32(&self, at: usize) -> u32 {
        let a = self.array(at);
        if self.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }

    fn u64(&self, at: usize) -> u64 {
        let a = self.array(at);
        if self.big_endian {
            u64::from_be_bytes(a)
        } else {
            u64::from_le_bytes(a)
        }
    }
}

/// Reads exactly `len` bytes at `offset`, or says what was truncated.
fn exact<R: ReadAt + ?Sized>(
    r: &mut R,
    what: &'static str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, ParseError> {
    let size = r.size();
    let truncated = || ParseError::Truncated {
        what,
        offset,
        need: len,
        size,
    };
    let end = offset.checked_add(len).ok_or_else(truncated)?;
    if end > size {
        return Err(truncated());
    }
    let n = usize::try_from(len).map_err(|_| truncated())?;
    let bytes = r.read_at(offset, n)?;
    if bytes.len() != n {
        return Err(truncated());
    }
    Ok(bytes)
}

fn header<R: ReadAt + ?Sized>(r: &mut R) -> Result<Header, ParseError> {
    let ident = r.read_at(0, 16)?;
    if ident.len() < 4 || &ident[..4] != b"\x7fELF" {
        return Err(ParseError::NotElf);
    }
    let ident = exact(r, "ELF identification", 0, 16)?;
    let is64 = match ident[4] {
        1 => false,
        2 => true,
        c => {
            return Err(ParseError::Corrupt(format!(
                "ELF class {c} is neither 32 nor 64 bit"
            )));
        }
    };
    let big_endian = match ident[5] {
        1 => false,
        2 => true,
        d => {
            return Err(ParseError::Corrupt(format!(
                "ELF data encoding {d} is neither little nor big endian"
            )));
        }
    };
    let len = if is64 { 64 } else { 52 };
    let h = exact(r, "ELF header", 0, len)?;
    let f = Fields {
        bytes: &h,
        big_endian,
    };
    let header = if is64 {
        Header {
            is64,
            big_endian,
            elf_type: f.u16(16),
            phoff: f.u64(32),
            shoff: f.u64(40),
            phentsize: f.u16(54),
            phnum: f.u16(56).into(),
            shentsize: f.u16(58),
            shnum: f.u16(60).into(),
            shstrndx: f.u16(62).into(),
        }
    } else {
        Header {
            is64,
            big_endian,
            elf_type: f.u16(16),
            phoff: f.u32(28).into(),
            shoff: f.u32(32).into(),
            phentsize: f.u16(42),
            phnum: f.u16(44).into(),
            shentsize: f.u16(46),
            shnum: f.u16(48).into(),
            shstrndx: f.u16(50).into(),
        }
    };
    Ok(header)
}

fn section_entry_size(h: &Header) -> Result<u64, ParseError> {
    let min: u16 = if h.is64 { 64 } else { 40 };
    if h.shentsize < min {
        return Err(ParseError::Corrupt(format!(
            "section header entries of {} bytes (at least {min} expected)",
            h.shentsize
        )));
    }
    Ok(min.into())
}

/// One section header from its bytes (at least the entry's size).
fn parse_section(b: &[u8], h: &Header) -> Section {
    let f = Fields {
        bytes: b,
        big_endian: h.big_endian,
    };
    if h.is64 {
        Section {
            name: f.u32(0),
            kind: f.u32(4),
            offset: f.u64(24),
            size: f.u64(32),
            link: f.u32(40),
            info: f.u32(44),
        }
    } else {
        Section {
            name: f.u32(0),
            kind: f.u32(4),
            offset: f.u32(16).into(),
            size: f.u32(20).into(),
            link: f.u32(24),
            info: f.u32(28),
        }
    }
}

fn segments<R: ReadAt + ?Sized>(
    r: &mut R,
    h: &Header,
    count: u32,
) -> Result<Vec<Segment>, ParseError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let min = if h.is64 { 56 } else { 32 };
    if h.phentsize < min {
        return Err(ParseError::Corrupt(format!(
            "program header entries of {} bytes (at least {min} expected)",
            h.phentsize
        )));
    }
    let len = u64::from(count) * u64::from(h.phentsize);
    let table = exact(r, "program header table", h.phoff, len)?;
    let mut out = Vec::new();
    for entry in table.chunks_exact(usize::from(h.phentsize)) {
        let f = Fields {
            bytes: entry,
            big_endian: h.big_endian,
        };
        out.push(if h.is64 {
            Segment {
                kind: f.u32(0),
                flags: f.u32(4),
                offset: f.u64(8),
                filesz: f.u64(32),
            }
        } else {
            Segment {
                kind: f.u32(0),
                offset: f.u32(4).into(),
                filesz: f.u32(16).into(),
                flags: f.u32(24),
            }
        });
    }
    Ok(out)
}

/// The NUL-terminated name at `at` in the section-name table.
fn name_at(table: &[u8], at: u32) -> Result<String, ParseError> {
    let start = at as usize;
    let rest = table.get(start..).ok_or_else(|| {
        ParseError::Corrupt(format!(
            "a section name at offset {at} lies outside the {}-byte name table",
            table.len()
        ))
    })?;
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Parses a binary. A binary without Go build information is a valid
/// result ([`Go::NotGo`]); only an unreadable, truncated or inconsistent
/// file is an error.
pub fn parse<R: ReadAt + ?Sized>(r: &mut R) -> Result<Binary, ParseError> {
    let h = header(r)?;
    let elf_type = match h.elf_type {
        ET_EXEC => ElfType::Exec,
        ET_DYN => ElfType::Dyn,
        n => ElfType::Other(n),
    };
    // Extended numbering: section 0 holds counts that do not fit the
    // header's 16-bit fields.
    let mut shnum = u64::from(h.shnum);
    let mut shstrndx = h.shstrndx;
    let mut phnum = h.phnum;
    if h.shoff != 0 && (shnum == 0 || shstrndx == SHN_XINDEX || phnum == PN_XNUM) {
        let min = section_entry_size(&h)?;
        let zero = parse_section(&exact(r, "section header", h.shoff, min)?, &h);
        if shnum == 0 {
            shnum = zero.size;
        }
        if shstrndx == SHN_XINDEX {
            shstrndx = zero.link;
        }
        if phnum == PN_XNUM {
            phnum = zero.info;
        }
    }
    if shnum > MAX_TABLE_ENTRIES || u64::from(phnum) > MAX_TABLE_ENTRIES {
        return Err(ParseError::Corrupt(format!(
            "{shnum} sections and {phnum} segments is more than any binary has"
        )));
    }
    if h.shoff == 0 {
        shnum = 0;
    }
    let segs = segments(r, &h, phnum)?;
    let interpreter = segs.iter().any(|s| s.kind == PT_INTERP);

    let mut sections = Vec::new();
    let mut names = Vec::new();
    if shnum > 0 {
        section_entry_size(&h)?;
        let table = exact(
            r,
            "section header table",
            h.shoff,
            shnum * u64::from(h.shentsize),
        )?;
        for entry in table.chunks_exact(usize::from(h.shentsize)) {
            sections.push(parse_section(entry, &h));
        }
        let strtab = sections.get(shstrndx as usize).ok_or_else(|| {
            ParseError::Corrupt(format!(
                "the section-name table is section {shstrndx}, but there are {shnum}"
            ))
        })?;
        if strtab.size > MAX_SHSTRTAB {
            return Err(ParseError::Corrupt(format!(
                "a section-name table of {} bytes",
                strtab.size
            )));
        }
        let table = exact(r, "section-name table", strtab.offset, strtab.size)?;
        for s in &sections {
            names.push(name_at(&table, s.name)?);
        }
    }

    // Where the build information is: its section, else the start of the
    // first writable segment (a binary whose section table was removed).
    let section_data = sections
        .iter()
        .zip(&names)
        .find(|(_, n)| *n == ".go.buildinfo");
    let data = match section_data {
        Some((s, _)) if s.kind != SHT_NOBITS => {
            if s.size > MAX_BUILDINFO {
                return Err(ParseError::Corrupt(format!(
                    ".go.buildinfo is {} bytes",
                    s.size
                )));
            }
            Some(exact(r, ".go.buildinfo section", s.offset, s.size)?)
        }
        Some(_) => None,
        None if shnum == 0 => match segs
            .iter()
            .find(|s| s.kind == PT_LOAD && s.flags & PF_W != 0)
        {
            Some(s) => Some(exact(
                r,
                "first writable segment",
                s.offset,
                s.filesz.min(SEGMENT_SEARCH),
            )?),
            None => None,
        },
        None => None,
    };
    let go = match data {
        Some(d) => buildinfo(&d)?,
        None => Go::NotGo,
    };
    Ok(Binary {
        elf_type,
        interpreter,
        sections: names,
        go,
    })
}

/// Decodes the build-information blob (Go's `debug/buildinfo`).
pub fn buildinfo(data: &[u8]) -> Result<Go, ParseError> {
    let mut rest = data;
    let mut base = 0usize;
    let blob = loop {
        let Some(i) = find(rest, BUILDINFO_MAGIC) else {
            return Ok(Go::NotGo);
        };
        if rest.len() - i < BUILDINFO_HEADER {
            return Ok(Go::NotGo);
        }
        if (base + i).is_multiple_of(BUILDINFO_ALIGN) {
            break &rest[i..];
        }
        let next = (base + i + BUILDINFO_ALIGN - 1) & !(BUILDINFO_ALIGN - 1);
        let skip = next - base;
        rest = &rest[skip.min(rest.len())..];
        base = next;
    };
    let pointer_size = blob[14];
    let flags = blob[15];
    if pointer_size != 4 && pointer_size != 8 {
        return Err(ParseError::Corrupt(format!(
            "Go build information with a pointer size of {pointer_size} bytes"
        )));
    }
    if flags & 2 == 0 {
        return Ok(Go::PointerFormat { pointer_size });
    }
    let (version, after) = varint_string(&blob[BUILDINFO_HEADER..], "Go version")?;
    let (modinfo, _) = varint_string(after, "module information")?;
    let version = String::from_utf8_lossy(version).into_owned();
    if version.is_empty() {
        return Err(ParseError::Corrupt(
            "Go build information with an empty version".into(),
        ));
    }
    // The module information is framed by 16-byte sentinels, the last
    // preceded by a newline; without them there is none.
    let modinfo = if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        &modinfo[16..modinfo.len() - 16]
    } else {
        &[][..]
    };
    let mut info = BuildInfo {
        version,
        path: None,
        main_module: None,
        settings: Vec::new(),
    };
    parse_modinfo(&String::from_utf8_lossy(modinfo), &mut info);
    Ok(Go::Build(info))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A string prefixed by its length as an unsigned LEB128 varint.
fn varint_string<'a>(data: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), ParseError> {
    let mut len: u64 = 0;
    let mut shift = 0u32;
    let mut used = 0usize;
    loop {
        let Some(&b) = data.get(used) else {
            return Err(ParseError::Corrupt(format!(
                "the length of the {what} runs past the build information"
            )));
        };
        used += 1;
        if shift >= 64 || (shift == 63 && b > 1) {
            return Err(ParseError::Corrupt(format!(
                "the length of the {what} overflows"
            )));
        }
        len |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let rest = &data[used..];
    let n = usize::try_from(len).unwrap_or(usize::MAX);
    if n > rest.len() {
        return Err(ParseError::Corrupt(format!(
            "the {what} is {len} bytes, but only {} remain",
            rest.len()
        )));
    }
    Ok((&rest[..n], &rest[n..]))
}

/// The lines Go writes (`debug.BuildInfo.String`): `path`, `mod`, `dep`,
/// `=>`, `build KEY=VALUE` with KEY and VALUE quoted when they contain
/// spaces, tabs, quotes or `=`. Lines it cannot read are skipped: holdfast
/// needs only a few settings.
fn parse_modinfo(text: &str, info: &mut BuildInfo) {
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("path\t") {
            info.path = Some(p.to_string());
        } else if let Some(m) = line.strip_prefix("mod\t") {
            let mut f = m.split('\t');
            if let (Some(path), Some(version)) = (f.next(), f.next()) {
                info.main_module = Some((path.to_string(), version.to_string()));
            }
        } else if let Some(kv) = line.strip_prefix("build\t")
            && let Some((k, v)) = build_setting(kv)
        {
            info.settings.push((k, v));
        }
    }
}

fn build_setting(kv: &str) -> Option<(String, String)> {
    let (key, rest) = if kv.starts_with('"') {
        let (k, rest) = unquote_prefix(kv)?;
        (k, rest.strip_prefix('=')?)
    } else {
        let (k, v) = kv.split_once('=')?;
        (k.to_string(), v)
    };
    if key.is_empty() {
        return None;
    }
    let value = if rest.starts_with('"') {
        let (v, tail) = unquote_prefix(rest)?;
        if !tail.is_empty() {
            return None;
        }
        v
    } else {
        rest.to_string()
    };
    Some((key, value))
}

/// A Go double-quoted string at the start of `s` (`strconv.QuotedPrefix`
/// then `Unquote`), and what follows it.
fn unquote_prefix(s: &str) -> Option<(String, &str)> {
    let mut chars = s.char_indices();
    if chars.next()?.1 != '"' {
        return None;
    }
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'v' => out.push('\x0b'),
                    '\\' | '"' | '\'' => out.push(e),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut hex = String::new();
                        for _ in 0..n {
                            hex.push(chars.next()?.1);
                        }
                        let code = u32::from_str_radix(&hex, 16).ok()?;
                        out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    _ => return None,
                }
            }
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests;
