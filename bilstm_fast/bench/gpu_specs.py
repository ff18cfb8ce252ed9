"""One table of GPU facts, each with its source: used by the benchmark's
"% peak" column (``device.device_peak``) and by the per-step cost model
(``tools/cost_model.py``).

Two tables:

* ``GPUS`` — per product: SM count, boost clock, dense peak throughput per
  dtype, HBM bandwidth, L2 size, shared memory per SM / per block. Figures from
  the vendor's datasheets and architecture whitepapers. Tensor-core figures are
  DENSE (NVIDIA's datasheets print the 2:4-sparse figure; halved here) with
  FP32 accumulate, which is what the kernels do.
* ``ARCH`` — per compute capability: the SM's issue width, pipe widths and
  latencies that the cost model needs, each a ``Fact`` naming its source.

``checked`` on a row or fact says how far its figures were confirmed against
a public copy of the source while writing this table: "read" (the number was
read in a public copy of the cited document or a page that reproduces it),
"derived" (computed from read figures, the formula in the note), or
"recalled" (the cited source is where the number comes from, but it was not
re-read here: a lead, to be replaced by a measurement on the GPU). Nothing in
this file was measured by this project.

Units: TFLOP/s (dense), GB/s (1e9 B/s), MHz, bytes, clock cycles.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

KB = 1024
MB = 1024 * 1024


@dataclass(frozen=True)
class GpuSpec:
    """One GPU product. ``fp32`` is the CUDA-core (non-tensor) rate; ``tf32``,
    ``fp16``, ``bf16`` are dense tensor-core rates with FP32 accumulate
    (None: no such unit). ``cc`` is the compute capability as an int (80 = 8.0)."""
    name: str
    pattern: str            # regex on torch.cuda.get_device_name(); first match in GPUS wins
    cc: int
    sms: int
    boost_mhz: float        # the clock the datasheet's FP32 peak implies (see clock_hz)
    fp32: float
    tf32: Optional[float]
    fp16: float
    bf16: Optional[float]
    hbm_gbs: float          # device-memory bandwidth (HBM or GDDR)
    l2_bytes: Optional[int]
    smem_per_sm: Optional[int]
    smem_per_block: Optional[int]   # opt-in maximum for one block (cudaDevAttrMaxSharedMemoryPerBlockOptin)
    source: str
    checked: str = "recalled"
    tensor_mhz: Optional[float] = None  # clock the tensor peaks are quoted at, when lower than boost_mhz
    notes: str = ""

    @property
    def bandwidth_gbs(self) -> float:
        return self.hbm_gbs

    @property
    def clock_hz(self) -> float:
        return self.boost_mhz * 1e6

    def tensor_flops(self, dtype: str) -> Optional[float]:
        """Dense tensor-core FLOP/s for 'fp16' / 'bf16' / 'fp32' (= TF32)."""
        v = {"fp16": self.fp16, "bf16": self.bf16, "fp32": self.tf32, "tf32": self.tf32}[dtype]
        return None if v is None else v * 1e12


_A100_DS = ("NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf) "
            "and NVIDIA Ampere GA100 architecture whitepaper: 108 SMs, 1410 MHz boost, 40 MB L2, "
            "164 KB shared memory per SM")
_H100_DS = ("NVIDIA H100 Tensor Core GPU datasheet (its tensor figures are 'with sparsity', halved here) "
            "and NVIDIA H100 architecture whitepaper: SXM5 132 SMs, PCIe 114 SMs, 50 MB L2, "
            "228 KB shared memory per SM; 1.98 GHz for FP32/FP64, 1.83 GHz for the tensor figures")
_H200_DS = ("NVIDIA H200 Tensor Core GPU datasheet: 141 GB HBM3e at 4.8 TB/s; compute figures those of "
            "the H100 SXM (same GH100 die, 132 SMs)")
_L4_DS = ("NVIDIA L4 Tensor Core GPU datasheet: 30.3 TFLOPS FP32, 120 TF32 / 242 FP16 and BF16 tensor "
          "TFLOPS with sparsity (halved here), 300 GB/s GDDR6, 48 MB L2, 2040 MHz boost, 7424 CUDA cores "
          "(58 SMs of 128)")
_ADA_WP = ("NVIDIA Ada GPU architecture whitepaper (RTX 4090: 128 SMs, 2520 MHz boost, 82.6 TFLOPS FP32, "
           "72 MB L2, 1008 GB/s; FP16/BF16 tensor with FP32 accumulate 165.2 dense on GeForce)")

# Shared memory per SM / opt-in per block by compute capability: CUDA C++
# Programming Guide, "Technical Specifications per Compute Capability"
# (8.0: 164 / 163 KB, 8.6 and 8.9: 100 / 99 KB, 9.0: 228 / 227 KB) — recalled;
# the same per-block limits are in tools/compile_report.py and
# bilstm_fast/ops/triton_lstm.py (SMEM_BYTES), which the compile report checks.
_SMEM = {70: (96 * KB, 96 * KB), 75: (64 * KB, 64 * KB), 80: (164 * KB, 163 * KB),
         86: (100 * KB, 99 * KB), 89: (100 * KB, 99 * KB), 90: (228 * KB, 227 * KB)}


def _gpu(name, pattern, cc, sms, mhz, fp32, tf32, fp16, bf16, bw, l2_mb, source, checked="recalled",
         **kw) -> GpuSpec:
    sm, blk = _SMEM[cc]
    return GpuSpec(name, pattern, cc, sms, mhz, fp32, tf32, fp16, bf16, bw,
                   None if l2_mb is None else int(l2_mb * MB), sm, blk, source, checked, **kw)


# Ordered: the first pattern that matches a device name wins (more specific first).
# The cost model's target GPUs are A100 SXM4 80GB, H100 SXM5, H200 SXM, L4, GeForce RTX 4090.
GPUS: list[GpuSpec] = [
    _gpu("A100 SXM4 80GB", r"A100.*SXM.*80GB", 80, 108, 1410, 19.5, 156, 312, 312, 2039, 40, _A100_DS,
         "read"),
    _gpu("A100 SXM4 40GB", r"A100.*SXM", 80, 108, 1410, 19.5, 156, 312, 312, 1555, 40, _A100_DS, "read"),
    _gpu("A100 PCIe 80GB", r"A100.*(80GB.*PCI|PCI.*80GB)", 80, 108, 1410, 19.5, 156, 312, 312, 1935, 40,
         _A100_DS, "read"),
    _gpu("A100 PCIe 40GB", r"A100.*PCI", 80, 108, 1410, 19.5, 156, 312, 312, 1555, 40, _A100_DS),
    _gpu("H100 NVL", r"H100 NVL", 90, 132, 1785, 60, 417.5, 835.5, 835.5, 3900, 50,
         _H100_DS + "; NVL figures from the H100 NVL product brief"),
    _gpu("H100 PCIe", r"H100.*PCI", 90, 114, 1755, 51, 378, 756.5, 756.5, 2000, 50, _H100_DS, "read"),
    _gpu("H100 SXM5", r"H100", 90, 132, 1980, 67, 494.5, 989.5, 989.5, 3350, 50, _H100_DS, "read",
         tensor_mhz=1830),
    _gpu("H200 SXM", r"H200", 90, 132, 1980, 67, 494.5, 989.5, 989.5, 4800, 50, _H200_DS, "read",
         tensor_mhz=1830,
         notes="L2 size: the H200 datasheet gives none; the H100's 50 MB assumed (a run on the device "
               "reads the real figure from cudaGetDeviceProperties)"),
    _gpu("L40S", r"L40S", 89, 142, 2520, 91.6, 183, 362, 362, 864, 96,
         "NVIDIA L40S GPU datasheet; tensor figures 'with sparsity', halved here"),
    _gpu("L4", r"\bL4\b", 89, 58, 2040, 30.3, 60, 121, 121, 300, 48, _L4_DS, "read"),
    _gpu("A10", r"A10(?![0-9G])", 86, 72, 1695, 31.2, 62.5, 125, 125, 600, 6,
         "NVIDIA A10 Tensor Core GPU datasheet; tensor figures 'with sparsity', halved here"),
    _gpu("T4", r"\bT4\b", 75, 40, 1590, 8.1, None, 65, None, 320, 4,
         "NVIDIA T4 Tensor Core GPU datasheet (FP16/FP32 mixed precision 65 TFLOPS)"),
    _gpu("V100 SXM2", r"V100.*SXM", 70, 80, 1530, 15.7, None, 125, None, 900, 6,
         "NVIDIA Tesla V100 GPU datasheet (tensor performance 125 TFLOPS)"),
    _gpu("V100S PCIe", r"V100S", 70, 80, 1601, 16.4, None, 130, None, 1134, 6, "NVIDIA V100S datasheet"),
    _gpu("V100 PCIe", r"V100", 70, 80, 1380, 14, None, 112, None, 900, 6,
         "NVIDIA Tesla V100 GPU datasheet (tensor performance 112 TFLOPS)"),
    _gpu("RTX A6000", r"RTX A6000", 86, 84, 1800, 38.7, 77.4, 154.8, 154.8, 768, 6,
         "NVIDIA Ampere GA102 GPU architecture whitepaper (RTX A6000, FP32 accumulate, dense)"),
    _gpu("GeForce RTX 3090", r"RTX 3090", 86, 82, 1695, 35.6, 35.6, 71, 71, 936, 6,
         "NVIDIA Ampere GA102 GPU architecture whitepaper (RTX 3090, FP32 accumulate, dense)"),
    _gpu("GeForce RTX 4090", r"RTX 4090", 89, 128, 2520, 82.6, 82.6, 165.2, 165.2, 1008, 72, _ADA_WP,
         "read", notes="the read figures are SMs, clock, FP32, L2 and bandwidth; the tensor figures "
                       "(FP32 accumulate, dense) are recalled from the whitepaper"),
]

# The GPUs the cost model predicts for (issue 12's peak table), by short name.
COST_MODEL_GPUS = {"A100": "A100 SXM4 80GB", "H100": "H100 SXM5", "H200": "H200 SXM",
                   "L4": "L4", "RTX4090": "GeForce RTX 4090"}


def lookup(device_name: str) -> Optional[GpuSpec]:
    """The first GPUS row whose pattern matches a device name (as
    torch.cuda.get_device_name() prints it), or one of COST_MODEL_GPUS's
    short names; None if none matches."""
    full = COST_MODEL_GPUS.get(device_name, device_name)
    for g in GPUS:
        if g.name == full:
            return g
    for g in GPUS:
        if re.search(g.pattern, device_name, flags=re.IGNORECASE):
            return g
    return None


# --------------------------------------------------------- per-architecture
@dataclass(frozen=True)
class Fact:
    value: float
    unit: str
    source: str
    checked: str = "recalled"   # "read", "derived", "recalled" or "assumed" (no source: a modelling choice)


@dataclass(frozen=True)
class ArchFacts:
    """What one SM of a compute capability can do per clock, and how long its
    variable-latency operations take. Fixed-latency arithmetic needs no entry:
    the compiler's stall counts in the SASS control codes already hold it."""
    cc: int
    facts: dict = field(default_factory=dict)   # name -> Fact

    def __getitem__(self, name: str) -> float:
        return self.facts[name].value


