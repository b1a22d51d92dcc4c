# Build script for nin_ext (fused Network-in-Network kernels for PyTorch).
#
# Install against the torch that is already installed (the build needs torch's headers and libs):
#
#     pip install --no-build-isolation .        # or: pip install --no-build-isolation -e .
#
# Build switches (environment variables):
#
#   NIN_EXT_NO_EXT=1         Pure-Python install: no compiled extension (nin_ext then falls back to
#                            its reference backend).
#   NIN_EXT_FORCE_CUDA=1     Compile the CUDA sources even when no CUDA toolkit is detected or torch
#                            is a CPU build (e.g. cross-building with CUDA_HOME set by hand).
#   NIN_EXT_NO_CUDA=1        Never compile the CUDA sources (CPU-only extension).
#   CUDA_HOME / CUDA_PATH    CUDA toolkit root. Always wins. When unset, setup.py finds the toolkit
#                            itself from the `nvcc` on PATH (following symlinks and wrapper scripts)
#                            or /usr/local/cuda, /usr/local/cuda-*; it does not trust torch's guess,
#                            which is wrong when `nvcc` is a wrapper script.
#   TORCH_CUDA_ARCH_LIST     CUDA archs to compile for, default "8.0;9.0" (e.g. "9.0a" for wgmma).
#   MAX_JOBS                 Parallel compile jobs for ninja (torch's default: all cores + 2).
#   NIN_EXT_DEBUG=1          -O0 -g host code and -G device code instead of -O3.
#
# What gets built: extension `nin_ext._C` from csrc/*.cpp and csrc/cpu/*.cpp, plus csrc/cuda/*.cu and
# csrc/cuda/*.cpp when CUDA is enabled (torch has CUDA and a toolkit is found, or NIN_EXT_FORCE_CUDA=1)
# and such files exist. CUDA builds get -DNIN_EXT_WITH_CUDA=1 and -DNIN_EXT_CUDA_ARCHS="<arch list>".
# No fast-math anywhere: the kernels must match fp32 references exactly enough.
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"  # relative paths: setuptools wants them relative to setup.py
PACKAGE = "nin_ext"
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _msg(text):
    print(f"nin_ext setup: {text}", flush=True)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _read_version():
    path = os.path.join(HERE, PACKAGE, "__init__.py")
    with open(path, encoding="utf-8") as f:
        match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no __version__ = '...' line in {path}")
    return match.group(1)


# ---------------------------------------------------------------------------------------------
# CUDA toolkit discovery (must run before torch.utils.cpp_extension is imported: it reads
# CUDA_HOME once, at import time).
# ---------------------------------------------------------------------------------------------
def _is_toolkit_root(root):
    if not root or not os.path.isfile(os.path.join(root, "bin", "nvcc")):
        return False
    if not os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
        return False
    libdirs = ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
               os.path.join("targets", "sbsa-linux", "lib"))
    return any(glob.glob(os.path.join(root, d, "libcudart*")) for d in libdirs)


def _roots_from_nvcc(nvcc):
    """Candidate toolkit roots for an `nvcc` executable, which may be a symlink or a wrapper script."""
    real = os.path.realpath(nvcc)
    yield os.path.dirname(os.path.dirname(real))
    # A wrapper script (e.g. `exec /usr/local/cuda-13.0/bin/nvcc "$@"`): look for nvcc paths in it.
    try:
        with open(real, "rb") as f:
            head = f.read(65536)
    except OSError:
        head = b""
    if head.startswith(b"#!"):
        for path in re.findall(rb"(/[^\s'\"$;|&]*/bin/nvcc)\b", head):
            yield os.path.dirname(os.path.dirname(os.path.realpath(path.decode(errors="replace"))))
    # Last resort: ask nvcc itself where it lives (a dry run compiles nothing).
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
        match = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
        if match:
            yield os.path.dirname(os.path.realpath(match.group(1).strip()))
    except (OSError, subprocess.SubprocessError):
        pass


def _find_cuda_home(torch_cuda_version):
    """(root, how) of the CUDA toolkit, or (None, why not)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        user = os.environ.get(var)
        if user:
            # The user's choice wins, even if it looks incomplete (then the build says why).
            return user, f"{var} from the environment"
    nvcc = shutil.which("nvcc")
    if nvcc:
        for root in _roots_from_nvcc(nvcc):
            if _is_toolkit_root(root):
                return root, f"resolved from {nvcc}"
    candidates = []
    if torch_cuda_version:  # prefer the toolkit that matches torch's CUDA
        candidates.append(f"/usr/local/cuda-{torch_cuda_version}")
    candidates.append("/usr/local/cuda")

    def _version_key(path):
        return [int(p) for p in re.findall(r"\d+", os.path.basename(path))]

    candidates += sorted(glob.glob("/usr/local/cuda-*"), key=_version_key, reverse=True)
    for root in candidates:
        if _is_toolkit_root(root):
            return os.path.realpath(root), "found in /usr/local"
    return None, "no nvcc on PATH and no toolkit in /usr/local/cuda*"


def _sources(*patterns):
    files = []
    for pattern in patterns:
        files += sorted(glob.glob(os.path.join(CSRC, pattern)))
    return files


def _torch_uses_openmp(torch_dir):
    """at::parallel_for runs in parallel only if extension code is compiled with -fopenmp when
    torch's ATen parallel backend is OpenMP (ATen/ParallelOpenMP.h is guarded by _OPENMP)."""
    config = os.path.join(torch_dir, "include", "ATen", "Config.h")
    try:
        with open(config, encoding="utf-8") as f:
            return re.search(r"#define\s+AT_PARALLEL_OPENMP\s+1", f.read()) is not None
    except OSError:
        return False


