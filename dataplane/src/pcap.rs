//! Reading and writing capture files (classic pcap in either byte order with microsecond
//! or nanosecond timestamps, and pcapng for reading), without libpcap.
//!
//! The replay command checks its input with this before DPDK sees it, so a bad file is one
//! clear error instead of a driver log; tests use it to build and compare captures.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

/// LINKTYPE_ETHERNET, the only link type a two-port Ethernet gateway can replay.
pub const LINKTYPE_ETHERNET: u32 = 1;

const MAGIC_USEC: u32 = 0xa1b2_c3d4;
const MAGIC_NSEC: u32 = 0xa1b2_3c4d;
const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
const PCAPNG_BYTE_ORDER: u32 = 0x1a2b_3c4d;

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Capture time in nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The captured bytes (the whole frame unless the capture truncated it).
    pub data: Vec<u8>,
    /// The frame's length on the wire.
    pub orig_len: u32,
}

/// A capture file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub link_type: u32,
    pub nanosecond: bool,
    pub records: Vec<Record>,
}

#[derive(Debug)]
pub enum PcapError {
    Io(io::Error),
    NotPcap,
    Truncated {
        record: usize,
    },
    Corrupt(String),
    /// A pcapng file whose interfaces have different link types (the first two seen).
    MixedLinkTypes(u32, u32),
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcapError::Io(e) => write!(f, "{e}"),
            PcapError::NotPcap => write!(f, "not a pcap or pcapng capture file"),
            PcapError::Truncated { record } => {
                write!(f, "the capture is truncated in record {}", record + 1)
            }
            PcapError::Corrupt(what) => write!(f, "corrupt capture: {what}"),
            PcapError::MixedLinkTypes(a, b) => write!(
                f,
                "its interfaces have different link types ({a} and {b}); \
                 a capture must have one link type"
            ),
        }
    }
}

impl std::error::Error for PcapError {}

impl From<io::Error> for PcapError {
    fn from(e: io::Error) -> Self {
        PcapError::Io(e)
    }
}

/// The longest record any capture holds (libpcap's largest snap length).
pub const MAX_RECORD: usize = 262_144;

/// How many records a classic pcap file holds, read strictly (a cut is an error) without
/// holding it in memory: to check a capture that another writer made (net_pcap does not
/// report its write errors).
pub fn count_records(path: &Path) -> Result<u64, PcapError> {
    let mut r = io::BufReader::new(File::open(path)?);
    let mut head = [0u8; 24];
    r.read_exact(&mut head).map_err(|_| PcapError::NotPcap)?;
    let (rd, _) = classic_magic(u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")))?;
    let mut n = 0u64;
    loop {
        let mut hdr = [0u8; 16];
        match r.read(&mut hdr[..1])? {
            0 => return Ok(n),
            _ => r
                .read_exact(&mut hdr[1..])
                .map_err(|_| PcapError::Truncated { record: n as usize })?,
        }
        let caplen = u64::from(rd.u32(&hdr[8..12]));
        if io::copy(&mut (&mut r).take(caplen), &mut io::sink())? < caplen {
            return Err(PcapError::Truncated { record: n as usize });
        }
        n += 1;
    }
}

/// A classic pcap file's byte order and whether its timestamps are in nanoseconds, from
/// its magic number (read little-endian).
fn classic_magic(magic: u32) -> Result<(Endian, bool), PcapError> {
    match (magic, magic.swap_bytes()) {
        (MAGIC_USEC, _) => Ok((Endian(true), false)),
        (MAGIC_NSEC, _) => Ok((Endian(true), true)),
        (_, MAGIC_USEC) => Ok((Endian(false), false)),
        (_, MAGIC_NSEC) => Ok((Endian(false), true)),
        _ => Err(PcapError::NotPcap),
    }
}

/// Reads a whole capture file; one cut short in a record is an error.
pub fn read_file(path: &Path) -> Result<Capture, PcapError> {
    whole(read_file_to_cut(path)?)
}

/// Reads a capture file up to where it is cut short, if it is (as tcpdump reads a capture
/// whose writer was interrupted): its whole records, and the index of the cut one.
pub fn read_file_to_cut(path: &Path) -> Result<(Capture, Option<usize>), PcapError> {
    // A regular file only: a FIFO would block, a device (/dev/zero) never end.
    let (mut file, meta) = control::open_regular_file(path)?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(meta.len() as usize).map_err(|_| {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            "it is too large to hold in memory",
        )
    })?;
    file.read_to_end(&mut bytes)?;
    parse_to_cut(&bytes)
}

