"""The arithmetic of a LoRA merge, reproducing peft's ``merge_and_unload`` on CPU bit for bit.

peft (``peft/tuners/lora/layer.py``), loading an adapter the default way
(``autocast_adapter_dtype=True``), holds ``lora_A`` and ``lora_B`` in float32 whatever dtype
they were saved in, and merges each layer as:

- ``Linear``: ``delta = transpose(B @ A, fan_in_fan_out) * scaling`` in float32, then
  ``W += delta`` — PyTorch computes a mixed-dtype in-place add in float32 and rounds once to
  W's dtype;
- ``Embedding``: ``delta = (B @ A).T * scaling`` in float32, then ``W += delta.to(W.dtype)`` —
  the delta is rounded to W's dtype *before* the add, which rounds again.

``B @ A`` must be PyTorch's own float32 result (:mod:`weightport.merge.fma` reproduces it).
bf16 and fp16 weights go through :mod:`weightport.merge.bracket`, which settles almost every
element from one BLAS product and recomputes the rest exactly; float32 weights, and factors
that are not finite or could overflow, take the exact emulation throughout. Both give the
same bytes. The dtype conversions live in :mod:`weightport.merge.rounding`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weightport.errors import InvalidArgument
from weightport.merge.bracket import Bracket, prepare_bracket
from weightport.merge.fma import F64, lora_product
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
    "F64",
    "FACTOR_DTYPES",
    "MERGEABLE_DTYPES",
    "LoraDelta",
    "bf16_to_float32",
    "float32_to_bf16",
    "from_float32",
    "lora_factors",
    "lora_product",
    "merge_rows",
    "merge_tensor",
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
    bracket: Bracket | None  # None: the exact path for every element

    @classmethod
    def prepare(
        cls, left: F32, right: F32, scaling: float, *, dtype: str, round_delta: bool = False
    ) -> LoraDelta:
        """Check the factors and prepare the fast path where it applies."""
        if dtype not in MERGEABLE_DTYPES:
            raise InvalidArgument(f"cannot merge a LoRA delta into a {dtype} weight")
        if left.shape[1] != right.shape[0]:
            raise InvalidArgument(f"LoRA factors do not chain: {left.shape} @ {right.shape}")
        bracket = prepare_bracket(left, right, scaling, dtype=dtype, round_delta=round_delta)
        return cls(left, right, scaling, dtype, round_delta, bracket)

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
        if self.bracket is not None:
            self.bracket.merge_rows(base_rows, start, out)
            return out
        # torch multiplies a float32 tensor by a Python scalar in float32.
        delta = lora_product(self.left[start:stop], self.right)
        with np.errstate(over="ignore", invalid="ignore"):
            np.multiply(delta, np.float32(self.scaling), out=delta)
        out[...] = add_delta(base_rows, delta, dtype=self.dtype, round_delta=self.round_delta)
        return out


def merge_rows(
    base_rows: npt.NDArray[np.generic],
    left_rows: F32,
    right: F32,
    scaling: float,
    *,
    dtype: str,
    round_delta: bool = False,
) -> npt.NDArray[np.generic]:
    """Rows of a merged weight: ``base_rows + (left_rows @ right) * scaling``, peft's rounding.

    ``base_rows`` is in :func:`storage_dtype` form and the result is too. ``round_delta``
    rounds the delta to ``dtype`` before adding (peft's ``Embedding`` does this; ``Linear``
    does not). To merge a weight block by block, prepare a :class:`LoraDelta` once instead.
    """
    delta = LoraDelta.prepare(left_rows, right, scaling, dtype=dtype, round_delta=round_delta)
    return delta.merge_rows(base_rows)


def merge_tensor(
    weight: npt.NDArray[np.generic],
    a: F32,
    b: F32,
    scaling: float,
    *,
    dtype: str,
    fan_in_fan_out: bool = False,
    embedding: bool = False,
) -> npt.NDArray[np.generic]:
    """The merged weight of one layer, bit-identical to peft's ``merge_and_unload`` on CPU.

    ``weight`` is the base weight in :func:`storage_dtype` form (bfloat16 as ``uint16``);
    ``a``/``b`` are ``lora_A``/``lora_B`` (or ``lora_embedding_A``/``_B``) as float32.
    """
    left, right = lora_factors(a, b, transposed=fan_in_fan_out or embedding)
    if weight.shape != (left.shape[0], right.shape[1]):
        raise InvalidArgument(
            f"LoRA delta {left.shape[0]}x{right.shape[1]} does not fit weight {weight.shape}"
        )
    return merge_rows(weight, left, right, scaling, dtype=dtype, round_delta=embedding)
