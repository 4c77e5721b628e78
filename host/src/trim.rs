//! Giving the kernel back the pages of the host's own binary (and of libc)
//! that start-up touched and an idle host does not use.
//!
//! Start-up runs code once (config parsing, the engine's and linker's
//! set-up, loading artifacts, the guests' `init`), and every page of it
//! stays mapped, counted in the process's RSS for as long as it lives: on
//! the board-like build, 5 of the 7 MiB of the binary's resident pages.
//! Those pages are clean copies of the file: [`release_start_up_pages`]
//! unmaps them from the process (`MADV_DONTNEED`); they stay in the page
//! cache until the kernel needs the memory, and a page used again is mapped
//! back on its next touch (a minor fault, no disk read while it is cached).
//!
//! Only mappings that are never unmapped while the process lives are
//! touched (the executable and the C libraries), and of those only ones
//! without a private copy of any page (`Anonymous: 0`; the relocated
//! read-only data has one, and dropping it would lose the relocations).

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Libraries that stay loaded for the whole process (never `dlclose`d).
const RESIDENT_LIBRARIES: [&str; 4] = ["/libc.so", "/libm.so", "/ld-linux", "/libgcc_s.so"];

/// A mapping of `/proc/self/smaps` that may be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: usize,
    end: usize,
}

/// What [`release_start_up_pages`] gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Mappings advised.
    pub mappings: usize,
    /// Their resident size before, in KiB.
    pub resident_kib: u64,
}

/// Why pages could not be released.
#[derive(Debug, thiserror::Error)]
pub enum TrimError {
    #[error("reading /proc/self/smaps: {0}")]
    Smaps(#[from] std::io::Error),
}

/// Whether the host's start-up is over: every guest loaded (initialised or
/// failed). Until then a guest's run leaves its code pages, and start-up
/// its freed heap, for later (see [`end_start_up`]).
static START_UP_OVER: AtomicBool = AtomicBool::new(false);

/// Wakes [`start_up_ended`]'s waiters.
static START_UP_ENDED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Says start-up is over (process-wide, once and for all): from now on
/// pages are released as soon as they may be.
pub fn end_start_up() {
    START_UP_OVER.store(true, Ordering::Release);
    START_UP_ENDED.notify_waiters();
}

/// Resolves once [`end_start_up`] was called (at once if it was).
pub async fn start_up_ended() {
    let notified = START_UP_ENDED.notified();
    tokio::pin!(notified);
    // Registered before the flag is read: an end between the two still wakes it.
    notified.as_mut().enable();
    if !start_up_over() {
        notified.await;
    }
}

/// Whether [`end_start_up`] was called. Before it, releasing waits: the
/// `/proc/self/smaps` walk behind [`release_image`] costs about a
/// millisecond of kernel CPU, and `malloc_trim` gives back heap pages the
/// next guest's load faults in again, both while other guests still load
/// on the same cores and `/ready` waits for them.
pub fn start_up_over() -> bool {
    START_UP_OVER.load(Ordering::Acquire)
}

/// The mappings [`release_start_up_pages`] released, which
/// [`release_host_pages_again`] releases again after each guest run.
static HOST_MAPPINGS: OnceLock<Vec<(Range, u64)>> = OnceLock::new();

/// Releases the clean, read-only pages of the executable and the C
/// libraries (see the module docs), and remembers those mappings for
/// [`release_host_pages_again`].
pub fn release_start_up_pages() -> Result<Released, TrimError> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let ranges = releasable(&smaps, &|_, path| is_resident_file(path, &exe));
    let released = release(&ranges);
    let _ = HOST_MAPPINGS.set(ranges);
    Ok(released)
}

/// Releases again the host's pages a guest's run touched (the store, the
/// runtime's call path: a megabyte or more with the kernel's fault-around),
/// once [`release_start_up_pages`] has run; otherwise does nothing. No
/// `/proc` read: the executable's and the C libraries' mappings, and what
/// they hold, do not change while the process lives.
pub fn release_host_pages_again() {
    if let Some(ranges) = HOST_MAPPINGS.get() {
        release(ranges);
    }
}

/// Releases the read-only pages of a guest's compiled code, mapped from its
/// artifact at `image` ([`wasmtime::component::Component::image_range`]),
/// that hold no private copy (a page wasmtime patched at load keeps its
/// patch). The caller holds the component, so the mapping stays while this
/// runs; its next run maps back the pages it touches.
pub fn release_image(image: std::ops::Range<*const u8>) -> Result<Released, TrimError> {
    let (start, end) = (image.start as usize, image.end as usize);
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(release(&releasable(&smaps, &|range, path| range.start >= start && range.end <= end && !path.is_empty())))
}