_CUDA_GUIDE_TP = ("CUDA C++ Programming Guide, 'Arithmetic Instructions': throughput of native "
                  "arithmetic instructions, results per clock cycle per multiprocessor")
_WP_SM = ("NVIDIA A100 / H100 / Ada architecture whitepapers: the SM has four processing blocks, each "
          "with one warp scheduler issuing one warp instruction per clock")
_JIA_VOLTA = ("Jia et al., 'Dissecting the NVIDIA Volta GPU Architecture via Microbenchmarking' "
              "(arXiv:1804.06826): control-code layout of the 128-bit instruction (stall, yield, "
              "read/write barrier, wait mask, reuse); shared memory 32 banks x 4 B per clock")
_AMPERE_MB = ("Abdelkhalik et al., 'Demystifying the Nvidia Ampere Architecture through "
              "Microbenchmarking and Instruction-level Analysis' (arXiv:2208.11174), A100 memory latencies")
_HOPPER_MB = ("Luo et al., 'Benchmarking and Dissecting the Nvidia Hopper GPU Architecture' "
              "(arXiv:2402.13499), latency tables for H800, A100 and RTX 4090")
_GTC21_L2 = ("Jia (Citadel), GTC 2021 S33322 'Dissecting the Ampere GPU Architecture through "
             "Microbenchmarking': A100's L2 is two partitions; a far-partition hit is ~1.75x slower "
             "than a near one (read in notes on the talk)")