/// Parses a capture held in memory; one cut short in a record is an error.
pub fn parse(bytes: &[u8]) -> Result<Capture, PcapError> {
    whole(parse_to_cut(bytes)?)
}

fn whole((cap, cut): (Capture, Option<usize>)) -> Result<Capture, PcapError> {
    match cut {
        Some(record) => Err(PcapError::Truncated { record }),
        None => Ok(cap),
    }
}

/// Parses a capture held in memory up to where it is cut short (see [`read_file_to_cut`]).
pub fn parse_to_cut(bytes: &[u8]) -> Result<(Capture, Option<usize>), PcapError> {
    let magic = match bytes.get(0..4) {
        Some(m) => u32::from_le_bytes(m.try_into().expect("4 bytes")),
        None => return Err(PcapError::NotPcap),
    };
    if magic == PCAPNG_SHB {
        return parse_pcapng(bytes);
    }
    let (rd, nanosecond) = classic_magic(magic)?;
    if bytes.len() < 24 {
        return Err(PcapError::NotPcap);
    }
    // The low 28 bits are the link type; the top bits may carry FCS information.
    let link_type = rd.u32(&bytes[20..24]) & 0x0fff_ffff;
    let mut records = Vec::new();
    let mut at = 24;
    let mut cut = None;
    while at < bytes.len() {
        let Some(hdr) = bytes.get(at..at + 16) else {
            cut = Some(records.len());
            break;
        };
        let (sec, frac) = (u64::from(rd.u32(&hdr[0..4])), u64::from(rd.u32(&hdr[4..8])));
        let caplen = rd.u32(&hdr[8..12]) as usize;
        let orig_len = rd.u32(&hdr[12..16]);
        let Some(data) = bytes.get(at + 16..at + 16 + caplen) else {
            // Data that runs out is a cut; a length no capture holds is corruption.
            if caplen > MAX_RECORD {
                return Err(PcapError::Corrupt(format!(
                    "record {} claims {caplen} bytes",
                    records.len() + 1
                )));
            }
            cut = Some(records.len());
            break;
        };
        let ts_ns = sec * 1_000_000_000 + if nanosecond { frac } else { frac * 1000 };
        records.push(Record {
            ts_ns,
            data: data.to_vec(),
            orig_len,
        });
        at += 16 + caplen;
    }
    let cap = Capture {
        link_type,
        nanosecond,
        records,
    };
    Ok((cap, cut))
}

/// A pcapng section's byte order, from the byte-order magic of its header block at `at`.
fn section_order(bytes: &[u8], at: usize) -> Option<Endian> {
    let bom = bytes.get(at + 8..at + 12)?;
    match u32::from_le_bytes(bom.try_into().expect("4 bytes")) {
        PCAPNG_BYTE_ORDER => Some(Endian(true)),
        x if x.swap_bytes() == PCAPNG_BYTE_ORDER => Some(Endian(false)),
        _ => None,
    }
}

/// pcapng: the link type of its interfaces (all the same), and every packet block's data.
/// Each section has its own byte order (a file may join captures from two machines).
fn parse_pcapng(bytes: &[u8]) -> Result<(Capture, Option<usize>), PcapError> {
    let mut rd = section_order(bytes, 0).ok_or(PcapError::NotPcap)?;
    let mut link_type = None;
    let mut records = Vec::new();
    let mut at = 0;
    let mut cut = None;
    while at < bytes.len() {
        let record = records.len();
        let Some(hdr) = bytes.get(at..at + 8) else {
            cut = Some(record);
            break;
        };
        // A section header's type reads the same in either byte order; its own order
        // holds from its length on.
        if rd.u32(&hdr[0..4]) == PCAPNG_SHB {
            match section_order(bytes, at) {
                Some(order) => rd = order,
                None if bytes.len() < at + 12 => {
                    cut = Some(record);
                    break;
                }
                None => {
                    return Err(PcapError::Corrupt(format!(
                        "section header without a byte-order magic at byte {at}"
                    )))
                }
            }
        }
        let (kind, len) = (rd.u32(&hdr[0..4]), rd.u32(&hdr[4..8]) as usize);
        if len < 12 || len % 4 != 0 {
            return Err(PcapError::Corrupt(format!(
                "block of length {len} at byte {at}"
            )));
        }
        let Some(block) = bytes.get(at..at + len) else {
            if len > MAX_RECORD + 64 {
                return Err(PcapError::Corrupt(format!(
                    "block of length {len} at byte {at}"
                )));
            }
            cut = Some(record);
            break;
        };
        match kind {
            // Interface description block: link type in its first two bytes. One for
            // all interfaces: DPDK's reader (libpcap) stops at a packet of another.
            1 if len >= 20 => {
                let this = u32::from(rd.u16(&block[8..10]));
                match link_type {
                    None => link_type = Some(this),
                    Some(first) if first != this => {
                        return Err(PcapError::MixedLinkTypes(first, this))
                    }
                    Some(_) => {}
                }
            }
            // Enhanced packet block: interface, timestamp (µs by default), lengths, data.
            6 if len >= 32 => {
                let ts =
                    (u64::from(rd.u32(&block[12..16])) << 32) | u64::from(rd.u32(&block[16..20]));
                let caplen = rd.u32(&block[20..24]) as usize;
                let orig_len = rd.u32(&block[24..28]);
                let data = block
                    .get(28..28 + caplen)
                    .ok_or(PcapError::Truncated { record })?;
                records.push(Record {
                    ts_ns: ts * 1000,
                    data: data.to_vec(),
                    orig_len,
                });
            }
            // Simple packet block: original length, then data up to the block's end.
            3 if len >= 16 => {
                let orig_len = rd.u32(&block[8..12]);
                let caplen = (orig_len as usize).min(len - 16);
                records.push(Record {
                    ts_ns: 0,
                    data: block[12..12 + caplen].to_vec(),
                    orig_len,
                });
            }
            _ => {}
        }
        at += len;
    }
    let link_type =
        link_type.ok_or_else(|| PcapError::Corrupt("no interface description".into()))?;
    let cap = Capture {
        link_type,
        nanosecond: false,
        records,
    };
    Ok((cap, cut))
}

