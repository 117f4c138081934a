"""C kernels for the engine on CPU (fp32 inference), built on first use: mostly the routed experts.

Why: at the sizes a CPU serves, ATen's grouped GEMM runs one small matrix product per expert
(128 of them for dots.llm1, empty ones included), and most of each call is dispatch and
packing, not arithmetic: a batch-1 prefill of tiny-dots spent half its instructions there.
``kernels/moe_cpu.c`` does the layer's whole routed part in one call: a counting sort of the
(token, slot) assignments by expert, then per expert (split in work items of CHUNK tokens that
OpenMP threads share) SiLU(gate)·up and the down projection, with the weights read in place in
the model's layout (no copy, no packing), outputs written to their (token, slot) row, and the
weighted sum over slots in slot order. Two forms per work item:

* few tokens (< COLS_MIN): dot products along the rows of both operands, 4 tokens x 4 weight
  rows (or 1 x 16) of vector accumulators, folded to sums by one shuffle tree;
* many: token-major, VL tokens per vector times a broadcast weight, no reductions; tokens are
  transposed in and outputs out in VL x VL register blocks.

One call per layer instead of a sort, two gathers, two grouped GEMMs and a combine. Beside it,
three small ones for what torch makes several ops of: the router's top-k, RMSNorm (a 64 x 128
norm is ~20 µs in ATen's composite), and attention's per-token work between the QKV
projection and the dot products (QK-norm, clip, RoPE, the KV-cache write; ~10 ops a layer).

How: the file is compiled with the system C compiler (``$CC``, else ``cc``) at
``-O3 -march=native`` (OpenMP when the compiler has it, else one thread) into a cache folder
(``$MOELAB_KERNEL_CACHE``, else ``~/.cache/moelab/kernels``), named by a hash of the source,
the flags and this CPU's model and flags, so a cache shared between machines never hands one a
binary built for another CPU. It is loaded with ctypes: no torch headers, so the build takes
about a second, where a torch C++ extension takes about a minute. No compiler, a failed build or
``MOELAB_CPU_KERNEL=0``: ``load()`` returns None once, with a logged reason, and callers keep
the torch path, which computes the same thing.

What this module does not know: routing (ids and weights come in), shared experts, the model.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "moe_cpu.c"
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared")
CHUNK = 64
"""Assignments per work item: an expert with more tokens is split so threads share it."""
SCRATCH_BYTES = 256 << 20
"""Bound on the (token, slot) output buffer: a long prompt goes through in token blocks."""
COLS_MIN = 16
"""An expert's tokens from which the token-major form (VL tokens per vector, no reductions,
two transposes) beats dot products along rows."""


class ExpertKernel:
    """The loaded library: ``experts(...)`` computes the routed experts' weighted sum."""

    def __init__(self, lib: ctypes.CDLL, path: Path, openmp: bool):
        self.lib, self.path, self.openmp = lib, path, openmp
        self.vector_width = lib.moe_cpu_vector_width()
        self.cols_min = COLS_MIN
        fn = lib.moe_cpu_experts_f32
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 5 + [ctypes.c_int]
        fn.argtypes += [ctypes.c_int64] * 2
        self._fn = fn
        topk = lib.moe_cpu_topk_f32
        topk.restype = ctypes.c_int64
        topk.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
        topk.argtypes += [ctypes.c_void_p, ctypes.c_int]
        self._topk = topk
        norm = lib.moe_cpu_rms_norm_f32
        norm.restype = None
        norm.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 4 + [ctypes.c_void_p]
        norm.argtypes += [ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        self._rms_norm = norm
        qk = lib.moe_cpu_qk_rope_f32
        qk.restype = None
        qk.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 5 + [ctypes.c_int]
        qk.argtypes += [ctypes.c_void_p] * 2 + [ctypes.c_float] * 2 + [ctypes.c_void_p] * 6
        qk.argtypes += [ctypes.c_int]
        self._qk_rope = qk

    def unsupported_weights(self, gate_up_E2ID: torch.Tensor, down_EDI: torch.Tensor) -> str | None:
        """Why ``experts`` cannot take these expert weights as they are, or None."""
        E, two_i, D = gate_up_E2ID.shape
        if any(
            t.device.type != "cpu" or t.dtype != torch.float32 for t in (gate_up_E2ID, down_EDI)
        ):
            return "needs fp32 CPU tensors"
        if down_EDI.shape != (E, D, two_i // 2):
            return f"weights {tuple(gate_up_E2ID.shape)}, {tuple(down_EDI.shape)} do not fit"
        if D % self.vector_width or (two_i // 2) % self.vector_width:
            return f"hidden {D} and expert hidden {two_i // 2} must be multiples of {self.vector_width}"
        if not (gate_up_E2ID.is_contiguous() and down_EDI.is_contiguous()):
            return "expert weights must be contiguous"
        return None

    def unsupported(
        self, x_ND: torch.Tensor, gate_up_E2ID: torch.Tensor, down_EDI: torch.Tensor
    ) -> str | None:
        """Why ``experts`` cannot take these tensors as they are, or None."""
        if x_ND.device.type != "cpu" or x_ND.dtype != torch.float32:
            return "needs fp32 CPU tensors"
        if x_ND.dim() != 2 or x_ND.shape[-1] != gate_up_E2ID.shape[-1]:
            return f"tokens {tuple(x_ND.shape)} do not fit weights {tuple(gate_up_E2ID.shape)}"
        return self.unsupported_weights(gate_up_E2ID, down_EDI)

    def supports(
        self, x_ND: torch.Tensor, gate_up_E2ID: torch.Tensor, down_EDI: torch.Tensor
    ) -> bool:
        """Whether ``experts`` runs on these as they are (and no gradient is wanted)."""
        return (
            not torch.is_grad_enabled() and self.unsupported(x_ND, gate_up_E2ID, down_EDI) is None
        )

    def experts(
        self,
        x_ND: torch.Tensor,
        ids_NK: torch.Tensor,
        w_NK: torch.Tensor,
        gate_up_E2ID: torch.Tensor,
        down_EDI: torch.Tensor,
        cols_min: int | None = None,
        trusted: bool = False,
    ) -> torch.Tensor:
        """sum_k w[n,k] · down(silu(gate(x[n])) · up(x[n])) of expert ids[n,k], shape (N, D).

        Refuses (ValueError, with the reason) what it cannot take, unless ``trusted``: a caller
        that checked the weights once (``unsupported_weights``) and the tokens' dtype, as the
        engine does for every decode step, where the checks cost as much as the arithmetic
        (expert ids are checked in C either way). Tokens go in blocks whose (token, slot)
        outputs fit SCRATCH_BYTES. ``cols_min``: override COLS_MIN (0: token-major form
        always; tests pin both forms).
        """
        N, D = x_ND.shape
        K = ids_NK.shape[1]
        if not trusted:
            why = self.unsupported(x_ND, gate_up_E2ID, down_EDI)
            if why is not None:
                raise ValueError(f"moe_cpu_experts_f32: {why}")
            if ids_NK.dim() != 2 or ids_NK.shape[0] != N or w_NK.shape != ids_NK.shape:
                raise ValueError(
                    f"ids {tuple(ids_NK.shape)} and weights {tuple(w_NK.shape)} for {N} tokens"
                )
        x_ND = x_ND.contiguous()
        ids_NK = ids_NK.to(torch.int64).contiguous()
        w_NK = w_NK.to(torch.float32).contiguous()
        y_ND = torch.empty(N, D)
        block = max(1, SCRATCH_BYTES // (K * D * 4))
        scratch = torch.empty(min(N, block) * K, D)
        for start in range(0, N, block):
            rows = slice(start, min(N, start + block))
            args = (x_ND[rows], ids_NK[rows], w_NK[rows], gate_up_E2ID, down_EDI, y_ND[rows])
            self._experts_block(*args, scratch, cols_min)
        return y_ND

    def _experts_block(self, x_ND, ids_NK, w_NK, gate_up_E2ID, down_EDI, y_ND, scratch, cols_min):
        N, D = x_ND.shape
        K = ids_NK.shape[1]
        E, two_i, _ = gate_up_E2ID.shape
        threads = torch.get_num_threads() if self.openmp else 1
        rc = self._fn(
            x_ND.data_ptr(),
            ids_NK.data_ptr(),
            w_NK.data_ptr(),
            gate_up_E2ID.data_ptr(),
            down_EDI.data_ptr(),
            y_ND.data_ptr(),
            scratch.data_ptr(),
            N,
            K,
            D,
            two_i // 2,
            E,
            threads,
            CHUNK,
            self.cols_min if cols_min is None else cols_min,
        )
        if rc == -1:
            raise ValueError(f"expert ids outside 0..{E - 1}")
        if rc != 0:
            raise MemoryError("moe_cpu_experts_f32 could not allocate its work buffers")

    def topk(self, scores_TE: torch.Tensor, k: int, sorted: bool = True) -> torch.Tensor:
        """Indices of each row's k largest scores, largest first (``torch.topk(...).indices``
        for distinct scores; among equal scores the lower index first). Sorted either way:
        ``sorted=False`` leaves the order free, and this is one valid order."""
        T, E = scores_TE.shape
        if scores_TE.device.type != "cpu" or scores_TE.dtype != torch.float32 or not 0 < k <= 64:
            return torch.topk(scores_TE, k, dim=-1, sorted=sorted).indices
        if k > E:
            raise ValueError(f"top-{k} of {E} experts")
        scores_TE = scores_TE.contiguous()
        ids_TK = torch.empty(T, k, dtype=torch.int64)
        threads = torch.get_num_threads() if self.openmp else 1
        if self._topk(scores_TE.data_ptr(), T, E, k, ids_TK.data_ptr(), threads):
            raise ValueError(f"router scores with fewer than {k} numbers in a row (NaN)")
        return ids_TK

    def rms_norm_into(
        self, x_RC: torch.Tensor, w_GD: torch.Tensor, eps: float, out_RC: torch.Tensor
    ) -> None:
        """out = RMSNorm of each of the G groups of D in every row of x, times w[g]: the
        model's ``F.rms_norm(x.view(R, G, D), (D,), w)``. x and out are fp32 CPU rows with unit
        column stride (a slice of a wider tensor is fine); w is (G, D) contiguous."""
        R, C = x_RC.shape
        G, D = w_GD.shape
        if (
            C != G * D
            or out_RC.shape != (R, C)
            or x_RC.stride(1) != 1
            or out_RC.stride(1) != 1
            or not w_GD.is_contiguous()
            or not x_RC.dtype == out_RC.dtype == w_GD.dtype == torch.float32
        ):
            raise ValueError("rms_norm_into: fp32 rows with unit column stride, w (G, D)")
        threads = torch.get_num_threads() if self.openmp else 1
        self._rms_norm(
            x_RC.data_ptr(),
            R,
            x_RC.stride(0),
            G,
            D,
            w_GD.data_ptr(),
            eps,
            out_RC.data_ptr(),
            out_RC.stride(0),
            threads,
        )

    def qk_rope_store(
        self,
        qkv_NC: torch.Tensor,
        heads: tuple[int, int, int],
        norm: tuple[int, torch.Tensor, torch.Tensor, float],
        clip: float | None,
        rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        kv_layer: torch.Tensor,
        kv_off_N: torch.Tensor,
    ) -> torch.Tensor:
        """Attention's work between the QKV projection and the dot products, in one pass per
        token: QK-norm and clip in the model's order, RoPE, k and v written into the KV cache.

        ``heads`` (H, K, d); ``norm`` (kind 0 none / 1 per head / 2 whole, q weights, k
        weights, eps); ``rope`` (cos table, sin table: (positions, d); positions (N,));
        ``kv_layer`` one layer of the cache (its storage is written at ``kv_off_N``, in floats,
        a (2K, d) block per token). Returns q (N, H, d). The caller keeps offsets in bounds.
        """
        H, K, d = heads
        kind, w_q, w_k, eps = norm
        cos_Sd, sin_Sd, pos_N = rope
        N = qkv_NC.shape[0]
        tensors = (qkv_NC, w_q, w_k, cos_Sd, sin_Sd, kv_layer)
        if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
            raise ValueError("qk_rope_store: needs fp32 CPU tensors")
        if qkv_NC.stride(1) != 1 or qkv_NC.shape[1] < (H + 2 * K) * d:
            raise ValueError("qk_rope_store: rows of a fused projection with unit column stride")
        for t in (w_q, w_k, cos_Sd, sin_Sd):
            if not t.is_contiguous():
                raise ValueError("qk_rope_store: weights and tables must be contiguous")
        pos_N = pos_N.to(torch.int64).contiguous()
        kv_off_N = kv_off_N.to(torch.int64).contiguous()
        q_NHd = torch.empty(N, H, d)
        threads = torch.get_num_threads() if self.openmp else 1
        self._qk_rope(
            qkv_NC.data_ptr(),
            N,
            qkv_NC.stride(0),
            H,
            K,
            d,
            kind,
            w_q.data_ptr(),
            w_k.data_ptr(),
            eps,
            -1.0 if clip is None else clip,
            cos_Sd.data_ptr(),
            sin_Sd.data_ptr(),
            pos_N.data_ptr(),
            q_NHd.data_ptr(),
            kv_layer.data_ptr(),
            kv_off_N.data_ptr(),
            threads,
        )
        return q_NHd


def cache_dir() -> Path:
    return Path(os.environ.get("MOELAB_KERNEL_CACHE") or Path.home() / ".cache/moelab/kernels")


def _cpu_signature() -> str:
    """This CPU's model name and feature flags: what -march=native compiled for."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(dict.fromkeys(keep))
    except OSError:
        return platform.processor() + platform.machine()


def _build(compiler: str, out: Path, openmp: bool, extra: tuple[str, ...] = ()) -> str | None:
    """Compile SOURCE to ``out`` (atomically); the compiler's complaint on failure. ``extra``
    flags: tests build the 8-wide (AVX2) variant on an AVX-512 machine with ``-mno-avx512f``."""
    flags = [*FLAGS, *extra, "-fopenmp"] if openmp else [*FLAGS, *extra]
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".so", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        proc = subprocess.run(
            [compiler, *flags, str(SOURCE), "-o", str(tmp_path), "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            return proc.stderr.strip()[-500:] or f"{compiler} exited {proc.returncode}"
        os.replace(tmp_path, out)
        return None
    finally:
        tmp_path.unlink(missing_ok=True)


def _writable_by_others(path: Path) -> str | None:
    """Why a cached library could have been put there by someone else, or None: loading it
    runs its code, so it and its folder must be ours and not group- or world-writable."""
    if os.name != "posix":
        return None
    for p in (path, path.parent):
        st = p.stat()
        if st.st_uid != os.getuid():
            return f"{p} belongs to another user"
        if st.st_mode & 0o022:
            return f"{p} is writable by group or others"
    return None


@functools.cache
def load() -> ExpertKernel | None:
    """The kernel, built if needed; None (and one log line why) when it cannot be had."""
    if os.environ.get("MOELAB_CPU_KERNEL", "1") == "0":
        log.info("MOELAB_CPU_KERNEL=0: routed experts use the torch path")
        return None
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        log.warning("no C compiler (%s) found: routed experts use the torch path", compiler)
        return None
    source = SOURCE.read_bytes()
    errors = []
    for openmp in (True, False):
        key = hashlib.sha256(
            source + repr((compiler, FLAGS, openmp)).encode() + _cpu_signature().encode()
        ).hexdigest()[:16]
        path = cache_dir() / f"moe_cpu-{key}.so"
        if path.exists() and (unsafe := _writable_by_others(path)):
            log.warning("not loading %s: %s; using the torch path", path, unsafe)
            return None
        if not path.exists():
            try:
                error = _build(compiler, path, openmp)
            except (OSError, subprocess.SubprocessError) as exc:
                error = str(exc)
            if error is not None:
                errors.append(error)
                continue
        try:
            return ExpertKernel(ctypes.CDLL(str(path)), path, openmp)
        except OSError as exc:
            errors.append(str(exc))
    log.warning("the CPU expert kernel did not build: %s; using the torch path", errors[-1])
    return None