_PTX_NANOSLEEP = "PTX ISA, nanosleep: suspends the thread for approximately the given number of ns"


_A100_L2_BW = Fact(47, "B/clk per SM, all SMs reading L2",
                   "A100 whitepaper: L2 read bandwidth 5120 B/clk for 108 SMs (= 47); "
                   "the same per SM assumed for Ada", "recalled")
_H100_L2_BW = Fact(22.7, "B/clk per SM, all SMs reading L2",
                   "Chips and Cheese, 'Nvidia's H100: Funny L2, and Tons of Bandwidth' (2023): ~5.5 TB/s "
                   "measured L2 bandwidth = 3000 B/clk at 1.83 GHz, over 132 SMs (the per-step estimate "
                   "of the persistent CUDA kernels used it first)", "recalled")


def _common(fp32_lanes: int, tc_fma: float, tc_src: str, l2_near: float, l2_src: str,
            l2_sm_bytes: float, smem_lat: float, hbm_extra: float, far: Fact,
            l2_bw: Fact = _A100_L2_BW) -> dict:
    """Facts shared by the three architectures, with their per-arch values."""
    return {
        "schedulers": Fact(4, "warp instr/clk/SM", _WP_SM, "read"),
        "fp32_lanes": Fact(fp32_lanes, "lanes/clk/SM", _CUDA_GUIDE_TP + " (8.0: 64; 8.6, 8.9, 9.0: 128)"),
        "int_lanes": Fact(64, "lanes/clk/SM", _CUDA_GUIDE_TP + " (32-bit integer add/logic/shift: 64)"),
        "imad_lanes": Fact(64, "lanes/clk/SM", _CUDA_GUIDE_TP + " (32-bit integer multiply-add: 64)"),
        "sfu_lanes": Fact(16, "lanes/clk/SM", _CUDA_GUIDE_TP + " (rsqrt/exp2/log2/sin: 16)"),
        "conv_lanes": Fact(16, "lanes/clk/SM", _CUDA_GUIDE_TP + " (type conversions: 16)"),
        "fp16x2_lanes": Fact(64 if fp32_lanes == 64 else 128, "instr lanes/clk/SM",
                             _CUDA_GUIDE_TP + " (16-bit fp add/mul/fma: 2x the fp32 rate, as half2)"),
        "smem_bytes_clk": Fact(128, "B/clk/SM", _JIA_VOLTA + "; unchanged on Ampere/Ada/Hopper "
                                                             "(32 banks of 4 B)", "recalled"),
        "tc_fma_clk": Fact(tc_fma, "dense fp16 FMA/clk/SM for mma.sync (HMMA)", tc_src, "derived"),
        "l2_gpu_bytes_clk_per_sm": l2_bw,
        "l2_sm_bytes_clk": Fact(l2_sm_bytes, "B/clk/SM, one SM reading L2",
                                "recalled order of magnitude (64 B/clk SM-to-L2 port; the A100 whitepaper's "
                                "5120 B/clk aggregate L2 read bandwidth is 47 B/clk per SM with all 108 "
                                "SMs reading)"),
        "lat_smem": Fact(smem_lat, "cycles", _AMPERE_MB + "; " + _HOPPER_MB + " (shared-memory load: ~23-33)"),
        "lat_l2_near": Fact(l2_near, "cycles", l2_src),
        "l2_far_factor": far,
        "lat_hbm_extra": Fact(hbm_extra, "cycles beyond an L2 hit",
                              _AMPERE_MB + "; " + _HOPPER_MB + " (global-memory miss minus L2 hit)"),
        "lat_atomic": Fact(0, "cycles beyond an L2 hit", "assumed: a global atomic is one L2 round trip", "assumed"),
        "lat_membar": Fact(1.0, "x L2 hit", "assumed: MEMBAR.SC.GPU (__threadfence) waits for an L2 "
                                            "acknowledgement of outstanding writes: one L2 round trip", "assumed"),
        "lat_bar": Fact(24, "cycles", "assumed: __syncthreads of warps that arrive together costs a few "
                                      "tens of cycles", "assumed"),
        "lat_mufu": Fact(20, "cycles", _AMPERE_MB + " (MUFU latency on A100 ~ 18-23)"),
        "lat_conv": Fact(14, "cycles", _AMPERE_MB + " (F2F/I2F/F2I, variable-latency conversions)"),
        "lat_s2r": Fact(24, "cycles", "assumed: special-register read (S2R), similar to a conversion", "assumed"),
        "lat_ldc": Fact(12, "cycles", "assumed: constant-cache hit (LDC)", "assumed"),
        "lat_shfl": Fact(28, "cycles", _AMPERE_MB + " (shfl.sync ~ 28)"),
        "lat_hmma": Fact(32, "cycles", _AMPERE_MB + " (mma.sync m16n8k16 latency ~ 32)"),
        "lat_cctl": Fact(16, "cycles", "assumed: CCTL.IVALL (L1 invalidate after a fence)", "assumed"),
        "lat_reg_read": Fact(8, "cycles", "assumed: a memory instruction's read barrier clears once the "
                                          "LSU has read its register operands", "assumed"),
        "nanosleep_ns": Fact(1.0, "x requested ns", _PTX_NANOSLEEP, "read"),
    }


