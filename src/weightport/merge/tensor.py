"""The arithmetic of a LoRA merge, reproducing peft's ``merge_and_unload`` on CPU bit for bit.

peft (``peft/tuners/lora/layer.py``), loading an adapter the default way
(``autocast_adapter_dtype=True``), holds ``lora_A`` and ``lora_B`` in float32 whatever dtype
they were saved in, and merges each layer as:

- ``Linear``: ``delta = transpose(B @ A, fan_in_fan_out) * scaling`` in float32, then
  ``W += delta`` — PyTorch computes a mixed-dtype in-place add in float32 and rounds once to
  W's dtype;
- ``Embedding``: ``delta = (B @ A).T * scaling`` in float32, then ``W += delta.to(W.dtype)`` —
  the delta is rounded to W's dtype *before* the add, which rounds again.

``B @ A`` must be PyTorch's own float32 result: sequential fused multiply-adds over the rank,
which :mod:`weightport.merge.kernel` computes with real FMA instructions, fused with the
scaling, the add and (for bf16 and float32 weights) the rounding in one compiled pass. float16
weights take the delta from the kernel and NumPy's conversion
(:mod:`weightport.merge.rounding`), which rounds as PyTorch does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weightport.errors import InvalidArgument
from weightport.merge.kernel import lora_delta, merge_bfloat16, merge_float32
from weightport.merge.rounding import (
    F32,
    FACTOR_DTYPES,
    MERGEABLE_DTYPES,
    add_delta,
    bf16_to_float32,
    float32_to_bf16,
    from_float32,
    storage_dtype,
    to_float32,
)

__all__ = [
    "F32",
    "FACTOR_DTYPES",
    "MERGEABLE_DTYPES",
    "LoraDelta",
    "bf16_to_float32",
    "float32_to_bf16",
    "from_float32",
    "lora_factors",
    "lora_product",
    "storage_dtype",
    "to_float32",
]


def lora_factors(a: F32, b: F32, *, transposed: bool) -> tuple[F32, F32]:
    """``(left, right)`` with ``delta = left @ right`` laid out like the base weight.

    ``a`` is ``lora_A`` (``[r, in]``, or ``lora_embedding_A``), ``b`` is ``lora_B``
    (``[out, r]``). ``transposed`` is peft's ``fan_in_fan_out`` (and always true for
    embeddings): the weight is stored ``[in, out]`` and ``delta = (B @ A).T = A.T @ B.T``.
    Row ``i`` of the weight then needs only row ``i`` of ``left``.
    """
    if transposed:
        return np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
    return np.ascontiguousarray(b), np.ascontiguousarray(a)


def lora_product(left: F32, right: F32) -> F32:
    """``left @ right`` in float32, accumulated as PyTorch's CPU sgemm does.

    Element ``(i, j)`` is ``fma(left[i, r-1], right[r-1, j], … fma(left[i, 1], right[1, j],
    left[i, 0] * right[0, j]))``: one rounding per rank step, in rank order, for every input
    (subnormal, huge and non-finite ones included).
    """
    if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
        raise InvalidArgument(f"LoRA factors do not chain: {left.shape} @ {right.shape}")
    out = np.empty((left.shape[0], right.shape[1]), dtype=np.float32)
    lora_delta(_factor(left), _factor(right), 1.0, 0, out)
    return out


def _factor(x: F32) -> F32:
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass(frozen=True)
class LoraDelta:
    """One weight's LoRA delta, prepared once to merge any rows of that weight.

    ``delta = left @ right * scaling`` laid out like the weight (see :func:`lora_factors`);
    ``round_delta`` is peft's ``Embedding`` behaviour (round the delta to ``dtype`` first).
    """

    left: F32
    right: F32
    scaling: float
    dtype: str
    round_delta: bool

    @classmethod
    def prepare(
        cls, left: F32, right: F32, scaling: float, *, dtype: str, round_delta: bool = False
    ) -> LoraDelta:
        """Check the factors (C-contiguous float32 copies are kept)."""
        if dtype not in MERGEABLE_DTYPES:
            raise InvalidArgument(f"cannot merge a LoRA delta into a {dtype} weight")
        if left.shape[1] != right.shape[0]:
            raise InvalidArgument(f"LoRA factors do not chain: {left.shape} @ {right.shape}")
        return cls(_factor(left), _factor(right), scaling, dtype, round_delta)

    @property
    def nbytes(self) -> int:
        """Memory the prepared factors hold."""
        return self.left.nbytes + self.right.nbytes

    def merge_rows(
        self,
        base_rows: npt.NDArray[np.generic],
        start: int = 0,
        out: npt.NDArray[np.generic] | None = None,
    ) -> npt.NDArray[np.generic]:
        """Merged rows ``[start, start + len(base_rows))``, in :func:`storage_dtype` form.

        ``out`` (optional) receives them and may be ``base_rows`` itself.
        """
        stop = start + base_rows.shape[0]
        if base_rows.shape[1:] != (self.right.shape[1],) or not 0 <= start <= stop <= len(
            self.left
        ):
            raise InvalidArgument(
                f"rows {start}..{stop} of shape {base_rows.shape} do not fit the LoRA delta "
                f"{self.left.shape[0]}x{self.right.shape[1]}"
            )
        if out is None:
            out = np.empty(base_rows.shape, dtype=base_rows.dtype)
        # The compiled loops take C-contiguous rows; others go through a contiguous copy.
        target = out if out.flags.c_contiguous else np.empty(out.shape, dtype=out.dtype)
        base = np.ascontiguousarray(base_rows)
        if self.dtype == "BF16":
            merge_bfloat16(
                base.view(np.uint16),
                self.left,
                self.right,
                self.scaling,
                start,
                target.view(np.uint16),
                round_delta=self.round_delta,
            )
        elif self.dtype == "F32":  # .to(float32) of a float32 delta rounds nothing
            merge_float32(
                base.view(np.float32),
                self.left,
                self.right,
                self.scaling,
                start,
                target.view(np.float32),
            )
        else:
            delta = np.empty(base.shape, dtype=np.float32)
            lora_delta(self.left, self.right, self.scaling, start, delta)
            target[...] = add_delta(base, delta, dtype=self.dtype, round_delta=self.round_delta)
        if target is not out:
            out[...] = target
        return out
