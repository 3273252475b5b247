//! Reading a whole BPF hash map or array in chunks with
//! `BPF_MAP_LOOKUP_BATCH`.
//!
//! Hand-written because aya 0.14 has no batch map operations: its map
//! iterators walk with `BPF_MAP_GET_NEXT_KEY` and then fetch each value with
//! `BPF_MAP_LOOKUP_ELEM`, two syscalls per entry. The aging sweep walks the
//! session and binding tables every few seconds, and at a million entries
//! that would be two million syscalls per walk; one batch lookup copies up to
//! `chunk` keys and values at once, so the same walk takes a few hundred.
//!
//! Only `BPF_MAP_TYPE_HASH`, `BPF_MAP_TYPE_LRU_HASH` and
//! `BPF_MAP_TYPE_ARRAY` are accepted: their values are laid out one
//! `value_size` after the other (the per-CPU variants are not), and their
//! batch token is a bucket index (an array's: an index), so a walk visits
//! each bucket once even while the datapath inserts and deletes.
//! Entries added or removed during the walk may or may not be seen, as with
//! any walk of a live map.
use std::{
    borrow::Borrow,
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData, MapType},
};

/// Entries fetched per syscall unless told otherwise: 4096 session entries
/// are 4096 * (12 + 32) bytes, small enough to stay in cache.
pub const DEFAULT_CHUNK: u32 = 4096;

/// `enum bpf_cmd` value of `BPF_MAP_LOOKUP_BATCH` (linux/bpf.h, since 5.6).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr` (linux/bpf.h). The kernel reads
/// only as many bytes as we pass and treats the rest of the union as zero.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Where the kernel reads the token to resume from; 0 starts the walk.
    in_batch: u64,
    /// Where the kernel writes the token of the next call.
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: room in `keys` and `values`, in entries. Out: entries copied.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Checks that `map_fd` is a (LRU) hash map or an array whose keys are exactly a `K`
/// and whose values are exactly a `V`: the kernel writes `key_size` and
/// `value_size` bytes per entry into our buffers, so this is what keeps the
/// walk memory-safe. Returns the map's capacity.
fn check_map<K, V>(map_fd: BorrowedFd<'_>) -> io::Result<u32> {
    let info = MapData::from_fd(map_fd.try_clone_to_owned()?)
        .and_then(|map| map.info())
        .map_err(io::Error::other)?;
    let map_type = info.map_type().map_err(io::Error::other)?;
    if !matches!(map_type, MapType::Hash | MapType::LruHash | MapType::Array) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "batch walk of a {map_type:?}: only hash, LRU hash and array maps are supported"
            ),
        ));
    }
    if info.key_size() as usize != size_of::<K>() || info.value_size() as usize != size_of::<V>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "map has {}-byte keys and {}-byte values, expected {} and {}",
                info.key_size(),
                info.value_size(),
                size_of::<K>(),
                size_of::<V>()
            ),
        ));
    }
    Ok(info.max_entries())
}

/// Calls `f` on every entry of the hash, LRU hash or array map `map_fd`, fetching
/// up to `chunk` entries per syscall; returns how many entries it visited.
///
/// Fails with `InvalidInput` if the map is of another type or its key or
/// value size differs from `K`'s or `V`'s.
pub fn for_each_entry<K: Pod, V: Pod>(
    map_fd: BorrowedFd<'_>,
    chunk: u32,
    mut f: impl FnMut(&K, &V),
) -> io::Result<usize> {
    let max_entries = check_map::<K, V>(map_fd)?;
    // The kernel refuses a chunk smaller than one bucket's entries
    // (ENOSPC); more than the whole map is never needed.
    let mut chunk = chunk.clamp(1, max_entries.max(1));
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    // The token is a u32 bucket index for hash maps; give it 8 bytes in case
    // a map type ever uses a wider one.
    let mut token_in = 0u64;
    let mut token_out = 0u64;
    let mut first = true;
    let mut visited = 0usize;
    loop {
        keys.resize_with(chunk as usize, MaybeUninit::uninit);
        values.resize_with(chunk as usize, MaybeUninit::uninit);
        let mut attr = BatchAttr {
            // A null `in_batch` starts from the first bucket.
            in_batch: if first { 0 } else { &raw const token_in as u64 },
            out_batch: &raw mut token_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: map_fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size we pass,
        // and lives across the call (the kernel writes `count` back into
        // it). `keys` and `values` hold `chunk` elements each and
        // `check_map` made sure that the kernel writes exactly
        // `size_of::<K>()` and `size_of::<V>()` bytes per entry, so it
        // writes at most `chunk` entries inside them. The tokens are 8
        // bytes, the kernel reads and writes 4.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        let copied = attr.count.min(chunk) as usize;
        match error.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket holds more entries than `chunk` (nothing was copied):
            // try again from the same place with more room.
            Some(libc::ENOSPC) if copied == 0 && chunk < max_entries => {
                chunk = chunk.saturating_mul(2).min(max_entries);
                continue;
            }
            // ENOENT: past the last bucket; this call may still have
            // copied a last, partial chunk.
            None | Some(libc::ENOENT) => {}
            _ => return Err(error.unwrap_or_else(|| io::Error::other("unreachable"))),
        }
        for (key, value) in keys[..copied].iter().zip(&values[..copied]) {
            // SAFETY: the kernel initialized the first `copied` entries of
            // both buffers, and `Pod` types are valid for any bytes.
            let (key, value) = unsafe { (key.assume_init_ref(), value.assume_init_ref()) };
            f(key, value);
        }
        visited += copied;
        if error.is_some() {
            return Ok(visited);
        }
        if copied == 0 {
            // Success without progress would loop forever.
            return Err(io::Error::other(
                "BPF_MAP_LOOKUP_BATCH returned no entries and no end of map",
            ));
        }
        token_in = token_out;
        first = false;
    }
}

/// [`for_each_entry`] on one of aya's typed hash maps, with
/// [`DEFAULT_CHUNK`].
pub fn for_each_in<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &HashMap<T, K, V>,
    f: impl FnMut(&K, &V),
) -> io::Result<usize> {
    for_each_entry(map.map().fd().as_fd(), DEFAULT_CHUNK, f)
}
