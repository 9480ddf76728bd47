//! Container CPU and memory: from cgroup v2 when its files are visible, else from the host
//! (`sysinfo`).
//!
//! - CPU in cores: the delta of `cpu.stat` `usage_usec` over the wall time between two reads.
//! - CPU limit: `cpu.max` (`<quota> <period>`; `max` means none).
//! - Memory working set: `memory.current` minus `inactive_file` of `memory.stat`, as the kubelet
//!   computes it. Memory limit: `memory.max` (`max` means none).
//!
//! The parsing functions are pure; [`ContainerStats`] holds the previous CPU reading.

use demeter_common::wire::ContainerSample;
use std::path::PathBuf;
use std::time::Instant;

/// `usage_usec` of a cgroup v2 `cpu.stat`.
pub fn parse_cpu_usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse().ok()))
}

/// Cores allowed by a cgroup v2 `cpu.max` (`"200000 100000"` → 2.0); `None` for `max`.
pub fn parse_cpu_max(cpu_max: &str) -> Option<f64> {
    let mut it = cpu_max.split_whitespace();
    let quota = it.next()?.parse::<f64>().ok()?;
    let period = it.next().map_or(Some(100_000.0), |p| p.parse::<f64>().ok())?;
    (period > 0.0 && quota > 0.0).then_some(quota / period)
}

/// A byte count of `memory.current` / `memory.max`; `None` for `max`.
pub fn parse_bytes(s: &str) -> Option<f64> {
    s.trim().parse::<u64>().ok().map(|v| v as f64)
}

/// `inactive_file` of a cgroup v2 `memory.stat`.
pub fn parse_inactive_file(memory_stat: &str) -> Option<u64> {
    memory_stat.lines().find_map(|l| l.strip_prefix("inactive_file ").and_then(|v| v.trim().parse().ok()))
}

/// Reads container figures once per scrape.
pub struct ContainerStats {
    root: PathBuf,
    prev_cpu: Option<(Instant, u64)>,
    host: Option<sysinfo::System>,
}

impl std::fmt::Debug for ContainerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerStats")
            .field("root", &self.root)
            .field("host", &self.host.is_some())
            .finish()
    }
}

impl ContainerStats {
    /// Reads from the cgroup v2 hierarchy at `root` (normally `/sys/fs/cgroup`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ContainerStats { root: root.into(), prev_cpu: None, host: None }
    }

    /// Whether `root` has the cgroup v2 files this reads.
    pub fn has_cgroup_v2(&self) -> bool {
        self.root.join("cpu.stat").is_file() && self.root.join("memory.current").is_file()
    }

    /// One reading. CPU usage needs two readings, so the first has none.
    pub fn sample(&mut self) -> ContainerSample {
        if self.has_cgroup_v2() { self.cgroup() } else { self.host() }
    }

    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(file)).ok()
    }

    fn cgroup(&mut self) -> ContainerSample {
        let now = Instant::now();
        let usage = self.read("cpu.stat").as_deref().and_then(parse_cpu_usage_usec);
        let cpu_usage_cores = match (usage, self.prev_cpu) {
            (Some(u), Some((t0, u0))) if u >= u0 => {
                let dt = now.duration_since(t0).as_secs_f64();
                (dt > 0.0).then_some((u - u0) as f64 / 1e6 / dt)
            }
            _ => None,
        };
        self.prev_cpu = usage.map(|u| (now, u));
        let current = self.read("memory.current").as_deref().and_then(parse_bytes);
        let inactive = self.read("memory.stat").as_deref().and_then(parse_inactive_file).unwrap_or(0) as f64;
        ContainerSample {
            cpu_usage_cores,
            cpu_limit_cores: self.read("cpu.max").as_deref().and_then(parse_cpu_max),
            memory_working_set_bytes: current.map(|c| (c - inactive).max(0.0)),
            memory_limit_bytes: self.read("memory.max").as_deref().and_then(parse_bytes),
            origin: "cgroup".into(),
        }
    }

    fn host(&mut self) -> ContainerSample {
        let first = self.host.is_none();
        let sys = self.host.get_or_insert_with(|| {
            sysinfo::System::new_with_specifics(
                sysinfo::RefreshKind::nothing()
                    .with_cpu(sysinfo::CpuRefreshKind::nothing().with_usage())
                    .with_memory(sysinfo::MemoryRefreshKind::nothing().with_ram()),
            )
            .unwrap_or_else(|_| sysinfo::System::new().expect("sysinfo"))
        });
        sys.refresh_cpu_usage();
        sys.refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
        let cores = sys.cpus().len() as f64;
        let usage = (!first).then(|| sys.global_cpu_usage() as f64 / 100.0 * cores);
        ContainerSample {
            cpu_usage_cores: usage.filter(|u| u.is_finite() && *u >= 0.0),
            cpu_limit_cores: (cores > 0.0).then_some(cores),
            memory_working_set_bytes: Some(sys.used_memory() as f64),
            memory_limit_bytes: Some(sys.total_memory() as f64).filter(|m| *m > 0.0),
            origin: "host".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_files_parse() {
        let stat = "usage_usec 8123456\nuser_usec 7000000\nsystem_usec 1123456\nnr_periods 0\n";
        assert_eq!(parse_cpu_usage_usec(stat), Some(8_123_456));
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2.0));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_bytes("1073741824\n"), Some(1073741824.0));
        assert_eq!(parse_bytes("max\n"), None);
        assert_eq!(parse_inactive_file("anon 1\nfile 20\nactive_file 5\ninactive_file 15\n"), Some(15));
    }

    #[test]
    fn reads_a_cgroup_v2_directory() {
        let dir = tempfile::tempdir().unwrap();
        let w = |f: &str, s: &str| std::fs::write(dir.path().join(f), s).unwrap();
        w("cpu.stat", "usage_usec 1000000\n");
        w("cpu.max", "150000 100000\n");
        w("memory.current", "500000000\n");
        w("memory.stat", "inactive_file 100000000\n");
        w("memory.max", "1000000000\n");
        let mut c = ContainerStats::new(dir.path());
        assert!(c.has_cgroup_v2());
        let first = c.sample();
        assert_eq!(first.cpu_usage_cores, None);
        assert_eq!(first.cpu_limit_cores, Some(1.5));
        assert_eq!(first.memory_working_set_bytes, Some(4e8));
        assert_eq!(first.memory_limit_bytes, Some(1e9));
        assert_eq!(first.origin, "cgroup");
        std::thread::sleep(std::time::Duration::from_millis(50));
        w("cpu.stat", "usage_usec 1100000\n");
        let second = c.sample();
        let cores = second.cpu_usage_cores.unwrap();
        // 0.1 s of CPU over a bit more than 50 ms of wall time.
        assert!(cores > 0.1 && cores <= 2.0, "{cores}");
    }

    #[test]
    fn falls_back_to_the_host_without_cgroup_v2() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ContainerStats::new(dir.path().join("absent"));
        let first = c.sample();
        assert_eq!(first.origin, "host");
        assert!(first.memory_working_set_bytes.unwrap() > 0.0);
        assert!(first.cpu_limit_cores.unwrap() >= 1.0);
        std::thread::sleep(std::time::Duration::from_millis(250));
        let second = c.sample();
        let cores = second.cpu_usage_cores.expect("a usage from the second reading");
        assert!((0.0..=second.cpu_limit_cores.unwrap() + 0.01).contains(&cores), "{cores}");
    }
}
