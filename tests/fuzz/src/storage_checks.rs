//! The checks the kvd-storage fuzz targets run on each input. The same functions replay
//! every stored input in `kvd/storage/tests/fuzz_regressions.rs`, so a regression test runs
//! exactly what the fuzzer ran.

use std::collections::BTreeMap;
use std::path::Path;

use kvd_storage::fuzzing::{
    assemble_table, block_get, bloom_build, bloom_may_contain, build_block, decode_manifest,
    decode_write_batch, encode_meta, frame_batch, frame_payload, lz4_compress, read_block,
    read_table, replay_commit_log, seal_manifest, Entry, StoredBlock,
};
use kvd_storage::WriteBatch;

use crate::input::{entries, Input};

fn check_prefix(data: &[u8]) {
    let r = replay_commit_log(data);
    if let Some((off, _)) = &r.cut {
        let off = usize::try_from(*off).expect("offset fits");
        assert!(off < data.len(), "cut at {off} past the end {}", data.len());
        let again = replay_commit_log(&data[..off]);
        assert!(again.cut.is_none(), "the prefix before a cut has a cut");
        assert_eq!(again.batches, r.batches);
    }
}

/// The commit-log reader (`replay_segment`'s loop over a segment's bytes), three ways: raw
/// bytes; arbitrary payloads wrapped in frames with valid lengths and checksums (so the batch
/// decoder behind the checksum is reached); and real batches followed by garbage.
///
/// Checked: no panic; a cut lies inside the data; replaying only the bytes before the cut
/// gives the same batches and no cut; valid frames of real batches are replayed exactly.
pub fn commit_log_replay(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => check_prefix(input.rest()),
        1 => {
            let mut log = Vec::new();
            let mut expect = Vec::new();
            let mut all_decode = true;
            while !input.is_empty() {
                let payload = input.long_bytes(2048);
                if all_decode {
                    match decode_write_batch(payload) {
                        Some(b) => expect.push(b),
                        None => all_decode = false,
                    }
                }
                log.extend_from_slice(&frame_payload(payload));
            }
            // Replay applies exactly the frames before the first one that does not decode.
            assert_eq!(replay_commit_log(&log).batches, expect);
            check_prefix(&log);
        }
        _ => {
            let n = usize::from(input.byte() % 16);
            let mut log = Vec::new();
            let mut expect = Vec::new();
            for _ in 0..n {
                let mut b = WriteBatch::new();
                for _ in 0..=input.byte() % 4 {
                    let key = input.bytes(32).to_vec();
                    if input.byte().is_multiple_of(4) {
                        b.delete(key);
                    } else {
                        b.put(key, input.bytes(200).to_vec());
                    }
                }
                log.extend_from_slice(&frame_batch(&b));
                expect.push(b);
            }
            let whole = log.len();
            log.extend_from_slice(input.rest());
            let r = replay_commit_log(&log);
            assert!(r.batches.len() >= expect.len());
            assert_eq!(r.batches[..expect.len()], expect[..]);
            if let Some((off, _)) = r.cut {
                assert!(
                    off as usize >= whole,
                    "cut at {off} inside the valid frames"
                );
            }
            check_prefix(&log);
        }
    }
}

/// Data and index blocks: the block parser, its iterator and its seek, on raw contents and on
/// blocks built from real sorted entries.
///
/// Checked: no panic or endless loop on any contents; a built block gives back exactly its
/// entries in order, a point read finds each key with its value, and a seek lands on the
/// first key at or after the target.
pub fn sstable_block(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 2 {
        0 => {
            let target = input.bytes(16).to_vec();
            let contents = input.rest().to_vec();
            if let Ok((found, _)) = read_block(contents.clone(), &target) {
                for (k, _) in found.iter().take(64) {
                    let _ = block_get(contents.clone(), k);
                }
            }
        }
        _ => {
            let restart = usize::from(input.byte() % 17) + 1;
            let target = input.bytes(24).to_vec();
            let want = entries(&mut input, 64);
            if want.is_empty() {
                return;
            }
            let contents = build_block(&want, restart);
            let (got, at) = read_block(contents.clone(), &target).expect("a built block reads");
            assert_eq!(got, want);
            let first = want.iter().find(|(k, _)| k.as_slice() >= target.as_slice());
            assert_eq!(at.as_ref(), first);
            for e in &want {
                let found = block_get(contents.clone(), &e.0).expect("a built block reads");
                assert_eq!(found.as_ref(), Some(e));
            }
        }
    }
}

