#!/usr/bin/env python3
"""Write the guest kit's initramfs (gzip'd newc cpio) - python3 stdlib only.

Usage:
  mkinitramfs.py --root DIR --kver KVER --init FILE --out FILE.cpio.gz MOD...

DIR is a tree where the kernel package and busybox-static were extracted
(dpkg-deb -x): DIR/bin/busybox, DIR/lib/modules/KVER/. MOD... are module
names (virtio_net, virtio-rng and virtio_rng are the same). Modules that are
built into the kernel (modules.builtin) or missing are skipped and reported on
stderr; the requested ones and all their dependencies go into
/lib/modules/KVER/, and /etc/kit/modules lists them in load order
(dependencies first) for /init.

Dependencies come from DIR/lib/modules/KVER/modules.dep when present. Debian
packages do not ship it (depmod generates it at install time), so otherwise
they come from each module's .modinfo "depends=" field, which is the same
information (modpost computes it from the symbols the module imports); a
modules.dep in depmod's format is then written into the initramfs.

The archive is written without root rights (device nodes are cpio entries)
and is reproducible (fixed mtimes, sorted entries, gzip mtime 0).
"""

import argparse
import gzip
import io
import lzma
import os
import stat
import struct
import subprocess
import sys


def modname(path_or_name):
    """Module name of a .ko path or a name: basename, no suffix, '-' -> '_'."""
    base = os.path.basename(path_or_name)
    for suffix in (".ko.xz", ".ko.gz", ".ko.zst", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def read_ko(path):
    """Contents of a module file, decompressed when it is .ko.xz / .ko.gz."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        sys.exit(f"mkinitramfs: {path}: zstd modules are not supported")
    return data


def modinfo(data):
    """key -> [values] from the .modinfo section of an ELF64 LE module."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not an ELF64 little-endian object")
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
        name, _typ, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", data, e_shoff + i * e_shentsize)
        return name, off, size

    _, stroff, _ = section(e_shstrndx)
    info = {}
    for i in range(e_shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] != b".modinfo":
            continue
        for item in data[off:off + size].split(b"\0"):
            if b"=" in item:
                k, v = item.decode("utf-8", "replace").split("=", 1)
                info.setdefault(k, []).append(v)
    return info


def load_deps(moddir):
    """(name -> relative path, name -> [dependency names], dep_from_modinfo)."""
    paths = {}
    for dirpath, _dirs, files in os.walk(os.path.join(moddir, "kernel")):
        for fn in files:
            if ".ko" in fn:
                rel = os.path.relpath(os.path.join(dirpath, fn), moddir)
                paths[modname(fn)] = rel

    deps = {}
    dep_file = os.path.join(moddir, "modules.dep")
    if os.path.exists(dep_file):
        with open(dep_file) as f:
            for line in f:
                if ":" not in line:
                    continue
                mod, rest = line.split(":", 1)
                deps[modname(mod)] = [modname(d) for d in rest.split()]
        return paths, deps, False
    return paths, None, True


def modinfo_deps(moddir, paths, name):
    info = modinfo(read_ko(os.path.join(moddir, paths[name])))
    dep = info.get("depends", [""])[0]
    return [modname(d) for d in dep.split(",") if d]


def resolve(wanted, moddir, builtin):
    """Load order (dependencies first) of the wanted modules, as names."""
    paths, deps, from_modinfo = load_deps(moddir)
    order, state = [], {}

    def deps_of(name):
        if from_modinfo:
            return modinfo_deps(moddir, paths, name)
        return deps.get(name, [])

    def visit(name, chain):
        if state.get(name) == "done":
            return
        if state.get(name) == "busy":
            sys.exit("mkinitramfs: dependency cycle: " + " -> ".join(chain + [name]))
        state[name] = "busy"
        for d in deps_of(name):
            if d in paths:
                visit(d, chain + [name])
            elif d not in builtin:
                sys.exit(f"mkinitramfs: {name} needs {d}, which does not exist")
        state[name] = "done"
        order.append(name)

    for w in wanted:
        w = modname(w)
        if w in builtin:
            print(f"mkinitramfs: {w}: built in, skipped", file=sys.stderr)
        elif w not in paths:
            print(f"mkinitramfs: {w}: no such module, skipped", file=sys.stderr)
        else:
            visit(w, [])
    return order, paths, deps_of


class Cpio:
    """newc ("070701") archive writer."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(name_b), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08x" % v for v in fields)
        self.buf.write(hdr + name_b)
        self.buf.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name, perm=0o755):
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name, data, perm=0o644):
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor, perm=0o600):
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0, nlink=1)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def busybox_applets(busybox):
    """Applet paths (e.g. 'usr/bin/awk') from the static busybox itself."""
    try:
        out = subprocess.run([busybox, "--list-full"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []  # /init then relies on `busybox --install -s`
    return sorted(set(line.strip() for line in out.splitlines() if line.strip()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--kver", required=True)
    ap.add_argument("--init", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("modules", nargs="*")
    args = ap.parse_args()

    moddir = os.path.join(args.root, "lib/modules", args.kver)
    builtin = set()
    bpath = os.path.join(moddir, "modules.builtin")
    if os.path.exists(bpath):
        with open(bpath) as f:
            builtin = {modname(line.strip()) for line in f if line.strip()}

    order, paths, deps_of = resolve(args.modules, moddir, builtin)

    c = Cpio()
    dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys",
            "tmp", "run", "etc", "etc/kit", "lib", "lib/modules",
            "lib/modules/" + args.kver]
    for rel in sorted({os.path.dirname(paths[m]) for m in order}):
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            d = "lib/modules/%s/%s" % (args.kver, "/".join(parts[:i]))
            if d not in dirs:
                dirs.append(d)
    for d in dirs:
        c.dir(d, 0o1777 if d == "tmp" else 0o755)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)

    busybox = os.path.join(args.root, "bin/busybox")
    with open(busybox, "rb") as f:
        c.file("bin/busybox", f.read(), 0o755)
    c.symlink("bin/sh", "busybox")
    for applet in busybox_applets(busybox):
        if applet in ("bin/busybox", "bin/sh"):
            continue
        c.symlink(applet, "/bin/busybox")

    with open(args.init, "rb") as f:
        c.file("init", f.read(), 0o755)

    dep_lines = []
    kernel_order = []
    for m in order:
        rel = paths[m]
        data = read_ko(os.path.join(moddir, rel))
        if rel.endswith((".xz", ".gz")):
            rel = rel.rsplit(".", 1)[0]  # busybox insmod wants a plain .ko
        kernel_order.append(rel)
        c.file("lib/modules/%s/%s" % (args.kver, rel), data)
    rel_of = dict(zip(order, kernel_order))
    for m in order:
        ds = deps_of(m)
        dep_lines.append("%s: %s" % (rel_of[m], " ".join(rel_of[d] for d in ds if d in rel_of)))
    c.file("lib/modules/%s/modules.dep" % args.kver, ("\n".join(dep_lines) + "\n").encode())
    c.file("etc/kit/modules", "".join(r + "\n" for r in kernel_order).encode())

    raw = c.finish()
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as g:
            g.write(raw)
    os.replace(tmp, args.out)
    for m in order:
        print(f"mkinitramfs: module {m}", file=sys.stderr)


if __name__ == "__main__":
    main()
