"""``PeftModel``: a GPT plus what one fine-tuning method trains; saving and loading adapters.

Every method splits the parameters into a frozen part and a trained part, theta = (theta_0, phi),
and minimizes the loss over phi alone:  phi* = argmin_phi L(f(x; theta_0, phi)). Full
fine-tuning trains everything; the frozen baseline only a head; BitFit (Ben Zaken et al., 2022)
the biases inside theta_0; Prefix-Tuning (Li & Liang, 2021) and Prompt-Tuning (Lester et al.,
2021) add new vectors phi and keep all of theta_0 fixed, so one frozen model serves many tasks.

    model = GPT(GPTConfig(vocab_size=1024))                 # d 128, 4 layers, context 128
    peft_model = get_peft_model(model, BitFitConfig())      # freezes model's other parameters
    peft_model.print_trainable_parameters()
    # trainable params: 5,760 || all params: 940,800 || trainable%: 0.6122
    out = peft_model(ids, attention_mask)                   # GPTOutput; logits at the real tokens
    loss = peft_model.lm_loss(out.logits, labels)
    peft_model.save_pretrained("runs/bitfit")               # the trained tensors and a JSON config
    peft_model = PeftModel.from_pretrained(fresh_model, "runs/bitfit")  # checks the base model

A ``PeftModel`` is itself a model: same call signature and output as ``GPT`` (logits only at the
real token positions, whatever the method adds in front), ``lm_loss``, ``named_parameters`` (all
of them; ``requires_grad`` tells which train), ``train()`` / ``eval()``, ``config`` (the base
model's) and ``base_model``. There is one ``forward`` for every method; a method changes what
the base model computes through two hooks:

    virtual_inputs(real_tokens)  the GPT.forward inputs that put its virtual tokens in front:
                                 ``prompt_embeds`` (1, P, d), or ``kv_prefix`` (L pairs of
                                 (1, H, P, d_h)) with, for an infix, ``kv_prefix_start`` and
                                 ``position_ids``; none by default
    effective_weights()          a context in which the base model computes with changed weights
                                 (a random subset's W + delta); the base model's own by default

Virtual tokens are injected only when a sequence starts (``cache is None``); with a cache they are
already in it and the call passes straight through.

Freezing works through ``requires_grad``: a frozen parameter receives no gradient, so backward
skips its weight-gradient matmul, and an optimizer built from ``parameters()`` keeps state only
for the trainable ones (``tinypft.optim`` filters on ``requires_grad``). ``get_peft_model`` sets
the flags on the base model in place, like Hugging Face PEFT.

One base model, several PeftModels: any number of methods that train none of the base model's
parameters (prefixes, prompts, a random subset without a head) share it, each training only its
own tensors. A method that trains base parameters (full fine-tuning, BitFit, a head) cannot
share it: its flags would freeze or unfreeze what the others train, and its updates would change
the base the others read. When a new PeftModel is built on a base model that such a conflicting
PeftModel already wraps, the new one takes the base model over and the older one is retired: its
``forward``, ``save_pretrained`` and ``set_adapter_trainable`` raise, naming the newer model.
Refusing the new wrap instead would break the common ``run.model =
get_peft_model(run.model.base_model, other_config)`` (the old wrapper is alive during the
call); a copy of the base per wrapper would make ``model`` silently differ from what trains.
To keep both: ``get_peft_model(model.copy(), config)``.

Adapter files (a directory, as Hugging Face PEFT's ``save_pretrained`` writes):

    adapter_model.safetensors   only the tensors the method trains
    adapter_config.json         the method's config, inference_mode, and a fingerprint of the base
                                model (config, parameter shapes, SHA-256 of the frozen weights)

``PeftModel.from_pretrained`` refuses a base model that differs in any of those, naming the
difference.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import weakref
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Tensor
from ..model import GPT, GPTOutput, KVCache, check_attention_mask
from ..nn import Module, Parameter
from ..serialization import atomic_write_json, load_tensors, read_json, save_tensors, sha256_file
from .config import PeftConfig

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_FORMAT = "tinypft-adapter"
BASE_PREFIX = "base_model."

# base model -> the PeftModels alive on it (weak both ways: deleting a wrapper unregisters it)
_WRAPPERS: weakref.WeakKeyDictionary[GPT, weakref.WeakSet[PeftModel]] = weakref.WeakKeyDictionary()


class PeftModel(Module):
    """A base GPT plus what one fine-tuning method trains.

    Subclasses choose the base parameters that train in ``trained_base_names``, add their own
    modules (a prefix encoder, a soft prompt), whose parameters train too, and change the forward
    pass through ``virtual_inputs`` or ``effective_weights``. ``tinypft.peft.mapping`` says which
    subclass serves which config.
    """

    def __init__(self, base_model: GPT, peft_config: PeftConfig):
        super().__init__()
        self.base_model = base_model
        self.peft_config = peft_config
        self.trained_base: frozenset[str] = frozenset(self.trained_base_names(base_model))
        self.superseded_by: str | None = None  # set when a newer PeftModel takes the base model over
        self._retired: list[weakref.ref[PeftModel]] = self._claim_base()
        for name, p in base_model.named_parameters():
            p.requires_grad = name in self.trained_base

    # ------------------------------------------------------------------ sharing the base model
    def _claim_base(self) -> list[weakref.ref[PeftModel]]:
        """Register on the base model and retire every live PeftModel on it that this one conflicts
        with (either of the two trains base parameters); returns (weak references to) those."""
        wrappers = _WRAPPERS.setdefault(self.base_model, weakref.WeakSet())
        retired = [
            w for w in wrappers if w.superseded_by is None and (w.trained_base or self.trained_base)
        ]
        for w in retired:
            w.superseded_by = type(self).__name__
        wrappers.add(self)
        return [weakref.ref(w) for w in retired]

    def _release_base(self) -> None:
        """Undo ``_claim_base`` (a construction that is refused after all): unregister, and give the
        PeftModels it retired their base model back."""
        _WRAPPERS.get(self.base_model, weakref.WeakSet()).discard(self)
        for ref in self._retired:
            w = ref()
            if w is not None:
                w.superseded_by = None
        self._retired = []

    def _check_current(self, action: str) -> None:
        """Raise when a newer PeftModel took this one's base model over (see the module docstring)."""
        if self.superseded_by is not None:
            raise RuntimeError(
                f"{type(self).__name__}.{action}: its base model was wrapped again, as a "
                f"{self.superseded_by}, which changed which base parameters train; this model no longer "
                "trains what it was built for. Use the newer model, or keep both by wrapping a copy: "
                "get_peft_model(model.copy(), config)"
            )

    # ------------------------------------------------------------------ what trains
    def trained_base_names(self, base_model: GPT) -> list[str]:
        """Names of the base model's parameters this method trains (none by default)."""
        return []

    def initialize_adapter(self) -> None:
        """Give the method's own parameters the starting values its config asks for (a soft
        prompt's init, a prefix's real words). ``get_peft_model`` calls it; ``from_pretrained``
        does not, since the values come from the file. Nothing to do by default."""

    def adapter_parameters(self) -> dict[str, Parameter]:
        """The parameters the method trains, by full name, whether or not they require grad now
        (an adapter loaded for inference is frozen, but these are still what it stores)."""
        return {
            name: p
            for name, p in self.named_parameters()
            if not name.startswith(BASE_PREFIX) or name[len(BASE_PREFIX) :] in self.trained_base
        }

    def set_adapter_trainable(self, trainable: bool) -> None:
        """Unfreeze (True) or freeze (False) the method's parameters; the rest stays frozen."""
        self._check_current("set_adapter_trainable()")
        for p in self.adapter_parameters().values():
            p.requires_grad = trainable

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all): scalars in the parameters that require grad, and in every parameter
        (base model and adapter together, shared tensors once; as Hugging Face PEFT counts)."""
        trainable = sum(p.size for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.size for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: N || all params: M || trainable%: X.XXXX`` (Hugging Face's line)."""
        trainable, total = self.get_nb_trainable_parameters()
        share = 100 * trainable / total
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}")

    # ------------------------------------------------------------------ the model contract
    @property
    def config(self) -> Any:
        """The base model's GPTConfig (the method's own config is ``peft_config``)."""
        return self.base_model.config

    @property
    def num_virtual_tokens(self) -> int:
        """P, the virtual tokens the method puts in front of every sequence (0 by default)."""
        return 0

    def virtual_inputs(self, real_tokens: np.ndarray) -> dict[str, Any]:
        """The hook for virtual tokens: extra keyword arguments of ``GPT.forward`` for a sequence
        that starts now, ``prompt_embeds`` or ``kv_prefix`` (and, for an infix,
        ``kv_prefix_start`` and ``position_ids``). ``real_tokens`` (B, T) is True at the real
        (not padding) tokens. A method whose caller places the virtual tokens takes that placement
        as keyword arguments too (Prefix-Tuning's ``infix_start``). None by default."""
        return {}

    def effective_weights(self) -> AbstractContextManager[Any]:
        """The hook for changed weights: a context inside which the base model computes with the
        method's weights (a random subset's W + delta). The base model's own by default."""
        return nullcontext()

    def forward(
        self,
        ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        position_ids: np.ndarray | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        **placement: Any,
    ) -> GPTOutput:
        """Run the base model as the method changes it; logits cover the real tokens only.

        ids (B, T); attention_mask (B, T), or (B, P + T) with ones over the P virtual tokens in
        front (Hugging Face's form). With a ``cache`` the virtual tokens are already in it (they
        went in when the sequence started) and the call passes straight through. ``placement``
        goes to ``virtual_inputs`` (Prefix-Tuning's infix: ``infix_start``).
        """
        self._check_current("forward()")
        with self.effective_weights():
            if cache is not None:
                if placement:
                    raise ValueError(
                        f"{type(self).__name__}: {sorted(placement)} place virtual tokens when a sequence "
                        "starts; with a cache they are already in it"
                    )
                return self.base_model(
                    ids, attention_mask, position_ids=position_ids, cache=cache, use_cache=use_cache
                )
            ids = self.base_model._check_ids(ids)  # (B, T) integers in range, else an error saying why
            mask = self.token_mask(attention_mask, ids, self.num_virtual_tokens)  # (B, T) or None
            real = np.ones(np.shape(ids), bool) if mask is None else np.asarray(mask).astype(bool)  # (B, T)
            inputs = self.virtual_inputs(real, **placement)
            if "position_ids" in inputs and position_ids is not None:
                raise ValueError(
                    f"{type(self).__name__} computes the positions itself; do not pass position_ids"
                )
            inputs.setdefault("position_ids", position_ids)
            out = self.base_model(ids, mask, use_cache=use_cache, **inputs)
        if out.cache is not None and "kv_prefix_start" in inputs:  # every later token comes after an infix
            out.cache.next_position = real.sum(axis=1) + self.num_virtual_tokens
        return out

    def lm_loss(self, logits: Tensor, labels: np.ndarray) -> Tensor:
        """Next-token cross-entropy on the real positions (labels aligned with ids; -100 is skipped)."""
        return self.base_model.lm_loss(logits, labels)

    def token_mask(
        self, attention_mask: np.ndarray | None, ids: np.ndarray, num_virtual: int
    ) -> np.ndarray | None:
        """The mask of the real tokens (B, T), boolean. A Hugging Face-style mask that also covers
        the ``num_virtual`` virtual tokens in front (B, P + T) is accepted: its first P columns must
        be 1. Values other than 0/1 (or booleans) are refused (``check_attention_mask``)."""
        if attention_mask is None:
            return None
        mask = np.asarray(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
        B, T = np.shape(ids)
        who = type(self).__name__
        if mask.shape == (B, T):
            return check_attention_mask(mask, (B, T), who)
        if num_virtual and mask.shape == (B, num_virtual + T):
            mask = check_attention_mask(mask, mask.shape, who)
            if not mask[:, :num_virtual].all():
                raise ValueError(
                    f"{type(self).__name__}: the {num_virtual} virtual-token columns of the mask must be 1"
                )
            return mask[:, num_virtual:]
        expected = f"(B, T) = {(B, T)}" + (f" or (B, P + T) = {(B, num_virtual + T)}" if num_virtual else "")
        raise ValueError(f"{type(self).__name__}: attention_mask has shape {mask.shape}, expected {expected}")

    # ------------------------------------------------------------------ saving
    def adapter_state_dict(self) -> dict[str, np.ndarray]:
        """The tensors inference needs (copies), by full parameter name: the trained parameters,
        or their inference form when the method trains through a reparameterization (Prefix-Tuning)."""
        return self.trained_state_dict()

    def trained_state_dict(self) -> dict[str, np.ndarray]:
        """The trained parameters as they are (copies), by full name: what resuming training needs."""
        return {name: p.data.copy() for name, p in self.adapter_parameters().items()}

    def save_pretrained(self, directory: str | Path, include_reparam: bool = False) -> None:
        """Write ``adapter_model.safetensors`` (only what the method trains) and ``adapter_config.json``.

        Both files are written atomically; the JSON (written last) records the SHA-256 of the
        tensor file, so a directory holding a mismatched pair is detected at load time.
        ``include_reparam`` keeps a reparameterization (Prefix-Tuning's MLP) so training can resume;
        without it the adapter is stored in its inference form (``inference_mode: true``).
        """
        self._check_current("save_pretrained()")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = self.trained_state_dict() if include_reparam else self.adapter_state_dict()
        save_tensors(directory / ADAPTER_WEIGHTS_NAME, tensors, metadata={"format": ADAPTER_FORMAT})
        record = {
            "format": ADAPTER_FORMAT,
            "peft_config": self.peft_config.to_dict(),
            "inference_mode": not include_reparam,
            "base_model": base_model_fingerprint(self.base_model, frozen=self.frozen_base_names()),
            "tensors": {name: list(array.shape) for name, array in tensors.items()},
            "weights_sha256": sha256_file(directory / ADAPTER_WEIGHTS_NAME),
        }
        atomic_write_json(directory / ADAPTER_CONFIG_NAME, record)

    def frozen_base_names(self) -> list[str]:
        """Base parameters the method never changes: the fingerprint hashes their bytes."""
        return [name for name, _ in self.base_model.named_parameters() if name not in self.trained_base]

    def stored_bytes_per_task(self, include_reparam: bool = False) -> AdapterSize:
        """What one task costs on disk: the adapter files this model would write."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, include_reparam=include_reparam)
            return adapter_bytes(tmp)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, base_model: GPT, directory: str | Path, is_trainable: bool = False) -> PeftModel:
        """Rebuild the PeftModel saved in ``directory`` on ``base_model``.

        Raises a ValueError naming the difference when ``base_model`` is not the model the adapter
        was trained on (config, parameter shapes, or frozen weights), or when the files do not
        belong together. The adapter's parameters are frozen (inference) unless ``is_trainable``.
        Methods whose adapter is made of base parameters (BitFit, full fine-tuning, a head) write
        them into ``base_model``.
        """
        from .mapping import PEFT_METHODS, config_from_dict  # here: mapping.py imports this module

        directory = Path(directory)
        record = read_adapter_config(directory / ADAPTER_CONFIG_NAME)
        if sha256_file(directory / ADAPTER_WEIGHTS_NAME) != record["weights_sha256"]:
            raise ValueError(
                f"{directory}: {ADAPTER_WEIGHTS_NAME} does not belong to this {ADAPTER_CONFIG_NAME}"
            )
        try:
            peft_config = config_from_dict(record["peft_config"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{directory / ADAPTER_CONFIG_NAME}: peft_config: {error}") from None
        model_class = PEFT_METHODS[type(peft_config)]
        if not issubclass(model_class, cls):
            raise TypeError(f"{cls.__name__}.from_pretrained: {directory} holds a {model_class.__name__}")
        saved_base = record["base_model"]
        mismatch = _structure_mismatch(saved_base, base_model)
        if mismatch:  # config and shapes first: building the model needs them
            raise ValueError(f"from_pretrained({directory}): {mismatch}")

        flags = {name: p.requires_grad for name, p in base_model.named_parameters()}
        peft_model = model_class(base_model, peft_config)
        mismatch = _weights_mismatch(saved_base, base_model, peft_model.frozen_base_names())
        if mismatch:
            peft_model._release_base()  # leave the refused base model as it was
            for name, p in base_model.named_parameters():
                p.requires_grad = flags[name]
            raise ValueError(f"from_pretrained({directory}): {mismatch}")
        expected = {name: (tuple(shape), None) for name, shape in record["tensors"].items()}
        peft_model.load_adapter_tensors(load_tensors(directory / ADAPTER_WEIGHTS_NAME, expected))
        peft_model.set_adapter_trainable(is_trainable)
        return peft_model

    def load_adapter_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        """Copy saved tensors into the method's parameters (subclasses adapt their layout first)."""
        params = self.adapter_parameters()
        expected = {name: p.shape for name, p in params.items()}
        found = {name: a.shape for name, a in tensors.items()}
        if expected != found:
            raise ValueError(
                f"{type(self).__name__}: adapter tensors {found} do not match the model's {expected}"
            )
        for name, array in tensors.items():
            params[name].copy_(array)


class FullFinetuneModel(PeftModel):
    """Full fine-tuning: every parameter trains (the adapter file is the whole model)."""

    def trained_base_names(self, base_model: GPT) -> list[str]:
        return [name for name, _ in base_model.named_parameters()]


class FrozenModel(PeftModel):
    """The frozen baseline: only the classification head trains (nothing when there is none)."""

    def trained_base_names(self, base_model: GPT) -> list[str]:
        return [name for name, _ in base_model.named_parameters() if name.startswith("cls_head.")]


# ----------------------------------------------------------------------------- fingerprints

ADAPTER_RECORD_FIELDS: dict[str, type] = {
    "format": str, "peft_config": dict, "inference_mode": bool, "base_model": dict, "tensors": dict,
    "weights_sha256": str,
}
BASE_RECORD_FIELDS: dict[str, type] = {"config": dict, "parameters": dict, "frozen_weights_sha256": str}


def read_adapter_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json`` as a dict, checked: valid JSON, a tinypft adapter, every field
    ``save_pretrained`` writes there with the right type. Errors name the file."""
    record = read_json(path)  # its errors name the file: not UTF-8 text, not valid JSON
    if not isinstance(record, dict) or record.get("format") != ADAPTER_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}: not a tinypft adapter config (format {found!r})")
    def problems_in(values: dict[str, Any], fields: dict[str, type], prefix: str = "") -> list[str]:
        return [
            f"{prefix}{name} is missing" if name not in values else f"{prefix}{name} is not a {kind.__name__}"
            for name, kind in fields.items()
            if not isinstance(values.get(name), kind)
        ]

    problems = problems_in(record, ADAPTER_RECORD_FIELDS)
    if not problems:
        problems = problems_in(record["base_model"], BASE_RECORD_FIELDS, "base_model.")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return record


def base_model_fingerprint(model: GPT, frozen: list[str]) -> dict[str, Any]:
    """What identifies a base model: its config, its parameters' names and shapes, and the SHA-256
    of the bytes of the ``frozen`` parameters (the ones an adapter relies on and never stores)."""
    params = dict(model.named_parameters())
    weights = hashlib.sha256()
    for name in frozen:
        array = np.ascontiguousarray(params[name].data)
        weights.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        weights.update(array.tobytes())
    record = {
        "config": model.config.to_dict(),
        "parameters": {name: list(p.shape) for name, p in params.items()},
        "dtype": str(next(iter(params.values())).dtype),
        "frozen_weights_sha256": weights.hexdigest(),
    }
    record["sha256"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def _structure_mismatch(saved: dict[str, Any], model: GPT) -> str | None:
    """None when ``model`` has the saved config and parameter shapes, else what differs."""
    config = model.config.to_dict()
    if saved["config"] != config:
        diffs = [
            f"{k}: adapter {saved['config'].get(k)} vs model {config.get(k)}"
            for k in sorted(set(saved["config"]) | set(config))
            if saved["config"].get(k) != config.get(k)
        ]
        return "the base model's config differs (" + "; ".join(diffs) + ")"
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    if saved["parameters"] != shapes:
        problems = (
            [f"missing {sorted(set(saved['parameters']) - set(shapes))}"]
            if set(saved["parameters"]) - set(shapes)
            else []
        )
        problems += (
            [f"extra {sorted(set(shapes) - set(saved['parameters']))}"]
            if set(shapes) - set(saved["parameters"])
            else []
        )
        problems += [
            f"{n}: adapter {saved['parameters'][n]} vs model {shapes[n]}"
            for n in sorted(set(shapes) & set(saved["parameters"]))
            if shapes[n] != saved["parameters"][n]
        ]
        return "the base model's parameters differ: " + "; ".join(problems)
    return None


def _weights_mismatch(saved: dict[str, Any], model: GPT, frozen: list[str]) -> str | None:
    """None when the frozen weights hash as saved, else a message with both hashes and dtypes."""
    now = base_model_fingerprint(model, frozen)
    if now["frozen_weights_sha256"] == saved["frozen_weights_sha256"]:
        return None
    return (
        f"the base model's frozen weights differ (model SHA-256 {now['frozen_weights_sha256'][:12]}..., "
        f"{now['dtype']}; adapter's {saved['frozen_weights_sha256'][:12]}..., {saved['dtype']}): "
        "this adapter was trained on other weights"
    )


@dataclass
class AdapterSize:
    """Storage of one task's adapter: file bytes and the number of stored floats."""

    tensor_file_bytes: int  # adapter_model.safetensors (header + raw tensors)
    config_file_bytes: int  # adapter_config.json
    num_floats: int  # scalars stored in the tensor file

    @property
    def total_bytes(self) -> int:
        return self.tensor_file_bytes + self.config_file_bytes


def adapter_bytes(path: str | Path) -> AdapterSize:
    """Bytes stored per task by the adapter in directory ``path``."""
    directory = Path(path)
    tensors = load_tensors(directory / ADAPTER_WEIGHTS_NAME)
    return AdapterSize(
        tensor_file_bytes=(directory / ADAPTER_WEIGHTS_NAME).stat().st_size,
        config_file_bytes=(directory / ADAPTER_CONFIG_NAME).stat().st_size,
        num_floats=sum(a.size for a in tensors.values()),
    )
