//! Guest RAM: private anonymous memory (the default), a memfd
//! (`shared=on`), a file (`file=`), or hugetlbfs pages (`hugepages=on`),
//! laid out by `arch` around the PCI hole, advised for transparent
//! hugepages or KSM as configured, and registered with KVM.

use std::fs::File;
use std::time::Instant;

use arch::memory_map::ram_regions;
use arch::GuestMemory;
use hypervisor::Vm;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

use crate::config::MemoryConfig;
use crate::{ConfigError, Error};

fn config_error(message: String) -> Error {
    Error::Config(ConfigError::new("--memory", message))
}

/// Maps guest RAM as `config` asks. Untouched pages of private or shared
/// memory cost the host nothing; hugetlbfs pages are reserved up front.
pub fn create(config: &MemoryConfig) -> Result<GuestMemory, Error> {
    let size = config.size;
    if config.hugepages {
        check_free_hugepages(config)?;
    }
    let file = backing_file(config)?;
    let started = Instant::now();
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_regions(size) {
        let mut flags = if file.is_some() {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
        };
        if config.hugepages && file.is_none() {
            flags |= libc::MAP_HUGETLB | huge_flag(config.hugepage_size);
        } else if !config.hugepages {
            // Reserving swap for RAM the guest may never touch helps no one.
            flags |= libc::MAP_NORESERVE;
        }
        if config.prefault {
            flags |= libc::MAP_POPULATE;
        }
        let mut builder = MmapRegionBuilder::new(len as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_hugetlbfs(config.hugepages);
        if let Some(f) = &file {
            let clone = f
                .try_clone()
                .map_err(Error::io("duplicating the guest RAM file"))?;
            builder = builder.with_file_offset(FileOffset::new(clone, offset));
        }
        let mapping = builder.build().map_err(|e| {
            config_error(format!(
                "cannot map {len} bytes of guest RAM at {start:#x}: {e}"
            ))
        })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| Error::Internal("guest RAM region wraps around".into()))?;
        regions.push(region);
        offset += len;
    }
    let mem = GuestMemory::from_regions(regions)
        .map_err(|e| Error::Internal(format!("guest RAM layout: {e}")))?;
    advise(&mem, config);
    if config.prefault {
        tracing::info!(
            "prefaulted {} MiB of guest RAM in {} ms",
            size >> 20,
            started.elapsed().as_millis()
        );
    }
    Ok(mem)
}

/// `MAP_HUGE_*` for the page size.
fn huge_flag(page: u64) -> i32 {
    if page == 1 << 30 {
        libc::MAP_HUGE_1GB
    } else {
        libc::MAP_HUGE_2MB
    }
}

