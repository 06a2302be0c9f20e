//! Guest RAM: anonymous mappings laid out by `arch`, registered with KVM.

use arch::memory_map::ram_regions;
use arch::GuestMemory;
use hypervisor::Vm;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::Error;

/// Maps `size` bytes of guest RAM (untouched pages cost the host nothing),
/// advised for transparent hugepages: fewer TLB misses for the guest, and
/// far fewer pages to pin when a device does O_DIRECT I/O into guest memory.
pub fn create(size: u64) -> Result<GuestMemory, Error> {
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemory::from_ranges(&ranges).map_err(|e| {
        Error::Config(crate::ConfigError::new(
            "--memory",
            format!("cannot map {size} bytes of guest RAM: {e}"),
        ))
    })?;
    for (host, len) in host_ranges(&mem) {
        // SAFETY: advice on a range this process mapped; it changes no contents.
        let r =
            unsafe { libc::madvise(host as *mut libc::c_void, len as usize, libc::MADV_HUGEPAGE) };
        if r != 0 {
            tracing::debug!(
                "MADV_HUGEPAGE on guest RAM: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(mem)
}

/// Host address ranges `(start, len)` of the guest RAM mappings.
pub fn host_ranges(mem: &GuestMemory) -> Vec<(u64, u64)> {
    mem.iter()
        .filter_map(|r| {
            let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
            Some((host as u64, r.len()))
        })
        .collect()
}

/// Gives every RAM region to KVM as a memory slot.
pub fn register(vm: &Vm, mem: &GuestMemory) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| Error::Internal(format!("guest RAM region without host mapping: {e}")))?;
        // SAFETY: the mapping belongs to `mem`; `run_instance` drops the
        // devices and the VM before `mem`, so no slot outlives its memory.
        unsafe {
            vm.map_memory(
                slot as u32,
                region.start_addr().raw_value(),
                region.len(),
                host as u64,
            )
        }?;
    }
    Ok(())
}

/// Resident memory of this process in KiB: `(total, inside guest RAM)`.
pub fn resident_kib(mem: &GuestMemory) -> Option<(u64, u64)> {
    let ranges = host_ranges(mem);
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some(rss) = line.strip_prefix("Rss:") {
            let kib: u64 = rss.trim().trim_end_matches("kB").trim().parse().ok()?;
            total += kib;
            if in_guest {
                guest += kib;
            }
        } else if let Some((range, _)) = line.split_once(' ') {
            // A mapping header: "start-end perms ...". The kernel may merge
            // guest RAM with a neighbouring anonymous mapping, so overlap counts.
            if let Some((start, end)) = range.split_once('-') {
                if let (Ok(start), Ok(end)) =
                    (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
                {
                    in_guest = ranges.iter().any(|(s, l)| start < s + l && end > *s);
                }
            }
        }
    }
    Some((total, guest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn touched_guest_pages_are_counted_as_guest() {
        let mem = create(64 << 20).unwrap();
        for page in 0..1024u64 {
            mem.write_obj(1u8, GuestAddress(page * 4096)).unwrap();
        }
        let (total, guest) = resident_kib(&mem).unwrap();
        assert!(guest >= 4096, "guest {guest} KiB");
        assert!(total > guest);
    }

    #[test]
    fn large_guest_has_two_regions() {
        let mem = create(5 << 30).unwrap();
        assert_eq!(host_ranges(&mem).len(), 2);
    }
}
