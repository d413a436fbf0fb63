"""The GPUs ptdist plans for: memory, dense peak FLOP/s and the link a GPU talks to the others
of its node over, each from the vendor's datasheet (the `source` of each card).

Datasheets give tensor-core peaks "with sparsity"; the dense peak, what a prompt-tuning step
can use, is half of that, and is what `peak_bf16` holds. fp32 runs get the card's plain FP32
peak: PyTorch does not use TF32 for matmuls unless told to (`torch.backends.cuda.matmul.
allow_tf32` is off by default), and ptdist never turns it on. Link bandwidths are per
direction (a datasheet's "NVLink 600 GB/s" is both directions together): what one GPU
receives in an all-gather.

A card is named by Ray's accelerator type (the `accelerator_type:<T>` resource Ray sets on a
node with that GPU) and its memory: Ray names an A100 "A100" whatever its memory, so a node
type says its GPU memory too (`GPU_MEMORY_RESOURCE`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ptdist.errors import PtdistError

GB = 1e9
# A node type declares its GPUs' memory as this custom resource with the size in its name
# (``"gpu_memory_gb:80": 1``), as Ray marks a GPU type (``"accelerator_type:A100": 1``); a run
# pinned to that memory asks a sliver of it per worker.
GPU_MEMORY_RESOURCE = "gpu_memory_gb"

_A100 = ("NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 TFLOPS dense, FP32 19.5 "
         "TFLOPS; SXM4 NVLink 600 GB/s")
_H100_SXM = ("NVIDIA H100 Tensor Core GPU datasheet (2023), H100 SXM: BF16 1,979 TFLOPS with "
             "sparsity (989 dense), FP32 67 TFLOPS, 80 GB, NVLink 900 GB/s")
_H100_PCIE = ("NVIDIA H100 Tensor Core GPU datasheet (2023), H100 PCIe: BF16 1,513 TFLOPS with "
              "sparsity (756 dense), FP32 51 TFLOPS, 80 GB, PCIe Gen5 128 GB/s")
_H100_NVL = ("NVIDIA H100 Tensor Core GPU datasheet (2023), H100 NVL: BF16 1,671 TFLOPS with "
             "sparsity (835 dense), FP32 60 TFLOPS, 94 GB, PCIe Gen5 128 GB/s (NVLink bridge "
             "to one other card only)")
_H200 = ("NVIDIA H200 Tensor Core GPU datasheet (2024), H200 SXM: BF16 1,979 TFLOPS with "
         "sparsity (989 dense), FP32 67 TFLOPS, 141 GB, NVLink 900 GB/s")
_L40S = ("NVIDIA L40S datasheet (2023): BF16 733 TFLOPS with sparsity (362 dense), FP32 91.6 "
         "TFLOPS, 48 GB, PCIe Gen4 x16 64 GB/s, no NVLink")
_L4 = ("NVIDIA L4 datasheet (2023): BF16 242 TFLOPS with sparsity (121 dense), FP32 30.3 "
       "TFLOPS, 24 GB, PCIe Gen4 x16 64 GB/s")
_A10G = ("NVIDIA A10 datasheet (2021): BF16 250 TFLOPS with sparsity (125 dense), FP32 31.2 "
         "TFLOPS, 24 GB, PCIe Gen4 64 GB/s; AWS publishes no separate peak for its A10G variant "
         "(EC2 G5), so the A10's is used")
_T4 = "NVIDIA T4 datasheet: no BF16 tensor cores; FP32 8.1 TFLOPS, 16 GB, PCIe Gen3 x16 32 GB/s"
_V100 = ("NVIDIA V100 datasheet (SXM2): no BF16 tensor cores; FP32 15.7 TFLOPS, 16/32 GB, "
         "NVLink 300 GB/s")


@dataclass(frozen=True)
class Card:
    """One GPU model: Ray's name for its type, its memory, dense peaks and its link."""

    family: str  # Ray's accelerator type
    memory_gb: float
    peak_bf16: float | None  # dense FLOP/s; None: no bf16 tensor cores
    peak_fp32: float
    link: str
    link_bytes_s: float  # per GPU, per direction
    source: str
    variant: str = ""  # SXM / PCIe / NVL where the family has several

    @property
    def name(self) -> str:
        return f"{self.family}{' ' + self.variant if self.variant else ''} {self.memory_gb:g} GB"

    def peak(self, precision: str) -> float:
        """Dense FLOP/s of the card's matmuls in ``precision`` (bf16 | fp32)."""
        if precision == "bf16":
            if self.peak_bf16 is None:
                raise PtdistError(f"a {self.name} has no bf16 tensor cores; run fp32 on it (a "
                                  "ds_config without bf16) or pin the model to another GPU")
            return self.peak_bf16
        return self.peak_fp32


