//! The outbox's on-disk record format and the recovery scan of one segment.
//!
//! A segment file (`NNNNNNNNNNNNNNNNNNNN.seg`, the number increasing) is a
//! sequence of records:
//!
//! ```text
//! len:   u32 LE   length of the payload
//! crc:   u32 LE   CRC-32 (IEEE) of the payload
//! payload:
//!   accepted_ns: i64 LE   when `write` accepted the points (for the age metric)
//!   points:      u32 LE   how many points the record holds
//!   lines:       [u8]     the points as line protocol, one `\n`-terminated line each
//! ```
//!
//! A record is valid only when its whole payload is present and its CRC
//! matches, so a write torn by a crash or power cut is detected on the next
//! start and cut off, and never forwarded half-written.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes of the record header (len + crc).
pub const HEADER: u64 = 8;
/// Bytes of the fixed payload prefix (accepted_ns + points).
const PREFIX: usize = 12;
/// A length above this is corruption, not a record (it also bounds what a
/// corrupt header can make us allocate).
pub const MAX_PAYLOAD: u64 = 256 << 20;

/// Encodes one record.
pub fn encode(accepted_ns: i64, points: u32, lines: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(PREFIX + lines.len());
    payload.extend_from_slice(&accepted_ns.to_le_bytes());
    payload.extend_from_slice(&points.to_le_bytes());
    payload.extend_from_slice(lines);
    let mut out = Vec::with_capacity(HEADER as usize + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Bytes in front of a record's lines: the header and the payload prefix.
pub const FRAME: usize = HEADER as usize + PREFIX;

/// A record built in place: line protocol is encoded straight into the
/// buffer behind room for the frame, which [`RecordBuf::seal`] fills in, so
/// a write's lines are never copied to be framed (they are 200 KB for a
/// 5000-point write).
#[derive(Debug)]
pub struct RecordBuf {
    text: String,
}

impl RecordBuf {
    /// An empty record with room for `lines` bytes of line protocol.
    pub fn with_capacity(lines: usize) -> RecordBuf {
        let mut text = String::with_capacity(FRAME + lines);
        text.extend(std::iter::repeat_n('\0', FRAME));
        RecordBuf { text }
    }

    /// The line protocol so far, for the encoder to append to (appending
    /// is all it may do: what is there already belongs to the record).
    pub fn lines(&mut self) -> &mut String {
        &mut self.text
    }

    /// Bytes of line protocol so far.
    pub fn lines_len(&self) -> usize {
        self.text.len() - FRAME
    }

    /// The finished record, as [`encode`] would make it from the same lines.
    pub fn seal(self, accepted_ns: i64, points: u32) -> Vec<u8> {
        let mut bytes = self.text.into_bytes();
        let header = HEADER as usize;
        bytes[header..header + 8].copy_from_slice(&accepted_ns.to_le_bytes());
        bytes[header + 8..FRAME].copy_from_slice(&points.to_le_bytes());
        let len = (bytes.len() - header) as u32;
        let crc = crc32fast::hash(&bytes[header..]);
        bytes[0..4].copy_from_slice(&len.to_le_bytes());
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        bytes
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub accepted_ns: i64,
    pub points: u32,
    pub lines: Vec<u8>,
    /// Bytes the record takes in the file, header included.
    pub size: u64,
}

/// A record's frame (header and payload prefix), checked for a length in
/// bounds: what [`decode`] and [`read_at`] read before the lines.
struct Frame {
    bytes: [u8; FRAME],
    /// The payload's length (prefix and lines).
    len: u64,
    accepted_ns: i64,
    points: u32,
}

impl Frame {
    /// The frame at the start of `bytes`; `None` when they are too short or
    /// the length is not one a record can have.
    fn parse(bytes: &[u8]) -> Option<Frame> {
        let bytes: [u8; FRAME] = bytes.get(..FRAME)?.try_into().ok()?;
        let len = u64::from(u32::from_le_bytes(bytes[0..4].try_into().ok()?));
        let accepted_ns = i64::from_le_bytes(bytes[8..16].try_into().ok()?);
        let points = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
        (PREFIX as u64..=MAX_PAYLOAD).contains(&len).then_some(Frame { bytes, len, accepted_ns, points })
    }

    /// Bytes of the record's lines.
    fn lines_len(&self) -> usize {
        self.len as usize - PREFIX
    }

    /// Bytes of the whole record.
    fn size(&self) -> u64 {
        HEADER + self.len
    }

    /// Whether the CRC covers the prefix and `lines`.
    fn holds(&self, lines: &[u8]) -> bool {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.bytes[HEADER as usize..]);
        crc.update(lines);
        self.bytes[4..8] == crc.finalize().to_le_bytes()
    }

    fn record(&self, lines: Vec<u8>) -> Record {
        Record { accepted_ns: self.accepted_ns, points: self.points, lines, size: self.size() }
    }
}

/// Decodes the record at the start of `buf`; `None` when it is incomplete
/// or corrupt (bad length, CRC mismatch).
pub fn decode(buf: &[u8]) -> Option<Record> {
    let frame = Frame::parse(buf)?;
    let lines = buf.get(FRAME..frame.size() as usize)?;
    frame.holds(lines).then(|| frame.record(lines.to_vec()))
}

/// Reads the record at `offset` of an open segment file whose valid data
/// ends at `end`; `Ok(None)` when the bytes there are not a valid record.
pub fn read_at(file: &mut std::fs::File, offset: u64, end: u64) -> io::Result<Option<Record>> {
    if offset + FRAME as u64 > end {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut head = [0u8; FRAME];
    file.read_exact(&mut head)?;
    let Some(frame) = Frame::parse(&head).filter(|f| offset + f.size() <= end) else { return Ok(None) };
    // The lines are read straight into their own buffer (no zero fill, no
    // copy out of a framed one): they are the batch the forwarder sends.
    let want = frame.lines_len();
    let mut lines = Vec::with_capacity(want);
    file.take(want as u64).read_to_end(&mut lines)?;
    if lines.len() != want {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(frame.holds(&lines).then(|| frame.record(lines)))
}

/// What the recovery scan found in one segment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scan {
    /// Bytes of valid records from the start of the file.
    pub valid_len: u64,
    /// Points in the valid records.
    pub points: u64,
    /// End offset of each valid record (record boundaries).
    pub boundaries: Vec<u64>,
    /// Accepted time of the first valid record.
    pub first_accepted_ns: Option<i64>,
    /// Bytes after the valid prefix (a torn or corrupt tail), 0 when clean.
    pub torn_bytes: u64,
}

/// Scans a whole segment file. Everything from the first invalid record on
/// is the torn tail: after a crash only the last append can be incomplete,
/// and nothing after a corrupt header can be framed reliably.
pub fn scan(path: &Path) -> io::Result<Scan> {
    let data = std::fs::read(path)?;
    let mut scan = Scan::default();
    let mut offset = 0usize;
    while offset < data.len() {
        let Some(record) = decode(&data[offset..]) else { break };
        offset += record.size as usize;
        scan.points += u64::from(record.points);
        scan.first_accepted_ns.get_or_insert(record.accepted_ns);
        scan.boundaries.push(offset as u64);
    }
    scan.valid_len = offset as u64;
    scan.torn_bytes = (data.len() - offset) as u64;
    Ok(scan)
}

/// The file name of segment `id`.
pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Segment ids present in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Makes a directory entry change (create, delete) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let rec = encode(42, 2, b"m f=1 1\nm f=2 2\n");
        let back = decode(&rec).expect("valid record");
        assert_eq!((back.accepted_ns, back.points, back.size), (42, 2, rec.len() as u64));
        assert_eq!(back.lines, b"m f=1 1\nm f=2 2\n");
        assert!(decode(&rec[..rec.len() - 1]).is_none(), "a cut record is invalid");
        let mut flipped = rec.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode(&flipped).is_none(), "a flipped bit fails the CRC");
        let mut huge = rec;
        huge[3] = 0xff;
        assert!(decode(&huge).is_none(), "an absurd length is corruption");
    }

    #[test]
    fn a_record_built_in_place_is_the_encoded_record() {
        let mut buf = RecordBuf::with_capacity(4);
        buf.lines().push_str("m f=1 1\nm f=2 2\n");
        assert_eq!(buf.lines_len(), 16);
        assert_eq!(buf.seal(42, 2), encode(42, 2, b"m f=1 1\nm f=2 2\n"));
    }

    #[test]
    fn a_record_read_from_its_file_is_the_decoded_record_and_a_bad_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), 1);
        let a = encode(7, 2, b"m f=1 1\nm f=2 2\n");
        let mut flipped = encode(8, 1, b"m f=3 3\n");
        *flipped.last_mut().unwrap() ^= 1;
        let end = (a.len() + flipped.len()) as u64;
        std::fs::write(&file, [a.clone(), flipped].concat()).unwrap();
        let mut f = std::fs::File::open(&file).unwrap();
        assert_eq!(read_at(&mut f, 0, end).unwrap(), decode(&a));
        assert!(read_at(&mut f, 0, end).unwrap().is_some());
        assert_eq!(read_at(&mut f, 0, a.len() as u64 - 1).unwrap(), None, "a record cut by the end");
        assert_eq!(read_at(&mut f, 0, 10).unwrap(), None, "shorter than a frame");
        assert_eq!(read_at(&mut f, a.len() as u64, end).unwrap(), None, "a flipped bit fails the CRC");
    }

    #[test]
    fn scan_stops_at_the_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), 1);
        let a = encode(1, 1, b"m f=1 1\n");
        let b = encode(2, 3, b"m f=1 1\nm f=2 2\nm f=3 3\n");
        let mut bytes = [a.clone(), b.clone()].concat();
        bytes.extend_from_slice(&b[..b.len() / 2]);
        std::fs::write(&file, &bytes).unwrap();
        let s = scan(&file).unwrap();
        assert_eq!(s.valid_len, (a.len() + b.len()) as u64);
        assert_eq!((s.points, s.first_accepted_ns), (4, Some(1)));
        assert_eq!(s.boundaries, vec![a.len() as u64, (a.len() + b.len()) as u64]);
        assert_eq!(s.torn_bytes, (b.len() / 2) as u64);
        assert_eq!(list(dir.path()).unwrap(), vec![1]);
    }
}
