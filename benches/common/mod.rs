//! Helpers shared by the benchmarks: process CPU time, peak memory, and
//! running each case in a child process so its peak RSS is its own.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A `/proc/self/status` value in kB (e.g. `VmHWM:`, the peak RSS).
pub fn proc_status(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peak RSS of this process in MB.
pub fn peak_rss_mb() -> f64 {
    proc_status("VmHWM:") as f64 / 1024.0
}

/// User + system CPU seconds of this process.
pub fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// `benches/data/`, where generated inputs live (ignored by git).
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/data")
}

/// Scales from `AUDIENCE_BENCH_<what>` (comma-separated), else `default`.
pub fn scales(var: &str, default: &str) -> Vec<u64> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// The case filter: `cargo bench --bench X -- <substring>`.
pub fn filter() -> Option<String> {
    std::env::args().skip(1).find(|a| !a.starts_with('-'))
}

/// Run `variant` on `dir` in a child process of this benchmark and print its output line.
pub fn run_child(case: &str, dir: &Path, variant: &str) {
    let exe = std::env::current_exe().expect("exe");
    let out = std::process::Command::new(&exe)
        .env("AUDIENCE_BENCH_CHILD", dir)
        .env("AUDIENCE_BENCH_VARIANT", variant)
        .output()
        .expect("run case");
    if !out.status.success() {
        eprintln!("{case} failed: {}", String::from_utf8_lossy(&out.stderr));
        std::process::exit(1);
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

/// When this process is a child: (input dir, variant).
pub fn child() -> Option<(PathBuf, String)> {
    // As the binary does, before any thread starts.
    audience::engine::limit_malloc_arenas();
    match (
        std::env::var("AUDIENCE_BENCH_CHILD"),
        std::env::var("AUDIENCE_BENCH_VARIANT"),
    ) {
        (Ok(dir), Ok(variant)) => Some((PathBuf::from(dir), variant)),
        _ => None,
    }
}

/// Bytes the allocator has handed out and not had back (glibc only; 0
/// elsewhere): RSS above it is memory freed but kept by the allocator.
fn heap_in_use() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallinfo2` only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        m.uordblks + m.hblkhd
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

/// With `AUDIENCE_BENCH_PHASES` set: the library's debug logs on stderr, and a
/// thread that prints the RSS every 100 ms, to see which phase holds the peak.
pub fn phases() {
    if std::env::var_os("AUDIENCE_BENCH_PHASES").is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("audience=debug"))
        .with_writer(std::io::stderr)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .try_init();
    let t0 = std::time::Instant::now();
    std::thread::spawn(move || {
        loop {
            eprintln!(
                "rss {:>7.2}s {:>6} MB (heap in use {:>6} MB)",
                t0.elapsed().as_secs_f64(),
                proc_status("VmRSS:") / 1024,
                heap_in_use() >> 20
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
}