ARCH: dict[int, ArchFacts] = {
    80: ArchFacts(80, _common(
        64, 1024, "A100 dense FP16 312 TFLOPS / (108 SMs x 1.41 GHz) / 2 = 1024 FMA/clk/SM", 200,
        _AMPERE_MB + " (A100 L2 hit ~ 200)", 64, 23, 270, Fact(1.75, "x", _GTC21_L2, "read"))),
    89: ArchFacts(89, _common(
        128, 512, "L4 dense FP16 121 TFLOPS / (58 SMs x 2.04 GHz) / 2 = 512 FMA/clk/SM (FP32 accumulate; "
                  "the RTX 4090's GeForce rate with FP32 accumulate is half: 165.2 / (128 x 2.52) / 2 = 256, "
                  "see GpuSpec.fp16)", 270, _HOPPER_MB + " (RTX 4090 L2 hit ~ 270)", 64, 30, 300,
        Fact(1.0, "x", "assumed: no near/far L2 partition penalty on AD10x (none reported in the "
                       "sources above)", "assumed"))),
    90: ArchFacts(90, _common(
        128, 1024, "assumed: mma.sync (HMMA) on Hopper at the A100's per-SM-clock rate, 1024 FMA/clk/SM; "
                   "only wgmma (HGMMA) reaches the datasheet's 989.5 TFLOPS = 132 SMs x 1.83 GHz x 2048 FMA; "
                   + _HOPPER_MB + " reports mma.sync well below wgmma on H800", 260,
        _HOPPER_MB + " (H800 L2 hit ~ 260)", 64, 30, 300,
        Fact(1.75, "x", "assumed: the A100's far/near ratio (" + _GTC21_L2 + "); the H100's L2 is two "
                        "partitions too (Chips and Cheese, 'Nvidia's H100: Funny L2, and Tons of Bandwidth', 2023)",
             "assumed"), _H100_L2_BW)),
}

