"""Shared model machinery: the model contract and checkpoint loading through the converter registry.

Each family class names its ``family`` (the converted config's ``family``); the table of family
classes is :data:`encoderlens.models.FAMILIES`, which imports them explicitly. ``StackWeights`` /
``StackWeightsMixin`` (stacked weight views) live in :mod:`encoderlens.components.stack_weights`
and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from encoderlens.cache import ActivationCache, StreamSpec
from encoderlens.components.mlp import MLP
from encoderlens.components.stack_weights import StackWeights as StackWeights
from encoderlens.components.stack_weights import StackWeightsMixin as StackWeightsMixin
from encoderlens.convert import find_converter
from encoderlens.hooks import HookedRootModule, NameFilter
from encoderlens.io.checkpoint import Checkpoint, read_checkpoint
from encoderlens.models.contract import ExampleInput, InputSpec, Prepared, Readout, StreamName
from encoderlens.models.placement import (
    DeviceLike,
    DeviceMap,
    PlacementUnit,
    apply_placement,
    clear_placement,
    placement_units,
    resolve_device_map,
)
from encoderlens.models.saes import SAEHostMixin, StopForward, saelens_run_options


class HookedModel(SAEHostMixin, HookedRootModule):
    """Base of every encoderlens model, and the model contract the analysis toolkit, harvest, views and the
    CLI use (and nothing else).

    A family implements ``__init__(cfg, **extras)``, ``forward``, and the contract:

    - :meth:`_prepare_input`: any accepted input -> :class:`~encoderlens.models.contract.Prepared` (the
      forward's arguments, a mask and labels for every stream's positions, token ids, times);
    - :attr:`default_return_type`: the forward ``return_type`` of the family's primary output;
    - :meth:`readout`: the head that reads a stream into logits (:class:`~encoderlens.models.contract.Readout`);
    - :attr:`streams` and :meth:`stream_spec`: its residual streams;
    - :meth:`example_input`: a small valid input.

    Running (:meth:`run_prepared`, :meth:`run_prepared_with_cache`), :meth:`prepare_input` (a prepared
    input passes through) and :meth:`resolve_stream` are written once, here. Subclasses set ``family`` to
    the converted config's ``family`` and are listed in :data:`encoderlens.models.FAMILIES`.
    """

    family: ClassVar[str] = ""
    cfg: Any
    tokenizer: Any = None
    streams: tuple[StreamName, ...] = (None,)
    """Residual streams: ``(None,)`` for single-stream models, ``("encoder", "decoder")``..."""
    hf_device_map: dict[str, str] | None = None
    """Where each placement unit is when loaded with ``device_map`` (``{"embed": "cuda:0", "blocks.0":
    "cuda:0", ..., "blocks.23": "cpu", ...}``, as HF's ``hf_device_map``); None on one device."""

    # ------------------------------------------------------------------ the model contract
    def prepare_input(self, input: Any, **options: Any) -> Prepared:
        """Turn any input this model accepts into a :class:`Prepared` batch (one passes through unchanged).

        Options are the family's (``one_zero_attention_mask``, ``token_type_ids``, ``decoder_input``,
        ``sampling_rate``...; see each family's ``_prepare_input``).

        Example:
            >>> batch = model.prepare_input(["The cat sat.", "A dog."])
            >>> batch.mask(None), batch.position_labels(None, item=1)
        """
        if isinstance(input, Prepared):
            if options:
                raise ValueError(
                    f"got an already prepared input and extra options {sorted(options)}; pass one or the other"
                )
            if input.family != self.family:
                raise ValueError(
                    f"this input was prepared by a {input.family!r} model, and this is a {self.family!r} model; "
                    "prepare it with this model's prepare_input"
                )
            return input
        return self._prepare_input(input, **options)

    def _prepare_input(self, input: Any, **options: Any) -> Prepared:
        """The family's input handling behind :meth:`prepare_input` (never given a :class:`Prepared`)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement _prepare_input(input, **options) -> Prepared, which the "
            "model contract requires (see docs/architecture.md, 'Adding a family')"
        )

    @property
    def default_return_type(self) -> str:
        """The forward ``return_type`` giving the family's primary output as a tensor (from its heads)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not declare default_return_type, which the model contract requires"
        )

    def readout(self, stream: StreamName = None) -> Readout | None:
        """The head reading ``stream``'s final state into logits, or None where the stream has none."""
        return None

    def stream_spec(self, stream: StreamName = None) -> StreamSpec:
        """How residual stream ``stream`` is built (prefix, blocks, norms, embeddings, unembedding)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement stream_spec(stream), which the model contract requires"
        )

    def input_spec(self, stream: StreamName = None) -> InputSpec:
        """Where ``stream``'s raw input enters as a tensor (token embeddings, waveform samples), for input
        attribution; see :class:`~encoderlens.models.contract.InputSpec`."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement input_spec(stream), which input attribution needs"
        )

    def cross_attention_source(self, stream: StreamName) -> StreamName:
        """The stream whose positions ``stream``'s cross-attention attends to (its keys and values)."""
        raise ValueError(f"stream {stream!r} of this {self.architecture} model has no cross-attention")

    def example_input(self) -> ExampleInput:
        """A small valid input: ``model.prepare_input(ex.input, **ex.options)`` works on it."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement example_input(), which the model contract requires"
        )

    # ------------------------------------------------------------------ devices (TransformerLens spellings)
    def to(self, *args: Any, print_details: bool = False, **kwargs: Any) -> Any:  # type: ignore[override]
        """``nn.Module.to``; also keeps ``cfg.device`` current. ``print_details=True`` prints the move (TL).

        A model placed with ``device_map`` moves whole to the device given (and is no longer placed).

        Differs from TransformerLens: ``print_details`` defaults to False (TL prints every move).
        """
        if self.hf_device_map is not None and torch._C._nn._parse_to(*args, **kwargs)[0] is not None:
            clear_placement(self, self.__dict__.pop("_placement_handles", []))
            self.hf_device_map = None
        out = super().to(*args, **kwargs)
        param = next(self.parameters(), None)
        if param is not None and getattr(self.cfg, "device", None) != str(param.device):
            self.cfg = dataclasses.replace(self.cfg, device=str(param.device))
            if print_details:
                print(f"Moving model to device: {param.device}")
        return out

    def cuda(self, device: int | str | torch.device | None = None) -> Any:  # type: ignore[override]
        """Move to a CUDA device (``cuda()``, ``cuda(1)``, ``cuda("cuda:1")``)."""
        target = "cuda" if device is None else f"cuda:{device}" if isinstance(device, int) else device
        return self.to(target)

    def cpu(self) -> Any:
        """Move to the CPU."""
        return self.to("cpu")

    def mps(self) -> Any:
        """Move to Apple's MPS device."""
        return self.to(torch.device("mps"))

    @property
    def architecture(self) -> str:
        """The checkpoint's architecture name (``"BertForMaskedLM"``...), or the class name."""
        return str(getattr(self.cfg, "architecture", None) or type(self).__name__)

    def resolve_stream(self, stream: StreamName) -> StreamName:
        """Validate a stream name; None means the only stream, or the last (the decoder of an encoder-decoder)."""
        if stream is None:
            return self.streams[-1]
        if stream not in self.streams:
            raise ValueError(f"unknown stream {stream!r}; this model's streams are {self.streams} (None: the default)")
        return stream

    def run_prepared(
        self,
        batch: Prepared,
        return_type: str | None = None,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]] = (),
    ) -> Any:
        """Run a prepared batch with temporary hooks (``return_type`` None: :attr:`default_return_type`)."""
        rt = self.default_return_type if return_type is None else return_type
        return self.run_with_hooks(
            *batch.args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, return_type=rt, **batch.kwargs
        )

    def run_prepared_with_cache(
        self, batch: Prepared, names_filter: NameFilter = None, return_type: str | None = None, **cache_options: Any
    ) -> tuple[Any, Any]:
        """``run_with_cache`` on a prepared batch: ``(output, ActivationCache)``.

        ``cache_options`` go to :meth:`~encoderlens.hooks.HookedRootModule.run_with_cache` (``device``,
        ``incl_bwd``...).
        """
        rt = self.default_return_type if return_type is None else return_type
        return self.run_with_cache(
            *batch.args, names_filter=names_filter, return_type=rt, **batch.kwargs, **cache_options
        )

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NameFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        return_cache_object: bool = True,
        **model_kwargs: Any,
    ) -> tuple[Any, Any]:
        """:meth:`~encoderlens.hooks.HookedRootModule.run_with_cache`, also taking the keywords SAELens passes.

        ``prepend_bos`` (True / None: encoders always add their start token to text; False with text is
        refused), ``padding_side`` (``"right"`` only) and ``stop_at_layer=n`` (return block ``n``'s
        ``hook_resid_pre`` of the last stream, running nothing after it); see
        :func:`~encoderlens.models.saes.saelens_run_options`.
        """
        spec = self.stream_spec(self.streams[-1])
        extra, stops = saelens_run_options(
            model_args, model_kwargs, lambda i: f"{spec.prefix}blocks.{i}.hook_resid_pre", spec.n_layers
        )
        if stops and incl_bwd:
            raise ValueError("stop_at_layer cannot be combined with incl_bwd=True (nothing to differentiate)")

        def run() -> Any:
            try:
                return self(*model_args, **model_kwargs)
            except StopForward as stop:  # stop_at_layer: the stop hook carries the output
                return stop.value

        return self._run_caching(
            run,
            names_filter=names_filter,
            device=device,
            remove_batch_dim=remove_batch_dim,
            incl_bwd=incl_bwd,
            reset_hooks_end=reset_hooks_end,
            return_cache_object=return_cache_object,
            extra_fwd=extra,
        )

    # ------------------------------------------------------------------ loading

    def make_cache(self, store: dict[str, Tensor], has_batch_dim: bool = True) -> ActivationCache:
        """Wrap cached activations in an :class:`~encoderlens.cache.ActivationCache` (for ``run_with_cache``)."""
        return ActivationCache(store, self, has_batch_dim=has_batch_dim)

    @classmethod
    def extras_from_checkpoint(cls, ckpt: Checkpoint) -> dict[str, Any]:
        """Objects besides weights a model needs (tokenizer, feature extractor...)."""
        return {}

    def weights_from_checkpoint(self, ckpt: Checkpoint) -> dict[str, Tensor]:
        """Converted weights that live outside the HF state dict (a sentence head's Dense layers).

        Called on the built model (so its final config decides), before :meth:`load_converted`.
        """
        return {}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] | None = None,
        hf_model: Any = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        revision: str | None = None,
        move_to_device: bool = True,
        torch_dtype: torch.dtype | None = None,
        device_map: DeviceMap | None = None,
        max_memory: dict[DeviceLike, int | str] | None = None,
        **extras: Any,
    ) -> Any:
        """Load an HF checkpoint: a hub name, a local folder, or an already-loaded HF model.

        The architecture comes from the checkpoint's config (``architectures`` / ``model_type``)
        through the converter registry. The HF model is not kept.

        Args:
            name_or_path: Hub name, local folder, or ``"default"`` / None for the embedded model.
            hf_model: An already-loaded ``transformers`` model (its weights are converted).
            device: Where to put the model.
            dtype: Parameter dtype (float32 for parity work).
            revision: Hub revision (branch, tag or commit) of a hub name; an unknown one raises.
            move_to_device: As TransformerLens: False leaves the model on the CPU even if ``device`` is given.
            torch_dtype: TransformerLens / HF spelling of ``dtype``.
            device_map: Spread the model over several devices: ``"auto"`` / ``"balanced"`` / ``"sequential"``
                (sized from ``max_memory``), a dict of module prefix -> device (``{"embed": 0, "blocks.0": 0,
                "blocks.1": 1, ..., "mlm_head": 0}``), or one device. Each weight is copied straight to its
                device; ``model.hf_device_map`` reports the placement. See docs/performance.md.
            max_memory: Per-device limits for the strategies (``{0: "20GiB", 1: "20GiB", "cpu": "100GiB"}``).
            **extras: Override loaded extras, e.g. ``tokenizer=...``. TransformerLens keywords that cannot
                apply here (``checkpoint_index``, ``load_in_8bit``, ``fold_ln``...) raise a ValueError saying why.

        Example:
            >>> model = HookedEncoder.from_pretrained("default")  # packaged all-MiniLM-L6-v2
        """
        if not cls.family:
            raise TypeError(
                f"{cls.__name__}.from_pretrained needs a model family class; use encoderlens.from_pretrained "
                "(it picks the class from the checkpoint) or HookedEncoder / HookedAudioEncoder / HookedEncoderDecoder"
            )
        dtype = resolve_tl_keywords(extras, dtype, torch_dtype)
        return load_pretrained(
            name_or_path,
            {cls.family: cls},
            hf_model,
            device if move_to_device else None,
            dtype,
            revision,
            device_map=device_map,
            max_memory=max_memory,
            **extras,
        )

    def load_converted(
        self,
        state_dict: dict[str, Tensor],
        devices: dict[str, torch.device] | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Load a converted state dict; every parameter must be provided with the right shape.

        Args:
            state_dict: Our parameter names -> tensors.
            devices: Parameter name -> device: each tensor is copied there (in ``dtype``) one at a time and
                taken out of ``state_dict`` (emptied), so no second copy of the whole model is ever held.
            dtype: With ``devices``: the dtype of floating tensors.
        """
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise RuntimeError(f"converter/model mismatch: missing {missing[:10]}, unexpected {unexpected[:10]}")
        for name, p in own.items():
            t = state_dict[name]
            if tuple(t.shape) != tuple(p.shape):
                raise RuntimeError(
                    f"converter produced {name} of shape {tuple(t.shape)}, model expects {tuple(p.shape)}"
                )
        if devices is not None:
            state_dict = {name: place_tensor(state_dict.pop(name), devices[name], dtype) for name in own}
        self.load_state_dict(state_dict, strict=False, assign=True)
        # buffers created on the meta device are rebuilt by the model
        self.materialize_buffers()

    def _placement_units(self) -> tuple[list[PlacementUnit], list[set[str]]]:
        return placement_units(self, [self.stream_spec(s).blocks for s in self.streams])

    def _load_placed(
        self,
        weights: dict[str, Tensor],
        device_map: DeviceMap,
        max_memory: dict[DeviceLike, int | str] | None,
        dtype: torch.dtype,
    ) -> None:
        """Load converted weights (emptying ``weights``) onto the devices ``device_map`` gives, and run there."""
        units, groups = self._placement_units()
        devices = resolve_device_map(units, groups, device_map, max_memory, dtype)
        owner = {id(p): devices[u.name] for u in units for p in u.parameters()}
        self.load_converted(weights, {n: owner[id(p)] for n, p in self.named_parameters()}, dtype)
        self.__dict__["_placement_handles"] = apply_placement(units, devices)
        self.hf_device_map = {name: str(dev) for name, dev in devices.items()}
        first = next(iter(devices.values()))
        self.cfg = dataclasses.replace(self.cfg, device=str(first))

    def materialize_buffers(self) -> None:
        """Recreate non-persistent buffers after loading onto the meta device (override if any)."""

    def clear_weight_caches(self) -> None:
        """Drop derived weight layouts kept for speed (attention's fused q/k/v weights).

        Needed only after writing weights through ``param.data``, which PyTorch's version counter
        does not see; in-place edits of the parameters themselves are detected automatically.
        """
        for module in self.modules():
            clear = getattr(module, "clear_weight_cache", None)
            if callable(clear):
                clear()


def load_pretrained(
    name_or_path: str | os.PathLike[str] | None,
    classes: dict[str, type[HookedModel]],
    hf_model: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
    *,
    device_map: DeviceMap | None = None,
    max_memory: dict[DeviceLike, int | str] | None = None,
    **extras: Any,
) -> Any:
    """Read, convert and build a checkpoint as the class of ``classes`` named by its family.

    Args:
        name_or_path: Hub name, local folder, or ``"default"`` / None for the embedded model.
        classes: ``family -> model class`` (one entry when a family class was asked for).
        hf_model: An already-loaded ``transformers`` model (its weights are converted).
        device: Where to put the model.
        dtype: Parameter dtype.
        revision: Hub revision of a hub name.
        device_map: Spread the model over devices (see :mod:`encoderlens.models.placement`); each weight
            is copied straight to its device. Excludes ``device``.
        max_memory: Per-device byte limits for ``device_map="auto" | "balanced" | "sequential"``.
        **extras: Override loaded extras, e.g. ``tokenizer=...``.

    Raises:
        ValueError: The checkpoint's family is not in ``classes``; an invalid ``device_map``.
    """
    if device_map is not None and device is not None:
        raise ValueError(
            f"got device={device!r} and device_map={device_map!r}; pass one (device_map={str(device)!r} puts "
            "everything on one device)"
        )
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype (torch.float32, torch.bfloat16, torch.float16), got {dtype}")
    ckpt = read_checkpoint(name_or_path, hf_model, revision=revision)
    # HF tensors are read (and cast to the load dtype) as the converter takes them, and freed once converted
    cfg, state_dict = find_converter(ckpt.config)(ckpt.config, ckpt.state_dict.with_dtype(dtype))
    model_cls = classes.get(cfg.family)
    if model_cls is None:
        asked = " or ".join(c.__name__ for c in classes.values())
        raise ValueError(
            f"this checkpoint ({cfg.architecture}) is a {cfg.family} model, not a {asked}; "
            "load it with encoderlens.from_pretrained, which picks the model class from the checkpoint"
        )
    kwargs = {**model_cls.extras_from_checkpoint(ckpt), **extras}
    with torch.device("meta"):
        model = model_cls(cfg, **kwargs)
    state_dict.update(model.weights_from_checkpoint(ckpt))
    if device_map is None:
        model.load_converted(state_dict)
        model.to(device=device, dtype=dtype)
    else:
        model._load_placed(state_dict, device_map, max_memory, dtype)  # empties state_dict as it places
    if dtype == torch.float16:
        # modules HF keeps in float32 under float16 (T5's wo), so the numbers are HF's
        for module in model.modules():
            if isinstance(module, MLP):
                module.keep_out_in_float32()
    model.eval()
    return model


def place_tensor(t: Tensor, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    """``t`` on ``device``, floating tensors in ``dtype`` (one copy, straight to the device)."""
    return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)


#: TransformerLens ``from_pretrained`` keywords that have no meaning here, with the reason.
_INAPPLICABLE_TL_KEYWORDS: dict[str, str] = {
    "checkpoint_index": "it picks an intermediate training checkpoint of TransformerLens's own model table; "
    "pass the checkpoint's hub name with revision=... or a local folder instead",
    "checkpoint_value": "it picks an intermediate training checkpoint of TransformerLens's own model table; "
    "pass the checkpoint's hub name with revision=... or a local folder instead",
    "load_in_8bit": "quantised weights would break parity with HF; load in float32, bfloat16 or float16 (dtype=)",
    "load_in_4bit": "quantised weights would break parity with HF; load in float32, bfloat16 or float16 (dtype=)",
    "n_devices": "blocks are spread over devices with device_map='auto' (or a dict of module -> device), "
    "not by a device count",
    "fold_ln": "weights are kept exactly as in the HF checkpoint (post-LN norms cannot be folded)",
    "center_writing_weights": "weights are kept exactly as in the HF checkpoint",
    "center_unembed": "weights are kept exactly as in the HF checkpoint",
    "fold_value_biases": "weights are kept exactly as in the HF checkpoint",
    "refactor_factored_attn_matrices": "weights are kept exactly as in the HF checkpoint",
    "default_prepend_bos": "tokenisation is the checkpoint tokenizer's own (special tokens as HF adds them)",
    "default_padding_side": "padding is always on the right, as the HF tokenizers of these models do",
}


def resolve_tl_keywords(extras: dict[str, Any], dtype: torch.dtype, torch_dtype: torch.dtype | None) -> torch.dtype:
    """Check TransformerLens-only ``from_pretrained`` keywords (removed from ``extras``); return the dtype.

    Raises:
        ValueError: A keyword that cannot apply (why, and what to do instead), or both dtype spellings.
    """
    for key, why in _INAPPLICABLE_TL_KEYWORDS.items():
        if key not in extras:
            continue
        value = extras.pop(key)
        if value in (None, False) or (key == "n_devices" and value == 1):
            continue  # the TransformerLens default: nothing asked
        raise ValueError(f"from_pretrained(..., {key}={value!r}) is not supported: {why}")
    if torch_dtype is None:
        return dtype
    if dtype is not torch.float32 and dtype != torch_dtype:
        raise ValueError(f"from_pretrained got dtype={dtype} and torch_dtype={torch_dtype}; pass one of them")
    return torch_dtype
