//! Runs untrusted Python (generated code and its tests) in a subprocess that cannot do harm:
//! - a fresh temporary directory as working directory, HOME and TMPDIR, removed afterwards;
//! - `python3 -I -B` (no environment, no user site, no bytecode writes) with an audit hook
//!   installed before the program runs that refuses writes outside the directory, sockets,
//!   new processes and ctypes (audit hooks cannot be removed from Python code);
//! - its own network namespace when the kernel allows it (no interfaces at all);
//! - CPU-time, address-space and file-size limits, its own process group, and a wall-clock
//!   timeout after which the whole group is killed.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub cpu_seconds: u64,
    pub file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            memory_bytes: 2 << 30,
            cpu_seconds: 20,
            file_bytes: 16 << 20,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed {
        exit: Option<i32>,
        stderr_tail: String,
    },
    TimedOut,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        *self == Outcome::Passed
    }
    pub fn describe(&self) -> String {
        match self {
            Outcome::Passed => "passed".into(),
            Outcome::TimedOut => "timed out".into(),
            Outcome::Failed { exit, stderr_tail } => {
                let last = stderr_tail.lines().last().unwrap_or("").trim();
                match exit {
                    Some(c) => format!("failed (exit {c}): {last}"),
                    None => format!("failed (killed by a signal): {last}"),
                }
            }
        }
    }
}

/// Installed in the interpreter before the program runs.
const GUARD: &str = r#"
import os, sys
_ROOT = os.path.realpath(os.getcwd())
def _inside(p):
    try:
        p = os.fsdecode(p)
    except Exception:
        return False
    r = os.path.realpath(os.path.join(_ROOT, p))
    return r == _ROOT or r.startswith(_ROOT + os.sep)
_WRITES = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.chmod",
           "os.chown", "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.copyfile",
           "shutil.move"}
_DENIED = ("subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
           "os.forkpty", "ctypes.", "os.kill", "os.killpg", "pty.", "os.startfile", "webbrowser.")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
        if writing and not _inside(path):
            raise PermissionError(f"sandbox: writing outside its directory is not allowed: {path}")
    elif event in _WRITES:
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a):
                raise PermissionError(f"sandbox: {event} outside its directory is not allowed: {a}")
    elif event.startswith("socket."):
        raise PermissionError("sandbox: network access is not allowed")
    elif event.startswith(_DENIED):
        raise PermissionError(f"sandbox: {event} is not allowed")
sys.addaudithook(_hook)
del _hook
__file__ = "program.py"
with open("program.py") as _f:
    _code = compile(_f.read(), "program.py", "exec")
exec(_code, {"__name__": "__main__"})
"#;

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("deepseek-sandbox-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program` with `python3`; passes when it exits 0 within the limits.
pub fn run_python(program: &str, limits: &Limits) -> std::io::Result<Outcome> {
    run_python_in(program, limits, |_| {})
}

/// Like [`run_python`]; `inspect` sees the directory after the run (tests).
pub fn run_python_in(
    program: &str,
    limits: &Limits,
    inspect: impl FnOnce(&Path),
) -> std::io::Result<Outcome> {
    let dir = TempDir::new()?;
    std::fs::write(dir.0.join("program.py"), program)?;
    std::fs::write(dir.0.join("guard.py"), GUARD)?;
    let mut cmd = Command::new("python3");
    cmd.args(["-I", "-B", "guard.py"])
        .current_dir(&dir.0)
        .env_clear()
        .env("HOME", &dir.0)
        .env("TMPDIR", &dir.0)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let l = limits.clone();
    // SAFETY: only async-signal-safe calls (setrlimit, setsid, unshare) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let set = |res, v: u64| {
                let r = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v as libc::rlim_t,
                };
                libc::setrlimit(res, &r);
            };
            set(libc::RLIMIT_AS, l.memory_bytes);
            set(libc::RLIMIT_CPU, l.cpu_seconds);
            set(libc::RLIMIT_FSIZE, l.file_bytes);
            set(libc::RLIMIT_CORE, 0);
            libc::setsid();
            // Best effort: without the privilege the audit hook still refuses sockets.
            libc::unshare(libc::CLONE_NEWNET);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(64 << 10).read_to_end(&mut buf);
        }
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() > limits.timeout {
            // SAFETY: the child leads its own process group (setsid above).
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Anything the program left running in its group goes too.
    unsafe {
        libc::killpg(pid, libc::SIGKILL);
    }
    let err = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    inspect(&dir.0);
    let tail: String = {
        let lines: Vec<&str> = err.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    Ok(match status {
        None => Outcome::TimedOut,
        Some(st) if st.success() => Outcome::Passed,
        Some(st) => Outcome::Failed {
            exit: st.code(),
            stderr_tail: tail,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Limits {
        Limits {
            timeout: Duration::from_secs(3),
            ..Default::default()
        }
    }

    #[test]
    fn a_correct_program_passes_and_a_failing_one_fails() {
        assert!(run_python("assert 1 + 1 == 2\n", &quick())
            .unwrap()
            .passed());
        let o = run_python("assert 1 + 1 == 3\n", &quick()).unwrap();
        assert!(matches!(o, Outcome::Failed { .. }), "{o:?}");
        assert!(o.describe().contains("AssertionError"), "{}", o.describe());
    }

    #[test]
    fn writes_inside_the_directory_work_and_outside_are_refused() {
        let outside = std::env::temp_dir().join(format!("sandbox-escape-{}", std::process::id()));
        let _ = std::fs::remove_file(&outside);
        let prog = format!(
            "open('inside.txt', 'w').write('ok')\nopen({:?}, 'w').write('escaped')\n",
            outside.display().to_string()
        );
        let mut saw_inside = false;
        let o = run_python_in(&prog, &quick(), |d| {
            saw_inside = d.join("inside.txt").exists()
        })
        .unwrap();
        assert!(saw_inside);
        assert!(
            !o.passed() && o.describe().contains("sandbox"),
            "{}",
            o.describe()
        );
        assert!(!outside.exists(), "the sandbox wrote outside its directory");
        for prog in [
            "import os\nos.remove('/etc/hostname')\n",
            "import os\nos.mkdir('/tmp/sandbox-mkdir-escape')\n",
            "import subprocess\nsubprocess.run(['true'])\n",
            "import os\nos.system('true')\n",
        ] {
            let o = run_python(prog, &quick()).unwrap();
            assert!(o.describe().contains("sandbox"), "{prog}: {}", o.describe());
        }
        assert!(!Path::new("/tmp/sandbox-mkdir-escape").exists());
    }

    #[test]
    fn the_network_is_closed() {
        let o = run_python(
            "import socket\ns = socket.create_connection(('127.0.0.1', 9), timeout=1)\n",
            &quick(),
        )
        .unwrap();
        assert!(!o.passed());
        assert!(o.describe().contains("sandbox"), "{}", o.describe());
    }

    #[test]
    fn runaway_programs_are_stopped() {
        let t = Instant::now();
        let o = run_python("while True:\n    pass\n", &quick()).unwrap();
        assert_eq!(o, Outcome::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(6));
        let o = run_python(
            "x = bytearray(8 << 30)\n",
            &Limits {
                memory_bytes: 512 << 20,
                ..quick()
            },
        )
        .unwrap();
        assert!(
            !o.passed() && o.describe().contains("MemoryError"),
            "{}",
            o.describe()
        );
    }
}