# Residency limits of one SM (the occupancy calculation: how many blocks of a
# compiled kernel an SM holds at once, from its registers, threads and block
# count; shared memory per SM is GpuSpec.smem_per_sm). Used by the cost
# model's Triton SPLIT description, through triton_plan.co_resident_programs.
_CUDA_GUIDE_CC = ("CUDA C++ Programming Guide, 'Technical Specifications per Compute Capability' "
                  "(8.0 and 9.0: 64 K registers, 2048 threads, 32 blocks per SM; 8.6: 1536 threads, "
                  "16 blocks; 8.9: 1536 threads, 24 blocks)")
_SM_LIMITS = {80: (65536, 2048, 32), 89: (65536, 1536, 24), 90: (65536, 2048, 32)}
# One kernel launch per step (the Triton SPLIT path's sync=step, when one
# barrier group per direction does not fit on the GPU at once): the gap
# between two dependent launches on one stream. docs/triton.md's lead is
# 2-5 us between dependent launches (CUDA launch latency) and ~5-20 us of
# Python per eager Triton launch; 2 us, its low end, is assumed: replay of a
# captured CUDA graph (no Python launcher). A GPU run is what settles it.
_LAUNCH_GAP = Fact(2.0, "us per dependent kernel launch (one launch per step)",
                   "assumed: the low end of docs/triton.md's lead of 2-5 us between dependent launches "
                   "(CUDA launch latency), as under CUDA-graph replay; an eager Triton launch adds ~5-20 us "
                   "of Python that is not counted", "assumed")
