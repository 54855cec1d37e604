#!/usr/bin/env python
"""Static report of uaal_ext's CUDA kernels, for a machine without a GPU (docs/performance.md).

1. Compiles every `csrc/**/*.cu` with nvcc and `-Xptxas -v` for each arch in --archs, with the
   extension build's own flags (taken from the CMake build's `build.ninja` when a build exists,
   otherwise rebuilt from CMakeLists.txt's conventions), device code only (`--fatbin`), and parses
   ptxas' report into registers, spill stores/loads, shared memory, stack frame and barriers per
   kernel and arch. Names are demangled (c++filt) and shortened.
2. Lists the cubins (SASS) and PTX in the BUILT library (`uaal_ext/_C*.so`) with cuobjdump, and the
   kernels each cubin holds (`--dump-resource-usage`). An arch of --archs without SASS is a failure.

    python benchmarks/cuda_kernel_report.py                 # -> benchmarks/results/cuda_kernels.md
    python benchmarks/cuda_kernel_report.py --check         # exit 1 on missing SASS / compile errors
    python benchmarks/cuda_kernel_report.py --archs 80,90,100 --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from nvcc_tools import default_archs, find_cuobjdump, find_nvcc, flags_from_build, flags_from_cmakelists

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Warps resident per SM, by compute capability (CUDA programming guide, "Compute capabilities").
MAX_WARPS_PER_SM = {
    "70": 64,
    "75": 32,
    "80": 64,
    "86": 48,
    "87": 48,
    "89": 48,
    "90": 64,
    "100": 64,
    "103": 64,
    "110": 64,
    "120": 48,
    "121": 48,
}
REGS_PER_SM = 65536

# On-paper floor (docs/performance.md#memory-floor): peak DRAM bandwidth of the GPUs the archs stand for.
PAPER_GPUS = [("A100 SXM 80GB, sm_80", 2.039e12), ("H100 SXM, sm_90", 3.35e12)]
PAPER_SHAPES = [(2, 19, 512, 1024), (2, 150, 512, 512)]  # the CPU bars' shapes
# Minimum bytes per pixel of each op with fp32 logits and int64 targets: what it must read and
# write, as (logit-sized passes: 4C bytes each, other bytes per pixel).
PAPER_OPS = [
    ("cross_entropy forward", "read logits, target; write log_normalizer", 1, 8 + 4),
    ("cross_entropy backward", "read logits, target, log_normalizer; write grad", 2, 8 + 4),
    ("cross_entropy fwd+bwd, separate ops", "both", 3, 24),
    ("cross_entropy_forward_backward (fused)", "read logits, target; write grad", 2, 8),
    ("fused, by weight, entropy", "pre-pass: read logits, target; then the fused op", 3, 16),
    ("fused, by weight, given map", "pre-pass: read target, map; then the fused op with the map", 2, 8 + 8 + 4 + 4),
    ("pixel_entropy forward", "read logits; write entropy", 1, 4),
    ("pixel_entropy backward", "read logits, grad; write grad", 2, 4),
    ("perturbation_statistics, K=5", "read clean + 5 perturbed logits; write sigma, ns", 6, 8),
    ("perturbation_statistics, K=10", "read clean + 10 perturbed logits; write sigma, ns", 11, 8),
]


# --------------------------------------------------------------------------------------------
# Compiling and parsing ptxas' report
# --------------------------------------------------------------------------------------------
@dataclass
class KernelInfo:
    mangled: str
    arch: str
    source: str
    entry: bool = True
    registers: int | None = None
    barriers: int | None = None
    smem: int = 0
    stack_frame: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    cmem0: int | None = None
    name: str = ""


@dataclass
class CompileResult:
    source: str
    seconds: float
    returncode: int
    log: str
    kernels: list[KernelInfo] = field(default_factory=list)
    flags_from: str = ""
    command: str = ""


def canonical(mangled: str) -> str:
    """nvcc names a file's anonymous namespace with a per-compile hash (`_GLOBAL__N__<hash>_...`);
    give it the standard name so the same kernel compares equal across builds."""
    out, pos = [], 0
    for m in re.finditer(r"(\d+)_GLOBAL__N_", mangled):
        if m.start() < pos:
            continue
        ident_start = m.start(1) + len(m.group(1))
        out.append(mangled[pos : m.start()] + "12_GLOBAL__N_1")
        pos = ident_start + int(m.group(1))
    return "".join(out) + mangled[pos:]


def parse_ptxas(log: str, source: str) -> list[KernelInfo]:
    kernels: list[KernelInfo] = []
    current: KernelInfo | None = None
    props_for: str | None = None
    arch = "?"
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '([^']+)' for '(\w+)'", line):
            arch = m.group(2)
            current = KernelInfo(canonical(m.group(1)), arch, source)
            kernels.append(current)
        elif m := re.search(r"Function properties for (\S+)", line):
            props_for = canonical(m.group(1))
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            target = current if current is not None and current.mangled == props_for else None
            if target is None:  # a non-inlined device function: listed on its own
                target = KernelInfo(props_for or "?", arch, source, entry=False)
                kernels.append(target)
            target.stack_frame, target.spill_stores, target.spill_loads = map(int, m.groups())
        elif (m := re.search(r"Used (\d+) registers", line)) and current is not None:
            current.registers = int(m.group(1))
            if b := re.search(r"used (\d+) barriers", line):
                current.barriers = int(b.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                current.smem = int(s.group(1))
            if c := re.search(r"(\d+) bytes cmem\[0\]", line):
                current.cmem0 = int(c.group(1))
    return kernels


def compile_one(nvcc: str, source: Path, archs: list[str], threads: int, tmp: Path, progress) -> CompileResult:
    rel = os.path.relpath(source, ROOT)
    built = flags_from_build(source)
    cwd = str(ROOT)
    if built:
        flags, nvcc_used, origin, cwd = built  # run where ninja runs it: relative paths then hold
        nvcc = nvcc_used if os.path.exists(nvcc_used) else nvcc
    else:
        flags, origin = flags_from_cmakelists(), "CMakeLists.txt (no nvcc command for it in build/*/build.ninja)"
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    out = tmp / (source.stem + ".fatbin")
    # Device code only (--fatbin): the host compile of torch's headers adds minutes and no data.
    cmd = [
        nvcc,
        *flags,
        *gencode,
        "-Xptxas",
        "-v",
        "--threads",
        str(threads),
        "--fatbin",
        "-x",
        "cu",
        "-o",
        str(out),
        str(source),
    ]
    progress(f"compiling {rel} for {', '.join('sm_' + a for a in archs)} (flags from {origin}) ...")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    while True:
        try:
            log, _ = proc.communicate(timeout=30)
            break
        except subprocess.TimeoutExpired:
            progress(f"  ... {rel}: still compiling, {time.time() - t0:.0f} s")
    secs = time.time() - t0
    progress(f"  {rel}: {'done' if proc.returncode == 0 else 'FAILED'} in {secs:.0f} s")
    return CompileResult(rel, secs, proc.returncode, log, parse_ptxas(log, rel), origin, shlex.join(cmd))


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------
def enum_names() -> dict[str, dict[int, str]]:
    """`enum class X { a = 0, b, c }` in csrc/, to print `(X)1` as `b`."""
    enums: dict[str, dict[int, str]] = {}
    for path in list(ROOT.glob("csrc/**/*.h")) + list(ROOT.glob("csrc/**/*.cuh")) + list(ROOT.glob("csrc/**/*.cu")):
        for m in re.finditer(r"enum\s+class\s+(\w+)\s*(?::\s*[\w:]+\s*)?\{([^}]*)\}", path.read_text(errors="replace")):
            values, nxt = {}, 0
            for item in m.group(2).split(","):
                item = re.sub(r"//.*", "", item).strip()
                if not item:
                    continue
                name, _, val = item.partition("=")
                try:
                    nxt = int(val.strip(), 0) if val.strip() else nxt
                except ValueError:
                    pass
                values[nxt] = name.strip()
                nxt += 1
            enums[m.group(1)] = values
    return enums


def demangle(names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    try:
        out = subprocess.run(
            ["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True
        ).stdout.splitlines()
        return dict(zip(names, out))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def shorten(name: str, enums: dict[str, dict[int, str]], limit: int = 110) -> str:
    s = name
    if s.startswith("void "):
        s = s[5:]
    # drop the parameter list: the last top-level "(...)"
    depth = 0
    for i in range(len(s) - 1, -1, -1):
        if s[i] == ")":
            depth += 1
        elif s[i] == "(":
            depth -= 1
            if depth == 0:
                if i > 0 and s[i - 1] not in " <,":
                    s = s[:i]
                break
    s = s.replace("(anonymous namespace)::", "")
    s = re.sub(r"std::integral_constant<bool, (true|false)>", r"\1", s)
    s = re.sub(r"std::integral_constant<[^<>,]+, ([^<>]+)>", r"\1", s)
    s = re.sub(r"\b(?:[A-Za-z_]\w*::)+", "", s)  # namespaces
    s = re.sub(r"\((\w+)\)(-?\d+)", lambda m: enums.get(m.group(1), {}).get(int(m.group(2)), m.group(0)), s)
    s = s.replace("c10::", "").replace("unsigned ", "u")
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    return s


def reg_occupancy(regs: int | None, arch: str) -> str:
    """Resident warps per SM allowed by registers alone (256-register allocation per warp)."""
    if not regs:
        return "n/a"
    max_warps = MAX_WARPS_PER_SM.get(re.sub(r"[af]$", "", arch.replace("sm_", "")), 64)
    per_warp = -(-regs * 32 // 256) * 256
    warps = min(max_warps, REGS_PER_SM // per_warp)
    return f"{100 * warps / max_warps:.0f}%"


# --------------------------------------------------------------------------------------------
# The built library
# --------------------------------------------------------------------------------------------
def find_built_library(explicit: str | None) -> tuple[Path | None, str]:
    if explicit:
        return Path(explicit), "--so"
    code = "import uaal_ext, uaal_ext._C as c; print(c.__file__); print(uaal_ext.build_info())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/tmp")
    if proc.returncode == 0:
        lines = proc.stdout.strip().splitlines()
        return Path(lines[0]), f"`import uaal_ext` (build_info: `{lines[1] if len(lines) > 1 else '?'}`)"
    cands = glob.glob(str(ROOT / "build" / "**" / "_C*.so"), recursive=True)
    cands += glob.glob(str(ROOT / "uaal_ext" / "_C*.so"))
    if cands:
        newest = max(cands, key=os.path.getmtime)
        return Path(newest), f"newest build output (`import uaal_ext` failed: {proc.stderr.strip().splitlines()[-1:]})"
    return None, "not found: `import uaal_ext` failed and no build/**/_C*.so"


def inspect_library(cuobjdump: str, lib: Path) -> tuple[dict[str, set[str]], set[str], str]:
    """{arch: mangled kernel names with SASS}, archs with PTX, and a note."""
    elf = subprocess.run([cuobjdump, "--list-elf", str(lib)], capture_output=True, text=True)
    ptx = subprocess.run([cuobjdump, "--list-ptx", str(lib)], capture_output=True, text=True)
    sass: dict[str, set[str]] = {}
    for m in re.finditer(r"\.(sm_\w+)\.cubin", elf.stdout):
        sass.setdefault(m.group(1), set())
    ptx_archs = set(re.findall(r"\.(sm_\w+)\.ptx", ptx.stdout))
    res = subprocess.run([cuobjdump, "--dump-resource-usage", str(lib)], capture_output=True, text=True)
    arch = None
    for line in res.stdout.splitlines():
        if m := re.match(r"arch = (sm_\w+)", line.strip()):
            arch = m.group(1)
        elif (m := re.match(r"Function (\S+):", line.strip())) and arch:
            sass.setdefault(arch, set()).add(canonical(m.group(1)))
    note = "" if elf.returncode == 0 else (elf.stderr.strip() or elf.stdout.strip())
    return sass, ptx_archs, note


# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--archs",
        default=default_archs(),
        help="comma-separated SM versions (default: TORCH_CUDA_ARCH_LIST, else 80,90)",
    )
    p.add_argument("--jobs", type=int, default=1, help="parallel nvcc work (files x --threads)")
    p.add_argument("--sources", nargs="*", help="default: csrc/**/*.cu")
    p.add_argument("--nvcc", help="nvcc to use (default: PATH, /usr/local/cuda*/bin)")
    p.add_argument("--so", help="built library to inspect (default: import uaal_ext, else build/)")
    p.add_argument(
        "--check", action="store_true", help="exit 1 when a compile fails, no library is found or an arch lacks SASS"
    )
    p.add_argument("--output", default=str(RESULTS_DIR / "cuda_kernels.md"))
    p.add_argument("--log", action="store_true", help="print nvcc's full output")
    args = p.parse_args(argv)

    archs = [a.strip().replace("sm_", "") for a in args.archs.split(",") if a.strip()]
    nvcc = find_nvcc(args.nvcc)
    sources = [Path(s).resolve() for s in args.sources] if args.sources else sorted(ROOT.glob("csrc/**/*.cu"))
    out: list[str] = []
    failures: list[str] = []

    def log(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    def progress(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    nvcc_version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    cmdline = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    log("# uaal_ext CUDA kernels: static report")
    log()
    log(f"- command: `{cmdline}`")
    log(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    log(f"- nvcc: `{nvcc}` ({nvcc_version[-1] if nvcc_version else '?'})")
    log(f"- archs: {', '.join('sm_' + a for a in archs)}")
    log()

    # 1. ptxas report
    results: list[CompileResult] = []
    if not sources:
        log("No `csrc/**/*.cu` files: nothing to compile.")
        failures.append("no CUDA sources")
    else:
        threads = max(1, args.jobs // len(sources))
        with (
            tempfile.TemporaryDirectory(prefix="uaal_ptxas_") as tmp,
            cf.ThreadPoolExecutor(max_workers=max(1, min(args.jobs, len(sources)))) as pool,
        ):
            futs = [pool.submit(compile_one, nvcc, s, archs, threads, Path(tmp), progress) for s in sources]
            results = [f.result() for f in futs]
    enums = enum_names()
    names = demangle(sorted({k.mangled for r in results for k in r.kernels}))
    for r in results:
        for k in r.kernels:
            k.name = shorten(names.get(k.mangled, k.mangled), enums)

    if results:
        log("## Registers, spills and shared memory (`nvcc -Xptxas -v`)")
        log()
        for r in results:
            log(
                f"- `{r.source}`: nvcc flags from {r.flags_from}; {r.seconds:.0f} s; "
                f"{'OK' if r.returncode == 0 else f'FAILED (exit {r.returncode})'}"
            )
            if r.returncode != 0:
                failures.append(f"{r.source}: nvcc exit {r.returncode}")
                log("")
                log("```")
                log("\n".join(r.log.strip().splitlines()[-30:]))
                log("```")
            if args.log:
                print(r.command, file=sys.stderr)
                print(r.log, file=sys.stderr)
        log()
        log(
            "| kernel | arch | registers | reg-limited occupancy | spill stores B | spill loads B | "
            "smem B | stack frame B | barriers | file |"
        )
        log("|" + "---|" * 10)
        # ptxas lists a non-inlined device function (e.g. powf's slow path) under every kernel
        # that calls it: one row per function and arch, with the number of callers.
        rows, callers = [], {}
        for k in (k for r in results for k in r.kernels):
            if k.entry:
                rows.append(k)
            else:
                key = (k.source, k.mangled, k.arch)
                if key not in callers:
                    rows.append(k)
                callers[key] = callers.get(key, 0) + 1
        rows.sort(key=lambda k: (not k.entry, k.source, k.name, k.arch))
        for k in rows:
            label = (
                k.name
                if k.entry
                else (f"{k.name} (device function, in {callers[(k.source, k.mangled, k.arch)]} kernels)")
            )
            flag = " **SPILLS**" if k.spill_stores or k.spill_loads else ""
            log(
                f"| `{label}` | {k.arch} | {k.registers if k.registers is not None else 'n/a'} | "
                f"{reg_occupancy(k.registers, k.arch)} | {k.spill_stores}{flag} | {k.spill_loads} | "
                f"{k.smem} | {k.stack_frame} | {k.barriers if k.barriers is not None else 'n/a'} | "
                f"{Path(k.source).name} |"
            )
        kernels = [k for k in rows if k.entry]
        spills = [k for k in rows if k.spill_stores or k.spill_loads]
        log()
        log(
            f"{len({k.mangled for k in kernels})} kernels x {len(archs)} archs; "
            f"max registers {max((k.registers or 0) for k in kernels) if kernels else 'n/a'}; "
            f"{len(spills)} with spills; max stack frame "
            f"{max((k.stack_frame for k in rows), default=0)} B. Occupancy column: resident warps "
            f"per SM that the register count alone allows (block size and shared memory can lower it)."
        )
        log()
        if spills:
            log("Spilling kernels: " + ", ".join(f"`{k.name}` ({k.arch})" for k in spills))
            log()

    # 2. SASS in the built library
    log("## SASS in the built library (`cuobjdump`)")
    log()
    lib, how = find_built_library(args.so)
    cuobjdump = find_cuobjdump(nvcc)
    log(f"- library: `{lib}` ({how})" if lib else f"- library: {how}")
    log(f"- cuobjdump: `{cuobjdump}`" if cuobjdump else "- cuobjdump: not found (PATH, toolkit, triton)")
    log()
    if lib is None or cuobjdump is None:
        failures.append("built library or cuobjdump not found")
    else:
        sass, ptx_archs, note = inspect_library(cuobjdump, lib)
        if note:
            log(f"cuobjdump: {note}")
            log()
        compiled = {}
        for k in (k for r in results for k in r.kernels if k.entry):
            compiled.setdefault(k.arch, set()).add(k.mangled)
        log("| arch | SASS in library | kernels in its cubins | kernels compiled here missing from it | PTX | status |")
        log("|---|---|---|---|---|---|")
        for a in sorted(set(["sm_" + x for x in archs]) | set(sass), key=lambda s: int(re.sub(r"\D", "", s) or 0)):
            wanted = a.replace("sm_", "") in archs
            present = a in sass
            missing = sorted(compiled.get(a, set()) - sass.get(a, set())) if present else []
            status = "ok" if present and not missing else ("extra" if not wanted else "FAIL")
            if wanted and status == "FAIL":
                failures.append(
                    f"{a}: " + ("no SASS in the library" if not present else f"{len(missing)} kernels missing")
                )
            miss_txt = ", ".join(f"`{shorten(names.get(m, m), enums, 60)}`" for m in missing[:5])
            if len(missing) > 5:
                miss_txt += f" (+{len(missing) - 5})"
            log(
                f"| {a} | {'yes' if present else '**no**'} | {len(sass.get(a, ()))} | "
                f"{miss_txt or ('-' if present else 'n/a')} | {'yes' if a in ptx_archs else 'no'} | {status} |"
            )
        log()
        log(
            "A kernel compiled here but absent from the library's cubin of the same arch means the "
            "library is older than the sources (rebuild) or built with other flags."
        )
        log()
        if any(("sm_" + a) not in sass for a in archs):
            others = []
            for cand in sorted(glob.glob(str(ROOT / "build" / "*" / "_C*.so"))):
                if Path(cand).resolve() == lib.resolve():
                    continue
                cand_sass, _, _ = inspect_library(cuobjdump, Path(cand))
                others.append(
                    f"`{os.path.relpath(cand, ROOT)}`: "
                    + (", ".join(f"{a} ({len(k)} kernels)" for a, k in sorted(cand_sass.items())) or "no device code")
                )
            if others:
                log(
                    "Other builds under build/ (not the library `import uaal_ext` loads; pass "
                    "`--so` to check one): " + "; ".join(others)
                )
                log()

    log("## Bytes moved and floor, on paper")
    log()
    log(
        "No GPU here to time the kernels; this is the floor they are built to approach: the bytes "
        "each op must move (fp32 logits, int64 targets, per-pixel fp32 lse/entropy/grad; one read "
        "of the logits per pass) at the GPU's peak DRAM bandwidth. Real kernels reach roughly "
        "80-90% of peak at best."
    )
    log()
    head = (
        "| op | traffic | bytes/pixel | "
        + " | ".join(
            f"{'x'.join(map(str, sh))}: MB, " + ", ".join(f"{g.split(',')[0]} us" for g, _ in PAPER_GPUS)
            for sh in PAPER_SHAPES
        )
        + " |"
    )
    log(head)
    log("|" + "---|" * (head.count("|") - 1))
    for op, what, passes, other in PAPER_OPS:

        def per_pixel(c, passes=passes, other=other):
            return passes * 4 * c + other

        cells = []
        for n, c, *spatial in PAPER_SHAPES:
            pixels = n
            for d in spatial:
                pixels *= d
            nbytes = pixels * per_pixel(c)
            cells.append(f"{nbytes / 1e6:.0f}, " + ", ".join(f"{nbytes / bw * 1e6:.0f}" for _, bw in PAPER_GPUS))
        log(
            f"| {op} | {what} | {4 * passes}C+{other} = {per_pixel(19)} (C=19), {per_pixel(150)} (C=150) | "
            + " | ".join(cells)
            + " |"
        )
    log()

    log("## Verdict")
    log()
    log("PASS" if not failures else "FAIL: " + "; ".join(failures))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(out) + "\n")
    print(f"\nwritten: {args.output}", file=sys.stderr)
    return 1 if (failures and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
