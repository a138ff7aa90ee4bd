//! R5 of docs/reliability.md: the parsers of everything a user hands atrest — cluster.yml, an
//! EncryptionConfiguration, cluster.rkestate, atrest's records file and known_hosts — fed mutated copies of the
//! committed corpus (tests/valid_input, tests/bad_input, tests/fixtures, tests/fuzz_corpus, examples/,
//! cluster.yml.example). For every input: no panic, no hang (each parse within a generous deadline) and bounded
//! memory (the peak of this process's heap during one parse, measured by a counting allocator), and a refusal
//! names the file it refuses.
//!
//! proptest drives the mutations: byte flips, deletions, duplications, truncation, and insertions from a
//! dictionary of YAML/JSON/known_hosts syntax (anchors, aliases, merge keys, tags, deep nesting, huge numbers,
//! markers). `PROPTEST_CASES` sets the cases per parser (CI: the default below; scripts/chaos: many more); a
//! failing case is printed shrunk, to be added to the corpus once fixed.

use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The system allocator, counting the bytes live now and the most live since the last [`reset_peak`].
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Most a parse may take before it counts as a hang (the slowest corpus file parses in milliseconds), plus
/// [`DEADLINE_PER_MB`] for each MB of input: the hostile shapes are up to 200 MB, which a linear parse takes
/// seconds over on a busy 2-core machine (6.6 s once in CI beside a testbed), while a hang never ends.
const DEADLINE: Duration = Duration::from_secs(5);
const DEADLINE_PER_MB: Duration = Duration::from_millis(100);
/// Most heap one parse may add (the largest corpus file is a few KB; the alias bound allows a few MB).
const HEAP_BOUND: usize = 64 << 20;

/// What a parser makes of one input: accepted, or refused with this message.
type Parsed = Result<(), String>;

/// Runs `parse` on `input`, checking the deadline and the heap bound; returns its verdict.
fn measured(what: &str, input: &[u8], parse: impl FnOnce(&[u8]) -> Parsed) -> Parsed {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let verdict = parse(input);
    let took = started.elapsed();
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let megabytes = u32::try_from(input.len() >> 20).unwrap_or(u32::MAX);
    assert!(
        took < DEADLINE + DEADLINE_PER_MB * megabytes,
        "{what}: {took:?} for {} bytes",
        input.len()
    );
    assert!(
        grew < HEAP_BOUND,
        "{what}: the heap grew by {grew} bytes for {} bytes of input",
        input.len()
    );
    verdict
}