/// Advises the kernel it may drop `ranges`' pages (`MADV_DONTNEED`).
fn release(ranges: &[(Range, u64)]) -> Released {
    let mut released = Released::default();
    for (range, resident_kib) in ranges {
        // SAFETY: `releasable` chose whole read-only file mappings without a
        // private page, which stay mapped while this runs: MADV_DONTNEED
        // only drops their page-table entries, and every page reads back
        // from the file unchanged.
        let done =
            unsafe { libc::madvise(range.start as *mut libc::c_void, range.end - range.start, libc::MADV_DONTNEED) };
        if done == 0 {
            released.mappings += 1;
            released.resident_kib += resident_kib;
        }
    }
    released
}

/// The mappings in `smaps` that may be released, with their resident KiB:
/// read-only, resident, without a private (anonymous) page, and `wanted`
/// (given each one's range and path).
fn releasable(smaps: &str, wanted: &dyn Fn(Range, &str) -> bool) -> Vec<(Range, u64)> {
    let mut found = Vec::new();
    let mut current: Option<(Range, bool)> = None;
    let mut rss = 0;
    let mut finish = |current: Option<(Range, bool)>, rss: u64, anonymous_free: bool| {
        if let Some((range, wanted)) = current
            && wanted
            && anonymous_free
            && rss > 0
        {
            found.push((range, rss));
        }
    };
    let mut anonymous_free = true;
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            finish(current.take(), rss, anonymous_free);
            let (range, perms, path) = header;
            let read_only = !perms.contains('w');
            current = Some((range, read_only && wanted(range, path)));
            (rss, anonymous_free) = (0, true);
        } else if let Some(kib) = field_kib(line, "Rss:") {
            rss = kib;
        } else if let Some(kib) = field_kib(line, "Anonymous:") {
            // `Private_Dirty` is no guide: a file the linker has just
            // written has dirty page-cache pages, which stay in the cache.
            anonymous_free &= kib == 0;
        }
    }
    finish(current, rss, anonymous_free);
    found
}

/// `start-end perms offset dev inode path` of a mapping's first line.
fn mapping_header(line: &str) -> Option<(Range, &str, &str)> {
    let mut words = line.split_whitespace();
    let (start, end) = words.next()?.split_once('-')?;
    let range = Range { start: usize::from_str_radix(start, 16).ok()?, end: usize::from_str_radix(end, 16).ok()? };
    let perms = words.next()?;
    let path = words.nth(3).unwrap_or("");
    Some((range, perms, path))
}

/// `Key:   N kB` as N.
fn field_kib(line: &str, key: &str) -> Option<u64> {
    line.strip_prefix(key)?.split_whitespace().next()?.parse().ok()
}

fn is_resident_file(path: &str, exe: &Path) -> bool {
    Path::new(path) == exe || RESIDENT_LIBRARIES.iter().any(|lib| path.contains(lib))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0320000 r--p 00000000 08:01 42 /usr/bin/wattedge
Rss:                1352 kB
Anonymous:             0 kB
Private_Dirty:      1352 kB
55d0a0320000-55d0a0b1a000 r-xp 00320000 08:01 42 /usr/bin/wattedge
Rss:                5356 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
55d0a0b1a000-55d0a0b7f000 r--p 00b1a000 08:01 42 /usr/bin/wattedge
Rss:                 404 kB
Anonymous:           404 kB
Private_Dirty:       404 kB
55d0a0b7f000-55d0a0b80000 rw-p 00b7f000 08:01 42 /usr/bin/wattedge
Rss:                   4 kB
Anonymous:             4 kB
Private_Dirty:         4 kB
7f0000000000-7f0000100000 r-xp 00001000 08:01 77 /state/cache/guest.cwasm
Rss:                1028 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
7f0000200000-7f0000300000 r-xp 00026000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 936 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0
Rss:                 132 kB
Anonymous:           132 kB
Private_Dirty:       132 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_the_binary_and_libc_are_released() {
        let exe = Path::new("/usr/bin/wattedge");
        let found = releasable(SMAPS, &|_, path| is_resident_file(path, exe));
        let starts: Vec<(usize, u64)> = found.iter().map(|(r, kib)| (r.start, *kib)).collect();
        assert_eq!(
            starts,
            [(0x55d0a0000000, 1352), (0x55d0a0320000, 5356), (0x7f0000200000, 936)],
            "the relocated read-only data, writable data, artifacts and anonymous memory stay; \
             dirty page-cache pages (a freshly written binary) go"
        );
    }

    #[test]
    fn an_image_releases_only_its_own_read_only_mappings() {
        let image =
            |range: Range, path: &str| range.start >= 0x7f0000000000 && range.end <= 0x7f0000100000 && !path.is_empty();
        let found = releasable(SMAPS, &image);
        assert_eq!(found, [(Range { start: 0x7f0000000000, end: 0x7f0000100000 }, 1028)]);
    }

    #[test]
    fn releasing_keeps_the_process_running_its_code() {
        let released = release_start_up_pages().expect("smaps readable");
        assert!(released.mappings > 0, "the test binary's own text is a candidate: {released:?}");
        // Code and read-only data come back from the file on their next touch.
        let text = format!("{:?}", std::hint::black_box(vec![1u32, 2, 3]));
        assert_eq!(text, "[1, 2, 3]");
    }
}
