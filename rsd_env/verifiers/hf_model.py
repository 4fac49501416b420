"""Which model, adapter, device and dtype an ``HFVerifier`` runs, loading them, and the model's identity.

Kept apart from the verifier so that a bad name, folder or device fails with a message that names the fix
before any weights are read, and so that the cache key of stored targets (the digest) has one definition.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rsd_env.verifiers.model_store import (  # noqa: F401  (re-exported: the adapters are part of the model choice)
    BUNDLED_ADAPTER,
    BUNDLED_ADAPTERS,
    BUNDLED_MODEL,
    FULL_LIST_ADAPTER,
    LIST_40_ADAPTER,
    LIST_60_ADAPTER,
    bundled_adapter_dir,
    bundled_model_dir,
    long_list_adapter,
)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or name.count("/") > 1


def resolve_model(model: str) -> str:
    """A folder or hub name that ``from_pretrained`` accepts, or a clear error."""
    if model == BUNDLED_MODEL:
        return str(bundled_model_dir())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} has no config.json, so it is not a transformers model folder; pass a folder "
                f"written by save_pretrained, a hub name, or {BUNDLED_MODEL!r}"
            )
        return str(path)
    if _looks_like_path(model):
        raise FileNotFoundError(
            f"no model folder at {model!r}; pass an existing folder, a hub name such as "
            f"'google/gemma-3-270m-it', or {BUNDLED_MODEL!r} for the bundled offline model"
        )
    return model  # a hub name


def resolve_adapter(adapter: str | Path | None, model: str,
                    bundled: Callable[[str], Path] = bundled_adapter_dir) -> Path | None:
    """The peft adapter folder to merge (None: the raw model), or a clear error.

    ``bundled``: where a shipped adapter named in ``BUNDLED_ADAPTERS`` is installed, by name (the caller's
    ``bundled_adapter_dir``, so a test can point it elsewhere).
    """
    if adapter is None:
        return None
    if str(adapter) in BUNDLED_ADAPTERS:
        if model != BUNDLED_MODEL:
            raise ValueError(
                f"the {adapter!r} adapter belongs to the bundled model {BUNDLED_MODEL!r}, not {model!r}; "
                "pass adapter=None (raw model) or the folder of an adapter trained for that model"
            )
        path = bundled(str(adapter))
        if not (path / "adapter_config.json").exists():
            raise FileNotFoundError(
                f"the {adapter!r} ranking adapter is not installed (expected {path}); reinstall rsd "
                "(pip install -e .), or pass adapter=None to use the raw base model"
            )
        return path
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"no peft adapter at {path} (expected adapter_config.json there); pass a folder written by "
            f"PeftModel.save_pretrained, one of {sorted(BUNDLED_ADAPTERS)}, or None"
        )
    return path


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:0'") from err


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """fp32 by default: verification rows must match the AR target to well below logit gaps."""
    if dtype == "auto":
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(table)}")
    if device.type == "cpu" and table[dtype] == torch.float16:
        raise ValueError("float16 is not supported on CPU; use dtype='float32' or 'bfloat16'")
    return table[dtype]


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around wrapping a model in a ``PeftModel``: peft (0.21.2, the newest) reads transformers' deprecated
    ``is_gradient_checkpointing`` in that constructor, a FutureWarning no argument of ours avoids."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_model(
    name: str, source: str, adapter_path: Path | None, device: torch.device, dtype: torch.dtype
) -> tuple[Any, Any]:
    """(tokenizer, causal LM in eval mode on ``device``) from ``resolve_model(name)``, adapter merged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as err:
        where = "the Hugging Face hub" if source == name else source
        raise RuntimeError(
            f"could not load model {name!r} from {where}: {err}. Offline, pass a local folder "
            f"or {BUNDLED_MODEL!r}; online, check the name and your access to it"
        ) from err
    if adapter_path is not None:
        from peft import PeftModel

        with peft_wrapping():
            lm = PeftModel.from_pretrained(lm, str(adapter_path)).merge_and_unload()
    return tokenizer, lm.to(device).eval()


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """The model's final logit soft-capping (Gemma), or the logits unchanged where it has none."""
    return logits if cap is None else torch.tanh(logits / cap) * cap


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_digest(name: str, model: Any, adapter_path: Path | None, dtype: torch.dtype) -> str:
    """Model identity: name, config, a weight checksum (so merged adapters count), dtype.

    The config's ``_name_or_path`` (the folder it was loaded from) is left out: the same model converted
    under another ``$RSD_CACHE`` or ``HOME`` is the same target, and its cached targets and resumable runs
    stay valid.
    """
    h = hashlib.sha256()
    h.update(name.encode())
    config = json.loads(model.config.to_json_string(use_diff=False))
    config.pop("_name_or_path", None)
    h.update(json.dumps(config, sort_keys=True).encode())
    with torch.inference_mode():
        for pname, p in model.named_parameters():
            h.update(pname.encode())
            h.update(p.detach().reshape(-1)[:2048].float().cpu().numpy().tobytes())
    if adapter_path is not None:
        for f in sorted(adapter_path.glob("adapter_model.*")):
            h.update(file_digest(f).encode())
    h.update(str(dtype).encode())
    return h.hexdigest()[:16]