for _cc, (_regs, _threads, _blocks) in _SM_LIMITS.items():
    ARCH[_cc].facts.update(
        regs_per_sm=Fact(_regs, "32-bit registers/SM", _CUDA_GUIDE_CC, "recalled"),
        threads_per_sm=Fact(_threads, "resident threads/SM", _CUDA_GUIDE_CC, "recalled"),
        blocks_per_sm=Fact(_blocks, "resident blocks/SM", _CUDA_GUIDE_CC, "recalled"),
        launch_gap_us=_LAUNCH_GAP)
del _cc, _regs, _threads, _blocks


def arch_facts(cc: int) -> ArchFacts:
    if cc not in ARCH:
        raise KeyError(f"no architecture facts for compute capability {cc / 10:.1f}; "
                       f"known: {sorted(ARCH)}")
    return ARCH[cc]


def tensor_fma_per_clk(gpu: GpuSpec, dtype: str, wgmma: bool = False) -> float:
    """Dense tensor-core FMA per clock per SM for one dtype ('fp16', 'bf16',
    'tf32'). mma.sync (HMMA) rate from ARCH, scaled by the product's own ratio
    of tensor peak to the architecture's (GeForce FP32-accumulate rates are half);
    wgmma (HGMMA, sm_90) at the datasheet peak's rate."""
    peak = gpu.tensor_flops("fp32" if dtype == "tf32" else dtype)
    if peak is None:
        return 0.0
    mhz = gpu.tensor_mhz or gpu.boost_mhz
    datasheet = peak / (gpu.sms * mhz * 1e6) / 2          # FMA/clk/SM at the datasheet's clock
    if wgmma:
        return datasheet
    arch = arch_facts(gpu.cc)["tc_fma_clk"] * (0.5 if dtype == "tf32" else 1.0)
    return min(arch, datasheet)
