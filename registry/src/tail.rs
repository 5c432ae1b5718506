//! Reading the end of an append-only JSON-lines log (audit, drift events, trainer runs) without
//! reading the rest: blocks are read backwards from the end until enough lines are found, so a
//! call costs the same on a log's first day and its three-hundredth.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes read per step backwards.
const BLOCK: u64 = 64 << 10;
/// Most bytes one call reads, whatever `n` says (a guard against a log of giant lines).
const MAX_BYTES: u64 = 32 << 20;

/// The last `n` complete lines of `path`, oldest first; empty when it does not exist. A torn
/// last line (a writer mid-append) is left out.
pub fn tail_lines(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut start = len;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0usize;
    // Stop once more than n newlines are in (the first may end a partial line).
    while start > 0 && len - start < MAX_BYTES && newlines <= n {
        let step = BLOCK.min(start);
        start -= step;
        file.seek(SeekFrom::Start(start))?;
        let mut block = vec![0u8; step as usize];
        file.read_exact(&mut block)?;
        newlines += block.iter().filter(|b| **b == b'\n').count();
        blocks.push(block);
    }
    let buf: Vec<u8> = blocks.into_iter().rev().flatten().collect();
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.split('\n').collect();
    // The piece after the last newline is torn (or empty); the first is partial unless the
    // read reached the start of the file.
    lines.pop();
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().filter(|l| !l.is_empty()).map(|l| (*l).to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_of_a_long_log_without_the_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut text: String = (0..50_000).map(|i| format!("{{\"seq\":{i}}}\n")).collect();
        text.push_str("{\"seq\":tor");
        std::fs::write(&path, &text).unwrap();
        let last = tail_lines(&path, 3).unwrap();
        assert_eq!(last, vec!["{\"seq\":49997}", "{\"seq\":49998}", "{\"seq\":49999}"]);
        assert_eq!(tail_lines(&path, 100_000).unwrap().len(), 50_000, "the whole file when n is larger");
        assert!(tail_lines(&dir.path().join("missing"), 5).unwrap().is_empty());
        std::fs::write(&path, "a\nb\n").unwrap();
        assert_eq!(tail_lines(&path, 1).unwrap(), vec!["b"]);
        assert_eq!(tail_lines(&path, 5).unwrap(), vec!["a", "b"]);
    }
}