/// Syntax worth inserting: the constructs parsers get wrong.
const TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "<<: *a\n",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "!!binary ",
    "!!str ",
    "!!map ",
    "!custom ",
    "? ",
    "|\n",
    ">-\n",
    "\t",
    "\n",
    "  ",
    "#",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "\u{feff}",
    "~",
    "null",
    "true",
    "1e999",
    "-0",
    "0x1F",
    "99999999999999999999999",
    "secret: ",
    "aescbc:",
    "kms:",
    "identity: {}",
    "\\u0000",
    "\0",
    "\\ud800",
    "\u{0085}",
    "\r",
    "@cert-authority ",
    "@revoked ",
    "|1|",
    "!",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{a: {a: {a: {a: {a: {a: {a: {a: {a: {a: ",
];

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Insert { at: usize, token: usize },
    Delete { at: usize, len: usize },
    Duplicate { at: usize, len: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 1usize..256).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len();
        let pos = |at: usize| if n == 0 { 0 } else { at % (n + 1) };
        match *m {
            Mutation::Flip { at, bit } if n > 0 => bytes[at % n] ^= 1 << bit,
            Mutation::Flip { .. } => {}
            Mutation::Insert { at, token } => {
                let at = pos(at);
                bytes.splice(at..at, TOKENS[token].bytes());
            }
            Mutation::Delete { at, len } => {
                let at = pos(at);
                bytes.drain(at..(at + len).min(n));
            }
            Mutation::Duplicate { at, len } => {
                let at = pos(at);
                let copy = bytes[at..(at + len).min(n)].to_vec();
                bytes.splice(at..at, copy);
            }
            Mutation::Truncate { at } => bytes.truncate(pos(at)),
        }
    }
    bytes
}

/// The corpus files under `dirs` (and `files`), read once.
fn corpus(dirs: &[&str], files: &[&str]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut paths: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
    for dir in dirs {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_file() && p.extension().is_none_or(|x| x != "expected"))
            .collect();
        found.sort();
        paths.extend(found);
    }
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Inputs: a corpus file and the mutations to apply to it.
fn cases(n: usize) -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (0..n, prop::collection::vec(mutation(), 1..8))
}

fn config() -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES when set (scripts/chaos runs many more), else enough for a few seconds in CI.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(600),
        // A failure is printed shrunk; it becomes a corpus file or a hostile shape below, not a hidden file.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A refusal must name the file it refuses (the origin given to the parser).
fn names_the_file(origin: &str, verdict: &Parsed) {
    if let Err(message) = verdict {
        assert!(
            message.contains(origin),
            "the refusal does not name {origin}: {message}"
        );
    }
}

fn cluster_yml(origin: &str, bytes: &[u8]) -> Parsed {
    let text = String::from_utf8_lossy(bytes);
    let verdict = atrest::config::cluster::parse(&text, origin)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            atrest::config::desired(&c)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    names_the_file(origin, &verdict);
    verdict
}

fn encryption_config(origin: &str, bytes: &[u8]) -> Parsed {
    let text = String::from_utf8_lossy(bytes);
    let verdict = atrest::config::encryption::check(&text, origin)
        .map(|_| ())
        .map_err(|e| e.to_string());
    names_the_file(origin, &verdict);
    verdict
}

fn state_files(origin: &Path, bytes: &[u8]) -> Parsed {
    let rke = atrest::state::RkeState::parse(bytes, origin).map(|_| ());
    let records = atrest::state::records::parse(bytes, origin).map(|_| ());
    for verdict in [&rke, &records] {
        if let Err(e) = verdict {
            let message = e.to_string();
            assert!(
                message.contains(&origin.display().to_string()),
                "the refusal does not name {}: {message}",
                origin.display()
            );
        }
    }
    rke.map_err(|e| e.to_string())
}

/// The host key every known_hosts lookup asks about (the corpus records it for some hosts).
fn host_key() -> russh::keys::PublicKey {
    russh::keys::PublicKey::from_openssh(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEGeVVF224rl7oQf4RTGulk4NbFqw3uWSZ1qSg9E9lcL",
    )
    .expect("the test key")
}

fn known_hosts(dir: &Path, bytes: &[u8]) -> Parsed {
    let path = dir.join("known_hosts");
    std::fs::write(&path, bytes).expect("write known_hosts");
    let file = atrest::exec::known_hosts::KnownHosts::new(Some(path), false);
    let key = host_key();
    for (host, port) in [("10.0.0.1", 22), ("10.0.0.2", 2222), ("node1.example", 22)] {
        // Any answer is fine; what matters is that there is one (no panic, no hang).
        let _ = file.status(host, port, &key);
        let _ = file.recorded_algorithms(host, port);
    }
    Ok(())
}

/// Counts of accepted and refused inputs, printed at the end of each target.
#[derive(Default)]
struct Tally {
    accepted: usize,
    refused: usize,
}

impl Tally {
    fn add(&mut self, verdict: &Parsed) {
        match verdict {
            Ok(()) => self.accepted += 1,
            Err(_) => self.refused += 1,
        }
    }
}

/// Fuzzes one parser over its corpus.
fn fuzz(target: &str, corpus: &[(PathBuf, Vec<u8>)], parse: impl Fn(&Path, &[u8]) -> Parsed) {
    assert!(!corpus.is_empty(), "{target}: empty corpus");
    // The corpus itself first: it must parse within the bounds too.
    let mut tally = Tally::default();
    for (path, bytes) in corpus {
        tally.add(&measured(target, bytes, |b| parse(path, b)));
    }
    let tally = std::cell::RefCell::new(tally);
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let count = runner.config().cases;
    runner
        .run(&cases(corpus.len()), |(file, mutations)| {
            let (path, bytes) = &corpus[file];
            let input = apply(bytes.clone(), &mutations);
            let verdict = measured(target, &input, |b| parse(path, b));
            tally.borrow_mut().add(&verdict);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"));
    let tally = tally.into_inner();
    eprintln!(
        "fuzz {target}: {} corpus files + {count} mutated cases: {} accepted, {} refused, no panic, hang or heap \
         blow-up",
        corpus.len(),
        tally.accepted,
        tally.refused
    );
}

/// One test (the only one in this binary), so that the heap measured is this parse's alone: no other test thread
/// allocates meanwhile.
#[test]
fn every_parser_survives_mutated_inputs_within_time_and_memory_bounds() {
    fuzz(
        "cluster.yml",
        &corpus(
            &["tests/bad_input/cluster", "examples"],
            &["cluster.yml.example"],
        ),
        |path, bytes| cluster_yml(&path.display().to_string(), bytes),
    );
    fuzz(
        "EncryptionConfiguration",
        &corpus(
            &["tests/valid_input/encryption", "tests/bad_input/encryption"],
            &[],
        ),
        |path, bytes| encryption_config(&path.display().to_string(), bytes),
    );
    fuzz(
        "cluster.rkestate and records",
        &corpus(&["tests/bad_input/state", "tests/fixtures/state"], &[]),
        state_files,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    fuzz(
        "known_hosts",
        &corpus(&["tests/fuzz_corpus/known_hosts"], &[]),
        |_, bytes| known_hosts(dir.path(), bytes),
    );
    hostile_shapes_are_refused();
}

/// Inputs built to exhaust a parser, refused within the bounds: deep nesting and alias expansion, in each format.
fn hostile_shapes_are_refused() {
    let deep_yaml = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_map = "a:\n".to_string()
        + &(1..20_000)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect::<String>();
    let deep_json = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let laughs = (1..10).fold(
        "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n".to_string(),
        |s, i| {
            format!(
                "{s}a{i}: &a{i} [{}]\n",
                vec![format!("*a{}", i - 1); 10].join(", ")
            )
        },
    );
    for (what, text) in [
        ("deep flow nesting", &deep_yaml),
        ("deep block nesting", &deep_map),
        ("alias expansion", &laughs),
    ] {
        let verdict = measured(what, text.as_bytes(), |b| cluster_yml("hostile.yml", b));
        assert!(verdict.is_err(), "{what}: accepted");
        let verdict = measured(what, text.as_bytes(), |b| {
            encryption_config("hostile.yaml", b)
        });
        assert!(
            verdict.is_err(),
            "{what}: accepted as an EncryptionConfiguration"
        );
    }
    let verdict = measured("deep JSON", deep_json.as_bytes(), |b| {
        state_files(Path::new("hostile.rkestate"), b)
    });
    assert!(verdict.is_err(), "deep JSON accepted as a state file");
}