#[derive(Clone, Copy)]
struct Endian(bool);

impl Endian {
    fn u32(self, b: &[u8]) -> u32 {
        let b: [u8; 4] = b.try_into().expect("4 bytes");
        if self.0 {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    }
    fn u16(self, b: &[u8]) -> u16 {
        let b: [u8; 2] = b.try_into().expect("2 bytes");
        if self.0 {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    }
}

/// Writes a classic little-endian pcap file with Ethernet link type.
pub fn write_file<'a>(
    path: &Path,
    nanosecond: bool,
    records: impl IntoIterator<Item = &'a Record>,
) -> io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    write_to(&mut w, nanosecond, records)?;
    w.flush()
}

/// Writes a classic little-endian pcap with Ethernet link type to any writer.
pub fn write_to<'a>(
    w: &mut impl Write,
    nanosecond: bool,
    records: impl IntoIterator<Item = &'a Record>,
) -> io::Result<()> {
    let magic = if nanosecond { MAGIC_NSEC } else { MAGIC_USEC };
    w.write_all(&magic.to_le_bytes())?;
    w.write_all(&2u16.to_le_bytes())?;
    w.write_all(&4u16.to_le_bytes())?;
    w.write_all(&0i32.to_le_bytes())?; // thiszone
    w.write_all(&0u32.to_le_bytes())?; // sigfigs
    w.write_all(&262_144u32.to_le_bytes())?; // snaplen
    w.write_all(&LINKTYPE_ETHERNET.to_le_bytes())?;
    for r in records {
        let sec = (r.ts_ns / 1_000_000_000) as u32;
        let sub = r.ts_ns % 1_000_000_000;
        let frac = if nanosecond { sub } else { sub / 1000 } as u32;
        w.write_all(&sec.to_le_bytes())?;
        w.write_all(&frac.to_le_bytes())?;
        w.write_all(&(r.data.len() as u32).to_le_bytes())?;
        w.write_all(&r.orig_len.to_le_bytes())?;
        w.write_all(&r.data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts_ns: u64, data: &[u8]) -> Record {
        Record {
            ts_ns,
            data: data.to_vec(),
            orig_len: data.len() as u32,
        }
    }

    #[test]
    fn round_trips_micro_and_nanosecond() {
        let recs = vec![
            rec(1_500_000_123_000, &[1, 2, 3]),
            rec(1_500_000_124_000, &[0xff; 60]),
        ];
        for nanosecond in [false, true] {
            let mut buf = Vec::new();
            write_to(&mut buf, nanosecond, &recs).unwrap();
            let cap = parse(&buf).unwrap();
            assert_eq!(cap.link_type, LINKTYPE_ETHERNET);
            assert_eq!(cap.nanosecond, nanosecond);
            assert_eq!(cap.records, recs);
        }
    }

    #[test]
    fn reads_big_endian_files() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&MAGIC_NSEC.to_be_bytes());
        buf.extend_from_slice(&[
            0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 1,
        ]);
        buf.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0, 2, 0xaa, 0xbb]);
        let cap = parse(&buf).unwrap();
        assert_eq!(cap.records, vec![rec(2_000_000_007, &[0xaa, 0xbb])]);
    }

    #[test]
    fn reads_pcapng_link_type_and_packets() {
        let mut b = Vec::new();
        let le = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
        // Section header block (28 bytes).
        for v in [PCAPNG_SHB, 28, PCAPNG_BYTE_ORDER, 1, u32::MAX, u32::MAX, 28] {
            le(&mut b, v);
        }
        // Interface description block, link type 113 (Linux cooked).
        for v in [1, 20, 113, 0, 20] {
            le(&mut b, v);
        }
        // Enhanced packet block with 4 bytes of data, timestamp 5 µs.
        for v in [6, 36, 0, 0, 5, 4, 4, 0xdead_beef, 36] {
            le(&mut b, v);
        }
        let cap = parse(&b).unwrap();
        assert_eq!(cap.link_type, 113);
        assert_eq!(cap.records, vec![rec(5000, &0xdead_beefu32.to_le_bytes())]);
        // A second interface of the same link type is fine; of another, an error.
        let mut same = b.clone();
        for v in [1, 20, 113, 0, 20] {
            le(&mut same, v);
        }
        assert_eq!(parse(&same).unwrap().link_type, 113);
        for v in [1, 20, 1, 0, 20] {
            le(&mut b, v);
        }
        assert!(matches!(parse(&b), Err(PcapError::MixedLinkTypes(113, 1))));
    }

    /// A file joining two sections of different byte order (tshark reads it; libpcap does
    /// not, so replay writes DPDK its own copy). Found by an audit: "corrupt capture".
    #[test]
    fn reads_pcapng_sections_of_either_byte_order() {
        let mut b = Vec::new();
        let section = |b: &mut Vec<u8>, big: bool, data: u32| {
            let put = |b: &mut Vec<u8>, v: u32| {
                b.extend_from_slice(&if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                })
            };
            for v in [PCAPNG_SHB, 28, PCAPNG_BYTE_ORDER, 1, u32::MAX, u32::MAX, 28] {
                put(b, v);
            }
            // Link type (16 bits) and 16 reserved bits.
            for v in [1, 20, if big { 1 << 16 } else { 1 }, 0, 20] {
                put(b, v);
            }
            for v in [6, 36, 0, 0, 5, 4, 4, data, 36] {
                put(b, v);
            }
        };
        section(&mut b, false, 0x0102_0304);
        section(&mut b, true, 0x0506_0708);
        let cap = parse(&b).unwrap();
        let data: Vec<&[u8]> = cap.records.iter().map(|r| &r.data[..]).collect();
        assert_eq!(data, [[4, 3, 2, 1], [5, 6, 7, 8]]);
    }

    #[test]
    fn rejects_other_files_and_truncation() {
        assert!(matches!(
            parse(b"hello world, not a capture"),
            Err(PcapError::NotPcap)
        ));
        assert!(matches!(parse(b""), Err(PcapError::NotPcap)));
        let mut buf = Vec::new();
        write_to(&mut buf, false, &[rec(0, &[1, 2, 3, 4])]).unwrap();
        buf.truncate(buf.len() - 1);
        assert!(matches!(
            parse(&buf),
            Err(PcapError::Truncated { record: 0 })
        ));
        // Read to the cut: the whole records before it, and where it is.
        let mut buf = Vec::new();
        write_to(&mut buf, false, &[rec(0, &[1, 2]), rec(1000, &[3, 4, 5])]).unwrap();
        for cut_at in [buf.len() - 1, buf.len() - 3 - 16 + 5] {
            let (cap, cut) = parse_to_cut(&buf[..cut_at]).unwrap();
            assert_eq!((cap.records, cut), (vec![rec(0, &[1, 2])], Some(1)));
        }
        // A length no capture holds is corruption, not a cut.
        let mut bad = buf.clone();
        let second = 24 + 16 + 2;
        bad[second + 8..second + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_to_cut(&bad), Err(PcapError::Corrupt(_))));

        // Counted strictly, without holding the file.
        let dir = std::env::temp_dir().join(format!("qosgw-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.pcap");
        std::fs::write(&file, &buf).unwrap();
        assert_eq!(count_records(&file).unwrap(), 2);
        std::fs::write(&file, &buf[..buf.len() - 1]).unwrap();
        assert!(matches!(
            count_records(&file),
            Err(PcapError::Truncated { record: 1 })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