/// The file guest RAM lives in: `file=` (created if missing, grown to the
/// guest's size), a memfd for `shared=on`, or none.
fn backing_file(config: &MemoryConfig) -> Result<Option<File>, Error> {
    let size = config.size;
    if let Some(path) = &config.file {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| config_error(format!("file={}: {e}", path.display())))?;
        let len = f
            .metadata()
            .map_err(|e| config_error(format!("file={}: {e}", path.display())))?
            .len();
        if len < size {
            f.set_len(size).map_err(|e| {
                config_error(format!(
                    "file={}: growing to {size} bytes: {e}",
                    path.display()
                ))
            })?;
        }
        return Ok(Some(f));
    }
    if !config.shared {
        return Ok(None);
    }
    let mut flags = libc::MFD_CLOEXEC;
    if config.hugepages {
        flags |= libc::MFD_HUGETLB
            | if config.hugepage_size == 1 << 30 {
                libc::MFD_HUGE_1GB
            } else {
                libc::MFD_HUGE_2MB
            };
    }
    // SAFETY: memfd_create with a NUL-terminated name and valid flags; the
    // returned descriptor is owned by the File below.
    let fd = unsafe { libc::memfd_create(c"ferrovisor-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(config_error(format!(
            "shared=on: memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(size)
        .map_err(|e| config_error(format!("shared=on: sizing the memfd to {size} bytes: {e}")))?;
    Ok(Some(f))
}

/// Refuses to start when the host has too few free hugepages of the size
/// asked for (before the guest runs, with the numbers).
fn check_free_hugepages(config: &MemoryConfig) -> Result<(), Error> {
    let kib = config.hugepage_size >> 10;
    let dir = format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB");
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("{dir}/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let need = config.size / config.hugepage_size;
    let Some(free) = read("free_hugepages") else {
        return Err(config_error(format!(
            "hugepages=on: this host has no {kib} kB hugepages ({dir} is missing)"
        )));
    };
    let reserved = read("resv_hugepages").unwrap_or(0);
    let available = free.saturating_sub(reserved);
    if available < need {
        return Err(config_error(format!(
            "hugepages=on: the guest needs {need} free {kib} kB hugepages, the host has {available} (raise {dir}/nr_hugepages)"
        )));
    }
    Ok(())
}

/// THP and KSM advice on every RAM mapping.
fn advise(mem: &GuestMemory, config: &MemoryConfig) {
    let mut advice = Vec::new();
    if !config.hugepages {
        advice.push(if config.thp {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        });
    }
    if config.mergeable {
        advice.push(libc::MADV_MERGEABLE);
    }
    for (host, len) in host_ranges(mem) {
        if config.thp && !config.hugepages && host % (2 << 20) != 0 {
            tracing::debug!("guest RAM at host {host:#x} is not 2 MiB aligned: THP covers less");
        }
        for &a in &advice {
            // SAFETY: advice on a range this process mapped; it changes no contents.
            let r = unsafe { libc::madvise(host as *mut libc::c_void, len as usize, a) };
            if r != 0 {
                tracing::warn!(
                    "madvise({a}) on guest RAM: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
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
        let mem = create(&MemoryConfig::with_size(64 << 20)).unwrap();
        for page in 0..1024u64 {
            mem.write_obj(1u8, GuestAddress(page * 4096)).unwrap();
        }
        let (total, guest) = resident_kib(&mem).unwrap();
        assert!(guest >= 4096, "guest {guest} KiB");
        assert!(total > guest);
    }

    #[test]
    fn large_guest_has_two_regions() {
        let mem = create(&MemoryConfig::with_size(5 << 30)).unwrap();
        assert_eq!(host_ranges(&mem).len(), 2);
    }

    #[test]
    fn shared_memory_is_one_memfd_across_regions() {
        let mut config = MemoryConfig::with_size(4 << 30);
        config.shared = true;
        let mem = create(&config).unwrap();
        mem.write_obj(0xabu8, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0xcdu8, GuestAddress(4 << 30)).unwrap();
        let files: Vec<_> = mem
            .iter()
            .map(|r| r.file_offset().map(|f| f.start()))
            .collect();
        assert_eq!(files, [Some(0), Some(3 << 30)]);
    }

    #[test]
    fn a_file_backs_guest_ram_and_keeps_what_the_guest_wrote() {
        let path = std::env::temp_dir().join(format!("fv-ram-{}", std::process::id()));
        let mut config = MemoryConfig::with_size(32 << 20);
        config.file = Some(path.clone());
        {
            let mem = create(&config).unwrap();
            mem.write_obj(0x1234_5678u32, GuestAddress(0x20_0000))
                .unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 32 << 20);
        assert_eq!(&bytes[0x20_0000..0x20_0004], &0x1234_5678u32.to_le_bytes());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn too_few_hugepages_is_refused_before_mapping() {
        let mut config = MemoryConfig::with_size(1 << 40);
        config.hugepages = true;
        let e = create(&config).unwrap_err().to_string();
        assert!(
            e.contains("hugepages=on: the guest needs 524288 free 2048 kB hugepages"),
            "{e}"
        );
    }

    #[test]
    fn prefault_populates_up_front() {
        let mut config = MemoryConfig::with_size(64 << 20);
        config.prefault = true;
        let mem = create(&config).unwrap();
        let (_, guest) = resident_kib(&mem).unwrap();
        assert!(
            guest >= 60 << 10,
            "guest {guest} KiB resident after prefault"
        );
    }
}
