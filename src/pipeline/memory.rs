//! Host memory high-water mark of this process (Linux `VmHWM`), so runs can
//! report the peak resident memory they needed, and the memory still
//! available, so they can size what they keep. Elsewhere both are unknown.

/// Restarts the high-water mark at the current resident size (Linux ≥ 4.0:
/// writing 5 to `/proc/self/clear_refs`). Ignored where unsupported.
pub fn reset_host_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident bytes since the last [`reset_host_peak`] (or since start).
pub fn host_peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Memory the system can still give this process without swapping (Linux
/// `MemAvailable`); `None` elsewhere.
pub fn available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn peak_grows_with_a_large_allocation() {
        super::reset_host_peak();
        let before = super::host_peak_bytes().expect("VmHWM on Linux");
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        let after = super::host_peak_bytes().unwrap();
        assert!(after >= before + (60 << 20), "{before} -> {after}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn available_memory_is_known_on_linux() {
        let a = super::available_bytes().expect("MemAvailable on Linux");
        assert!(a > 16 << 20, "{a} bytes available");
    }
}
