//! The data-directory lock across processes. This test spawns a child
//! process, so it lives in its own test binary: a fork taken while another
//! test in the same process holds a directory lock would carry that lock
//! into the child until it execs, and make the other test see `Locked`.

use std::path::Path;
use std::process::Command;

use kvapp_c::Error;
use kvapp_c::storage::file::DataDir;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create temp dir")
}

/// The lock also excludes another process. The test runs itself as the
/// child: with `KVAPP_LOCK_CHILD` set it only tries to open the directory
/// and reports the outcome in its exit code.
#[test]
fn lock_excludes_other_processes() {
    const TEST: &str = "lock_excludes_other_processes";
    if let Some(dir) = std::env::var_os("KVAPP_LOCK_CHILD") {
        let code = match DataDir::open(Path::new(&dir)) {
            Ok(_) => 10,
            Err(Error::Locked(_)) => 11,
            Err(_) => 12,
        };
        std::process::exit(code);
    }
    let dir = tempdir();
    let child = || {
        Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--test-threads=1"])
            .env("KVAPP_LOCK_CHILD", dir.path())
            .output()
            .unwrap()
            .status
            .code()
    };
    let held = DataDir::open(dir.path()).unwrap();
    assert_eq!(child(), Some(11), "the child opened a locked directory");
    drop(held);
    assert_eq!(
        child(),
        Some(10),
        "the child could not open a free directory"
    );
}
