//! Saving and loading a HammingIndex: exact round trips, atomic writes, and refusals of
//! truncated, corrupted, foreign and newer-version files with messages that say what is wrong.

use cmrops_core::search::{HammingIndex, FORMAT_VERSION, MAGIC};
use cmrops_core::CoreError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("cmrops-persist-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sample(explicit: bool, words: usize, n: usize) -> HammingIndex {
    let mut rng = StdRng::seed_from_u64(n as u64 + words as u64);
    let codes: Vec<u64> = (0..n * words).map(|_| rng.random()).collect();
    if explicit {
        let ids: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % 100_003 + 5).collect();
        HammingIndex::with_codes(&codes, words, Some(&ids)).unwrap()
    } else {
        HammingIndex::with_codes(&codes, words, None).unwrap()
    }
}

fn corrupt_msg(r: Result<HammingIndex, CoreError>) -> String {
    match r {
        Err(CoreError::CorruptFile(m)) => m,
        other => panic!("expected CorruptFile, got {other:?}"),
    }
}

#[test]
fn round_trips() {
    let dir = TempDir::new("rt");
    for (explicit, words, n) in [
        (false, 1, 0),
        (false, 1, 1000),
        (true, 2, 777),
        (false, 4, 3),
        (true, 3, 50),
    ] {
        let ix = sample(explicit, words, n);
        let path = dir.path(&format!("ix-{explicit}-{words}-{n}.cmr"));
        ix.save(&path).unwrap();
        let back = HammingIndex::load(&path).unwrap();
        assert_eq!(back, ix);
        assert_eq!(back.ids().unwrap(), ix.ids().unwrap());
        // Saving again over the same path replaces it atomically and leaves no temporary file.
        back.save(&path).unwrap();
        assert_eq!(HammingIndex::load(&path).unwrap(), ix);
    }
    // A shifted implicit range survives too.
    let mut ix = sample(false, 1, 10);
    ix.remove(&[0, 1, 2]);
    let path = dir.path("shifted");
    ix.save(&path).unwrap();
    let back = HammingIndex::load(&path).unwrap();
    assert_eq!(back.ids().unwrap(), (3..10).collect::<Vec<i64>>());
    assert!(!back.has_explicit_ids());
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn saved(dir: &TempDir, name: &str, explicit: bool) -> (PathBuf, Vec<u8>) {
    let path = dir.path(name);
    sample(explicit, 2, 40).save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn layout_is_as_documented() {
    let dir = TempDir::new("layout");
    let (_, bytes) = saved(&dir, "a", false);
    assert_eq!(&bytes[..8], &MAGIC);
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        FORMAT_VERSION
    );
    assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 2);
    assert_eq!(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), 40);
    assert_eq!(bytes.len(), 32 + 8 + 40 * 2 * 8 + 4);
    let crc = crc32fast::hash(&bytes[..bytes.len() - 4]);
    assert_eq!(
        u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap()),
        crc
    );
}

#[test]
fn truncated_files_are_refused() {
    let dir = TempDir::new("trunc");
    for explicit in [false, true] {
        let (path, bytes) = saved(&dir, "t", explicit);
        for cut in [
            0usize,
            3,
            8,
            12,
            20,
            31,
            32,
            40,
            bytes.len() / 2,
            bytes.len() - 4,
            bytes.len() - 1,
        ] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let msg = corrupt_msg(HammingIndex::load(&path));
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            if cut > 0 {
                assert!(msg.contains("truncated"), "cut {cut}: {msg}");
            }
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"extra");
        std::fs::write(&path, &longer).unwrap();
        let msg = corrupt_msg(HammingIndex::load(&path));
        assert!(msg.contains("size mismatch"), "{msg}");
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    let dir = TempDir::new("flip");
    for explicit in [false, true] {
        let (path, bytes) = saved(&dir, "f", explicit);
        for pos in 0..bytes.len() {
            let mut b = bytes.clone();
            b[pos] ^= 0x5a;
            std::fs::write(&path, &b).unwrap();
            let msg = corrupt_msg(HammingIndex::load(&path));
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        }
        // A flipped bit in the codes is caught by the checksum.
        let mut b = bytes.clone();
        let at = b.len() - 20;
        b[at] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let msg = corrupt_msg(HammingIndex::load(&path));
        assert!(msg.contains("checksum mismatch"), "{msg}");
    }
}

#[test]
fn foreign_and_newer_files_are_refused() {
    let dir = TempDir::new("foreign");
    let path = dir.path("notes.txt");
    std::fs::write(
        &path,
        b"hello, this is not an index at all, just some text\n",
    )
    .unwrap();
    let msg = corrupt_msg(HammingIndex::load(&path));
    assert!(msg.contains("not a cmrops HammingIndex file"), "{msg}");
    std::fs::write(&path, b"").unwrap();
    let msg = corrupt_msg(HammingIndex::load(&path));
    assert!(msg.contains("not a cmrops HammingIndex file"), "{msg}");

    let (path, mut bytes) = saved(&dir, "newer", false);
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    // Even with a valid checksum, a newer version is refused by name.
    let n = bytes.len();
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let msg = corrupt_msg(HammingIndex::load(&path));
    assert!(msg.contains("newer"), "{msg}");
}

#[test]
fn io_errors_keep_their_kind() {
    let dir = TempDir::new("io");
    match HammingIndex::load(&dir.path("missing.cmr")) {
        Err(CoreError::Io { kind, msg }) => {
            assert_eq!(kind, ErrorKind::NotFound);
            assert!(msg.contains("missing.cmr"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    let ix = sample(false, 1, 5);
    match ix.save(&dir.path("no/such/dir/x.cmr")) {
        Err(CoreError::Io { kind, .. }) => assert_eq!(kind, ErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        HammingIndex::load(Path::new(&dir.0)),
        Err(CoreError::Io { .. })
    ));
}
