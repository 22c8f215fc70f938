"""A PEFT LoRA adapter: its ``adapter_config.json`` and the names in its weights file.

Only plain LoRA is accepted — the variants whose merged weights are not ``W + s · B @ A``
(DoRA, LoRA bias, aLoRA, QALoRA, layer replication, initialisations that rewrite the base
weights such as PiSSA/OLoRA/CorDA/LoftQ, …) are refused with a clear
:class:`~weightport.errors.InvalidArgument` rather than merged wrongly. Options this module
does not know are refused too when they are set, so a new peft feature cannot slip through.

Tensor names follow what peft's ``save_pretrained`` writes (checked against peft 0.21):
``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` for linear layers,
``base_model.model.<module>.lora_embedding_A`` / ``_B`` for embeddings, and for
``modules_to_save`` (and trained biases) the full replacement tensor under its base name,
``base_model.model.<module>.<param>`` (older writers: ``<module>.modules_to_save.default.<param>``).
When an embedding is targeted peft also saves the whole embedding weight as
``base_model.model.<module>.base_layer.weight``; loading it replaces the base weight.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from weightport.errors import InvalidArgument

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."

# User-supplied regular expressions run against short module names; bound their size.
_MAX_PATTERN = 512

# Options that do not change the merged weights, or whose default/empty value is harmless.
_IGNORED_OPTIONS = frozenset(
    {
        "peft_type",
        "task_type",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "auto_mapping",
        "lora_dropout",
        "exclude_modules",
        "layers_to_transform",
        "layers_pattern",
        "megatron_core",
        "qalora_group_size",
        "loftq_config",
        "eva_config",
        "corda_config",
        "lora_ga_config",
        "ensure_weight_tying",
        "bias",
        "init_lora_weights",
    }
)
_PARSED_OPTIONS = frozenset(
    {
        "r",
        "lora_alpha",
        "use_rslora",
        "fan_in_fan_out",
        "rank_pattern",
        "alpha_pattern",
        "target_modules",
        "modules_to_save",
    }
)
# Readable reasons for the known options we refuse when set.
_REFUSED_OPTIONS = {
    "use_dora": "DoRA adapters are not supported (their merge rescales by a magnitude vector)",
    "lora_bias": "LoRA adapters with lora_bias are not supported",
    "layer_replication": "adapters with layer_replication are not supported",
    "use_qalora": "QALoRA adapters are not supported",
    "use_bdlora": "BD-LoRA adapters are not supported",
    "alora_invocation_tokens": "activated LoRA (aLoRA) adapters cannot be merged",
    "target_parameters": "LoRA on bare parameters (target_parameters) is not supported",
    "trainable_token_indices": "adapters with trainable_token_indices are not supported",
    "megatron_config": "Megatron-parallel LoRA adapters are not supported",
    "arrow_config": "Arrow routing adapters are not supported",
}
# init_lora_weights values that rewrite the base weights when peft loads the adapter, so the
# stored base is not the base the adapter was trained against.
_BASE_REWRITING_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga", "mica")


@dataclass(frozen=True)
class AdapterConfig:
    """The parts of a LoRA ``adapter_config.json`` that decide the merged weights."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    #: (pattern, rank) pairs in file order; the first matching pattern wins, as in peft.
    rank_pattern: tuple[tuple[str, int], ...] = ()
    alpha_pattern: tuple[tuple[str, float], ...] = ()
    #: A list of module-name suffixes, one regular expression (full match), or None.
    target_modules: tuple[str, ...] | str | None = None
    modules_to_save: tuple[str, ...] = ()
    bias: str = "none"
    base_model_name_or_path: str | None = None

    @classmethod
    def from_json(cls, data: bytes) -> AdapterConfig:
        """Parse and check ``adapter_config.json``; refuse anything but plain LoRA."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidArgument(f"{ADAPTER_CONFIG_FILE} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise InvalidArgument(f"{ADAPTER_CONFIG_FILE} must be a JSON object")
        peft_type = doc.get("peft_type")
        if peft_type != "LORA":
            raise InvalidArgument(f"only LoRA adapters can be merged, not peft_type={peft_type!r}")
        _refuse_variants(doc)

        r = _positive_int(doc.get("r"), "r")
        alpha = _number(doc.get("lora_alpha", 8), "lora_alpha")
        bias = doc.get("bias", "none") or "none"
        if bias not in ("none", "all", "lora_only"):
            raise InvalidArgument(f"unknown bias setting {bias!r} in {ADAPTER_CONFIG_FILE}")
        base = doc.get("base_model_name_or_path")
        return cls(
            r=r,
            lora_alpha=alpha,
            use_rslora=_bool(doc.get("use_rslora", False), "use_rslora"),
            fan_in_fan_out=_bool(doc.get("fan_in_fan_out", False), "fan_in_fan_out"),
            rank_pattern=tuple(
                (_pattern(k), _positive_int(v, f"rank_pattern[{k!r}]"))
                for k, v in _mapping(doc.get("rank_pattern"), "rank_pattern").items()
            ),
            alpha_pattern=tuple(
                (_pattern(k), _number(v, f"alpha_pattern[{k!r}]"))
                for k, v in _mapping(doc.get("alpha_pattern"), "alpha_pattern").items()
            ),
            target_modules=_target_modules(doc.get("target_modules")),
            modules_to_save=_names(doc.get("modules_to_save"), "modules_to_save"),
            bias=bias,
            base_model_name_or_path=base if isinstance(base, str) else None,
        )

    def rank_for(self, module: str) -> int:
        """The configured rank of ``module`` (peft's ``rank_pattern`` rule)."""
        for pattern, rank in self.rank_pattern:
            if _pattern_matches(pattern, module):
                return rank
        return self.r

    def alpha_for(self, module: str) -> float:
        """The configured ``lora_alpha`` of ``module`` (peft's ``alpha_pattern`` rule)."""
        for pattern, alpha in self.alpha_pattern:
            if _pattern_matches(pattern, module):
                return alpha
        return self.lora_alpha

    def scaling_for(self, module: str) -> float:
        """peft's ``scaling``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        r = self.rank_for(module)
        alpha = self.alpha_for(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def targets(self, module: str) -> bool:
        """Whether ``target_modules`` selects ``module`` (peft's rule; None/"all-linear": all)."""
        if self.target_modules is None or self.target_modules == "all-linear":
            return True
        if isinstance(self.target_modules, str):
            return _fullmatch(self.target_modules, module)
        return any(module == t or module.endswith("." + t) for t in self.target_modules)

    def saves_module(self, module: str) -> bool:
        """Whether ``module`` is one of ``modules_to_save`` (peft: a suffix match)."""
        return any(module.endswith(name) for name in self.modules_to_save)


class Role(enum.Enum):
    """What an adapter tensor is for."""

    LORA_A = "lora_A"
    LORA_B = "lora_B"
    EMBEDDING_A = "lora_embedding_A"
    EMBEDDING_B = "lora_embedding_B"
    #: A whole tensor that replaces the base's (modules_to_save, trained biases).
    REPLACEMENT = "replacement"
    #: The weight under a LoRA layer, saved whole (peft saves targeted embedding layers so a
    #: resized vocabulary survives); it replaces the base tensor before the delta is added.
    BASE_LAYER = "base_layer"


@dataclass(frozen=True)
class AdapterKey:
    """An adapter tensor name, resolved: its role, its module, and the base tensor it changes."""

    role: Role
    module: str
    base_tensor: str


_LORA = re.compile(r"(?P<module>.+)\.lora_(?P<which>[AB])(?:\.default)?\.weight")
_EMBEDDING = re.compile(r"(?P<module>.+)\.lora_embedding_(?P<which>[AB])(?:\.default)?")
_BASE_LAYER = re.compile(r"(?P<module>.+)\.base_layer\.(?P<param>[^.]+)")
_SAVED_COPY = re.compile(r"(?P<module>.+)\.modules_to_save(?:\.default)?\.(?P<param>[^.]+)")
_PLAIN = re.compile(r"(?P<module>.+)\.(?P<param>[^.]+)")


def parse_adapter_key(key: str) -> AdapterKey:
    """Map an adapter weights-file tensor name to the base tensor it changes.

    The one place that knows peft's naming. Raises InvalidArgument for names of unsupported
    variants (DoRA magnitudes, LoRA biases, trainable tokens) or outside ``base_model.model.``.
    """
    if not key.startswith(KEY_PREFIX):
        raise InvalidArgument(f"adapter tensor {key!r} does not start with {KEY_PREFIX!r}")
    name = key[len(KEY_PREFIX) :]
    if m := _LORA.fullmatch(name):
        role = Role.LORA_A if m["which"] == "A" else Role.LORA_B
        return AdapterKey(role, m["module"], m["module"] + ".weight")
    if m := _EMBEDDING.fullmatch(name):
        role = Role.EMBEDDING_A if m["which"] == "A" else Role.EMBEDDING_B
        return AdapterKey(role, m["module"], m["module"] + ".weight")
    if "lora_magnitude_vector" in name:
        raise InvalidArgument(f"adapter tensor {key!r} belongs to DoRA, which is not supported")
    if ".lora_" in name or "trainable_tokens" in name or ".token_adapter." in name:
        raise InvalidArgument(f"adapter tensor {key!r} is of an unsupported LoRA variant")
    if m := _BASE_LAYER.fullmatch(name):
        return AdapterKey(Role.BASE_LAYER, m["module"], f"{m['module']}.{m['param']}")
    if m := _SAVED_COPY.fullmatch(name):
        return AdapterKey(Role.REPLACEMENT, m["module"], f"{m['module']}.{m['param']}")
    if m := _PLAIN.fullmatch(name):
        return AdapterKey(Role.REPLACEMENT, m["module"], name)
    raise InvalidArgument(f"adapter tensor {key!r} names no module")


# -- parsing helpers ----------------------------------------------------------------------


def _refuse_variants(doc: dict[str, Any]) -> None:
    for option, reason in _REFUSED_OPTIONS.items():
        if doc.get(option):
            raise InvalidArgument(f"{reason} ({option}={doc[option]!r})")
    init = doc.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise InvalidArgument(
            f"init_lora_weights={init!r} rewrites the base weights when the adapter is loaded; "
            "convert the adapter to a plain LoRA first (peft save_pretrained with "
            "path_initial_model_for_weight_conversion)"
        )
    for option, value in doc.items():
        if option in _IGNORED_OPTIONS or option in _PARSED_OPTIONS or option in _REFUSED_OPTIONS:
            continue
        if value not in (None, False, "", [], {}):
            raise InvalidArgument(
                f"unknown adapter option {option}={value!r}; refusing to merge an adapter "
                "whose effect on the weights is not known"
            )


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgument(f"{what} must be a positive integer, not {value!r}")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{what} must be a finite number, not {value!r}")
    return value  # int stays int: peft divides the JSON value as loaded


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} must be true or false, not {value!r}")
    return value


def _mapping(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be an object")
    return value


def _names(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgument(f"{what} must be a list of module names")
    return tuple(value)


def _target_modules(value: object) -> tuple[str, ...] | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value if value == "all-linear" else _pattern(value)
    return _names(value, "target_modules")


def _pattern(pattern: str) -> str:
    if len(pattern) > _MAX_PATTERN:
        raise InvalidArgument(f"pattern longer than {_MAX_PATTERN} characters")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidArgument(f"invalid regular expression {pattern!r}: {exc}") from exc
    return pattern


def _pattern_matches(pattern: str, module: str) -> bool:
    # peft.utils.other.get_pattern_key: the pattern must match a dotted suffix of the name.
    return re.match(rf"(.*\.)?({pattern})$", module) is not None


def _fullmatch(pattern: str, module: str) -> bool:
    return re.fullmatch(pattern, module) is not None
