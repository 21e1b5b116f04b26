"""Lists the GPU code embedded in a CUDA-enabled shared library.

Reads the ELF section ``.nv_fatbin`` of a module (default: the installed
``jax_roi._jax_roi``) and prints the architectures of its machine code
(SASS, "cubin" entries) and of its PTX, like ``cuobjdump --list-elf
--list-ptx`` but with no CUDA toolkit or download:

  python tools/fatbin_archs.py [MODULE.so] [--json]

Format (stable since CUDA 4, the same in CUDA 12 and 13; documented in
reverse-engineered sources such as n-eiling/cuda-fatbin-decompression): the
section holds one or more fat binaries, each a 16-byte header (magic
0xBA55ED50, u16 version, u16 header size, u64 size of its entries) followed
by entries, each with a header (u16 kind: 1 = PTX, 2 = ELF/SASS; u16
version; u32 header size; u64 payload size; ...; u32 architecture at offset
28, e.g. 90 for sm_90). Payloads may be compressed; only headers are read.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from typing import NamedTuple

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF = 1, 2


class Entry(NamedTuple):
  kind: str  # "sass" or "ptx"
  arch: int  # 90 for sm_90 / compute_90
  size: int  # payload bytes (as stored, maybe compressed)


def elf_section(data: bytes, name: str) -> bytes | None:
  """The contents of section `name` of a 64-bit little-endian ELF file."""
  if data[:4] != b"\x7fELF":
    raise ValueError("not an ELF file")
  if data[4] != 2 or data[5] != 1:
    raise ValueError("only 64-bit little-endian ELF files are supported")
  (shoff,) = struct.unpack_from("<Q", data, 0x28)
  shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
  headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
  strtab = headers[shstrndx]
  names = data[strtab[4] : strtab[4] + strtab[5]]
  for h in headers:
    end = names.index(b"\0", h[0])
    if names[h[0] : end].decode() == name:
      if h[1] == 8:  # SHT_NOBITS
        return b""
      return data[h[4] : h[4] + h[5]]
  return None


def fatbin_entries(section: bytes) -> list[Entry]:
  entries = []
  pos = 0
  while pos + 16 <= len(section):
    magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", section, pos)
    if magic != FATBIN_MAGIC:
      pos += 8  # fat binaries are 8-byte aligned; skip padding
      continue
    entry = pos + header_size
    end = entry + fat_size
    if end > len(section):
      raise ValueError(f"truncated fat binary at offset {pos}")
    while entry + 32 <= end:
      kind, _ver, ehdr_size, payload = struct.unpack_from("<HHIQ", section, entry)
      (arch,) = struct.unpack_from("<I", section, entry + 28)
      if ehdr_size == 0:
        break
      if kind in (KIND_PTX, KIND_ELF):
        entries.append(Entry("ptx" if kind == KIND_PTX else "sass", arch, payload))
      entry += ehdr_size + payload
    pos = end
  return entries


def module_path() -> str:
  import jax_roi._jax_roi as ext  # noqa: PLC0415

  return ext.__file__


def archs(path: str) -> tuple[list[int], list[int]]:
  """(sorted SASS architectures, sorted PTX architectures) of a library."""
  with open(path, "rb") as f:
    data = f.read()
  section = elf_section(data, ".nv_fatbin")
  if section is None:
    return [], []
  entries = fatbin_entries(section)
  return (
    sorted({e.arch for e in entries if e.kind == "sass"}),
    sorted({e.arch for e in entries if e.kind == "ptx"}),
  )


def parse_cmake_archs(spec: str) -> tuple[list[int], list[int]]:
  """CMAKE_CUDA_ARCHITECTURES syntax -> (SASS, PTX): "90" is both,
  "90-real" SASS only, "90-virtual" PTX only."""
  sass, ptx = set(), set()
  for item in spec.replace(",", ";").split(";"):
    item = item.strip()
    if not item:
      continue
    number, _, suffix = item.partition("-")
    if not number.isdigit() or suffix not in ("", "real", "virtual"):
      raise ValueError(f"unsupported architecture {item!r} (expected N, N-real or N-virtual)")
    if suffix in ("", "real"):
      sass.add(int(number))
    if suffix in ("", "virtual"):
      ptx.add(int(number))
  return sorted(sass), sorted(ptx)


def default_archs(
  gpu_codes: list[str], min_arch: int = 75, extra: tuple[int, ...] = (86, 89)
) -> tuple[list[int], list[int]]:
  """The default of CMakeLists.txt, from `nvcc --list-gpu-code` lines:
  SASS for the first architecture of each major version >= min_arch and for
  `extra`, PTX for the newest of those. (A second implementation of the
  rule, so that the test checks the rule, not just CMake's bookkeeping.)"""
  known = sorted({int(c[3:]) for c in gpu_codes if c.startswith("sm_") and c[3:].isdigit()})
  sass, majors = [], set()
  for n in known:
    if n < min_arch:
      continue
    if n // 10 not in majors or n in extra:
      majors.add(n // 10)
      sass.append(n)
  return sass, sass[-1:]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("module", nargs="?", help="shared library (default: jax_roi's)")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  path = args.module or module_path()
  sass, ptx = archs(path)
  if args.json:
    print(json.dumps({"module": path, "sass": sass, "ptx": ptx}))
  else:
    print(
      f"{path}\n  SASS: {' '.join(f'sm_{a}' for a in sass) or 'none'}"
      f"\n  PTX:  {' '.join(f'compute_{a}' for a in ptx) or 'none'}"
    )
  return 0 if sass or ptx else 1


if __name__ == "__main__":
  sys.exit(main())