def _ext_modules_and_cmdclass():
    if _env_flag("NIN_EXT_NO_EXT"):
        _msg("NIN_EXT_NO_EXT=1: pure-Python install, no compiled extension")
        return [], {}

    import torch  # noqa: F401  (torch itself does not import cpp_extension)

    if "torch.utils.cpp_extension" in sys.modules:
        _msg("warning: torch.utils.cpp_extension was imported before CUDA_HOME was set")

    torch_cuda = torch.version.cuda
    cuda_sources = _sources(os.path.join("cuda", "*.cu"), os.path.join("cuda", "*.cpp"))
    with_cuda = False
    if _env_flag("NIN_EXT_NO_CUDA"):
        why = "NIN_EXT_NO_CUDA=1"
    elif _env_flag("NIN_EXT_FORCE_CUDA") or torch_cuda is not None:
        cuda_home, how = _find_cuda_home(torch_cuda)
        if cuda_home is not None:
            os.environ["CUDA_HOME"] = cuda_home
        if _env_flag("NIN_EXT_FORCE_CUDA"):
            with_cuda, why = True, "NIN_EXT_FORCE_CUDA=1"
        elif cuda_home is not None:
            with_cuda, why = True, f"torch {torch.__version__} has CUDA {torch_cuda}"
        else:
            why = f"torch has CUDA {torch_cuda} but no CUDA toolkit found ({how}); set CUDA_HOME"
        if cuda_home is not None:
            _msg(f"CUDA toolkit {cuda_home} ({how})")
    else:
        why = f"torch {torch.__version__} is a CPU build"
    if with_cuda and not cuda_sources:
        with_cuda, why = False, f"no CUDA sources in {CSRC}/cuda/ yet"

    # Import only now: cpp_extension reads CUDA_HOME at import time.
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = _sources("*.cpp", os.path.join("cpu", "*.cpp"))
    if not sources and not (with_cuda and cuda_sources):
        _msg(f"no C++ sources in {CSRC}/: pure-Python install")
        return [], {}

    debug = _env_flag("NIN_EXT_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx_flags = list(opt)  # torch adds its own -std (c++20 in torch 2.13)
    if sys.platform.startswith("linux") and _torch_uses_openmp(os.path.dirname(torch.__file__)):
        # Without it, at::parallel_for silently runs on one thread. Linking uses libgomp.so.1,
        # which resolves to the copy torch already loaded (torch/lib/libgomp.so.1).
        cxx_flags.append("-fopenmp")
    extra_link_args = ["-fopenmp"] if "-fopenmp" in cxx_flags else []
    if sys.platform.startswith("linux"):
        # Link the shared libstdc++ that torch uses, also where the C++ compiler links its own copy
        # statically (e.g. a toolchain that adds -static-libstdc++): named before the compiler's own
        # -lstdc++, it resolves every symbol, so no member of the static archive is pulled in. A
        # second libstdc++ inside _C has its own locale facets, and formatting a number into an error
        # message then fails (a truncated message, or a segfault, as seen on a GPU machine whose
        # /opt/gcc g++ does this).
        extra_link_args.append("-l:libstdc++.so.6")

    if with_cuda:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
        if not archs:
            archs = DEFAULT_CUDA_ARCHS
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # read by torch when it makes -gencode flags
        # One argument each: torch shell-quotes flags in build.ninja, so ';' and '"' survive.
        defines = ["-DNIN_EXT_WITH_CUDA=1", f'-DNIN_EXT_CUDA_ARCHS="{archs}"']
        nvcc_flags = list(opt) + ["-lineinfo", "--expt-relaxed-constexpr"]
        if debug:
            nvcc_flags.append("-G")
        if "-fopenmp" in cxx_flags:
            # Keep host-side template instantiations of ATen's parallel helpers identical in all TUs.
            nvcc_flags += ["-Xcompiler", "-fopenmp"]
        _msg(f"building CUDA extension ({why}); archs {archs}; "
             f"{len(sources)} C++ + {len(cuda_sources)} CUDA sources")
        ext = CUDAExtension(
            name=f"{PACKAGE}._C",
            sources=sources + cuda_sources,
            include_dirs=[os.path.join(HERE, CSRC)],
            extra_compile_args={"cxx": cxx_flags + defines, "nvcc": nvcc_flags + defines},
            extra_link_args=extra_link_args,
        )
    else:
        _msg(f"building CPU-only extension ({why}); {len(sources)} C++ sources")
        ext = CppExtension(
            name=f"{PACKAGE}._C",
            sources=sources,
            include_dirs=[os.path.join(HERE, CSRC)],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link_args,
        )
    # A persistent per-interpreter/per-torch build folder: ninja then recompiles only what changed,
    # also for editable installs (setuptools would otherwise use a fresh temporary folder each
    # time), and two venvs with different torch builds never share object files.
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", f"{py}-torch{torch.__version__}")
    build_temp = os.path.join(HERE, "build", f"temp-{tag}")

    class NinBuildExt(BuildExtension.with_options(use_ninja=True)):
        def finalize_options(self):
            super().finalize_options()
            self.build_temp = build_temp

    return [ext], {"build_ext": NinBuildExt}


ext_modules, cmdclass = _ext_modules_and_cmdclass()

setup(
    name="nin_ext",
    version=_read_version(),
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