/// A real table: entries split into blocks, some compressed, with filter, index and meta.
fn real_table(input: &mut Input<'_>, want: &[Entry]) -> Vec<u8> {
    let per_block = usize::from(input.byte() % 8) + 1;
    let restart = usize::from(input.byte() % 4) + 1;
    let compress = input.byte() % 2 == 1;
    let mut blocks = Vec::new();
    let mut keys = Vec::new();
    for chunk in want.chunks(per_block) {
        let contents = build_block(chunk, restart);
        blocks.push(if compress {
            StoredBlock {
                bytes: lz4_compress(&contents),
                kind: 1,
            }
        } else {
            StoredBlock {
                bytes: contents,
                kind: 0,
            }
        });
        keys.push(chunk[chunk.len() - 1].0.clone());
    }
    let key_refs: Vec<&[u8]> = want.iter().map(|(k, _)| k.as_slice()).collect();
    let filter = bloom_build(&key_refs, 10);
    let tombstones = want.iter().filter(|(_, v)| v.is_none()).count() as u64;
    let meta = encode_meta(
        &want[0].0,
        &want[want.len() - 1].0,
        want.len() as u64,
        tombstones,
    );
    assemble_table(&blocks, &filter, None, &keys, &meta)
}

/// Whole tables as the engine opens and reads them (footer, filter, index and meta checks,
/// then scans and point reads), written as a file in `dir`, three ways: raw file bytes;
/// tables assembled from fuzzed blocks with correct trailers and footer (so the parsers behind
/// the checksums are reached, lz4 included); real tables built from sorted entries, then with
/// one bit flipped.
///
/// Checked: no panic; a real table reads back exactly what it was built from; with a flipped
/// bit it is either refused with an error or every value it returns is the one written.
pub fn sstable_table(dir: &Path, data: &[u8]) {
    let mut input = Input::new(data);
    let probes: Vec<Vec<u8>> = (0..input.byte() % 4)
        .map(|_| input.bytes(16).to_vec())
        .collect();
    let probe_refs: Vec<&[u8]> = probes.iter().map(Vec::as_slice).collect();
    match input.byte() % 3 {
        0 => {
            let _ = read_table(dir, input.rest(), &probe_refs);
        }
        1 => {
            let mut blocks = Vec::new();
            let mut keys = Vec::new();
            for _ in 0..input.byte() % 4 {
                let kind = input.byte() % 3;
                blocks.push(StoredBlock {
                    bytes: input.long_bytes(4096).to_vec(),
                    kind,
                });
                keys.push(input.bytes(16).to_vec());
            }
            let filter = input.bytes(64).to_vec();
            let index = if input.byte().is_multiple_of(2) {
                None
            } else {
                Some(input.long_bytes(1024).to_vec())
            };
            let meta = input.bytes(64).to_vec();
            let file = assemble_table(&blocks, &filter, index, &keys, &meta);
            let _ = read_table(dir, &file, &probe_refs);
        }
        _ => {
            let flip = input.u16();
            let want = entries(&mut input, 48);
            if want.is_empty() {
                return;
            }
            let mut file = real_table(&mut input, &want);
            let all = read_table(dir, &file, &probe_refs).expect("a real table reads");
            assert_eq!(all.entries, want);
            let written: BTreeMap<Vec<u8>, Option<Vec<u8>>> = want.into_iter().collect();
            for (k, got) in &all.gets {
                let want = written.get(k).map(|v| v.as_deref());
                assert_eq!(got.as_entry_value(), want, "point read of {k:?}");
            }
            // One flipped bit: an error, or only values that were written.
            let bit = usize::from(flip) % (file.len() * 8);
            file[bit / 8] ^= 1 << (bit % 8);
            if let Ok(r) = read_table(dir, &file, &probe_refs) {
                for (k, v) in &r.entries {
                    assert_eq!(
                        written.get(k),
                        Some(v),
                        "flip of bit {bit} served a wrong entry"
                    );
                }
                for (k, got) in &r.gets {
                    let want = written.get(k).map(|v| v.as_deref());
                    assert_eq!(
                        got.as_entry_value(),
                        want,
                        "flip of bit {bit}: read of {k:?}"
                    );
                }
            }
        }
    }
}

/// Bloom filters: `may_contain` on any stored filter bytes, and filters built from real keys.
///
/// Checked: no panic on any filter; a built filter has no false negatives.
pub fn bloom_filter(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 2 {
        0 => {
            let filter = input.long_bytes(4096).to_vec();
            while !input.is_empty() {
                let _ = bloom_may_contain(&filter, input.bytes(32));
            }
        }
        _ => {
            let bits = usize::from(input.byte() % 30) + 1;
            let mut keys = Vec::new();
            while !input.is_empty() && keys.len() < 512 {
                keys.push(input.bytes(32));
            }
            let filter = bloom_build(&keys, bits);
            for k in &keys {
                assert!(
                    bloom_may_contain(&filter, k),
                    "false negative at {bits} bits/key"
                );
            }
        }
    }
}

/// The manifest decoder, on raw bytes and on payloads sealed with a valid magic, version and
/// checksum (so the payload decoder behind the checksum is reached).
///
/// Checked: no panic; a sealed payload that decodes lists at most as many tables as its bytes
/// can hold.
pub fn manifest_decode(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 2 {
        0 => {
            let _ = decode_manifest(input.rest());
        }
        _ => {
            let payload = input.rest();
            if let Ok((_, _, tables)) = decode_manifest(&seal_manifest(payload)) {
                // Each table takes at least six bytes (four varints, two lengths).
                assert!(tables.len() * 6 <= payload.len(), "{} tables", tables.len());
            }
        }
    }
}