CARDS = (
    Card("A100", 40, 312e12, 19.5e12, "NVLink 3", 300e9, _A100, "SXM4"),
    Card("A100", 80, 312e12, 19.5e12, "NVLink 3", 300e9, _A100, "SXM4"),
    Card("H100", 80, 989e12, 67e12, "NVLink 4", 450e9, _H100_SXM, "SXM"),
    Card("H100", 80, 756e12, 51e12, "PCIe Gen5 x16", 64e9, _H100_PCIE, "PCIe"),
    Card("H100", 94, 835e12, 60e12, "PCIe Gen5 x16", 64e9, _H100_NVL, "NVL"),
    Card("H200", 141, 989e12, 67e12, "NVLink 4", 450e9, _H200, "SXM"),
    Card("L40S", 48, 362e12, 91.6e12, "PCIe Gen4 x16", 32e9, _L40S),
    Card("L4", 24, 121e12, 30.3e12, "PCIe Gen4 x16", 32e9, _L4),
    Card("A10G", 24, 125e12, 31.2e12, "PCIe Gen4 x16", 32e9, _A10G),
    Card("T4", 16, None, 8.1e12, "PCIe Gen3 x16", 16e9, _T4),
    Card("V100", 16, None, 15.7e12, "NVLink 2", 150e9, _V100, "SXM2"),
    Card("V100", 32, None, 15.7e12, "NVLink 2", 150e9, _V100, "SXM2"),
)
# Ray's memory-specific names for the A100 (ray.util.accelerators: A100-40G, A100-80G).
_ALIASES = {"A100-40G": ("A100", 40), "A100-80G": ("A100", 80)}
# A run planned with no cluster and no GPU pinned is planned on this card.
DEFAULT_CARD = ("A100", 80)


def families() -> list[str]:
    return sorted({c.family for c in CARDS} | set(_ALIASES))


def card(family: str, memory_gb: float | None = None) -> Card:
    """The card of Ray accelerator type ``family`` with ``memory_gb`` of memory (None: the
    family's smallest, the one a run pinned by type alone may land on). Among variants of one
    size (H100 SXM and PCIe are both 80 GB), the datasheet's first: the SXM board the 8-GPU
    cloud nodes carry."""
    family, alias_memory = _ALIASES.get(family, (family, None))
    memory_gb = memory_gb if memory_gb is not None else alias_memory
    known = [c for c in CARDS if c.family == family]
    if not known:
        raise PtdistError(f"the GPU type {family} is not known to the planner; use one of: "
                          f"{', '.join(families())}")
    if memory_gb is None:
        return min(known, key=lambda c: c.memory_gb)
    sized = [c for c in known if c.memory_gb == memory_gb]
    if not sized:
        raise PtdistError(f"no {family} with {memory_gb:g} GB is known to the planner (known: "
                          + ", ".join(f"{c.memory_gb:g} GB" for c in known) + ")")
    return sized[0]


def card_of_device(name: str, memory_bytes: float) -> Card | None:
    """The card torch reports as ``name`` (``torch.cuda.get_device_name``) with
    ``memory_bytes`` in all, telling H100 SXM ("H100 80GB HBM3") from PCIe and NVL; None for a
    card not in the table."""
    upper = name.upper()
    for family in sorted({c.family for c in CARDS}, key=len, reverse=True):
        if family in upper:
            variants = [c for c in CARDS if c.family == family]
            if "PCIE" in upper or "NVL" in upper:
                marked = [c for c in variants if c.variant and c.variant.upper() in upper]
                variants = marked or variants
            else:
                variants = [c for c in variants if c.variant not in ("PCIe", "NVL")]
            # The card whose memory is nearest what the device reports (which is a little
            # under the marketed size: 79.2 GiB for an "80 GB" card).
            return min(variants, key=lambda c: abs(c.memory_gb * GB - memory_bytes))
    return None
