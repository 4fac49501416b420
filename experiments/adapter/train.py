"""Distil all-MiniLM-L6-v2 into a LoRA listwise-ranking adapter for the bundled Gemma 3 270M (FIRST-style).

One command, resumable::

    python -m experiments.adapter.train --config experiments/configs/adapter.yaml [--device cuda]

Step 1 (once, ~100 s on 2 CPU cores) builds ``examples.npz`` from DL20 (half with easy negatives) and
ML-100K train users with the verifier's own prompt code (``rsd_env.verifiers.prompts``); the MiniLM
teacher scores each passage as shown (cut to the prompt's token budget). ``--full-list-orders K`` adds each
DL20 query's whole BM25 top-``--full-list-n`` in K shuffled orders: one file, examples of different N.
Step 2 trains: for the N identifier logits at the N answer slots (teacher permutation fed as the answer),
loss = Plackett-Luce NLL of the teacher order (the LM loss restricted to identifiers, each slot over the
not-yet-used items - exactly what constrained AR decoding reads) + ``rank_weight`` x FIRST's weighted
RankNet on the first slot (the single-token ranking) + ``probe_weight`` x a pointwise loss at each
passage's closing tag (see ``probe_loss``). Checkpoints every ``ckpt_every`` optimizer steps; rerunning
the command resumes.

Without the closing tag and the probe loss (earlier GPU runs) the answer losses sat at their uniform
values; with them, the answer slots start to follow content after ~80 steps (see the model card).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.plackett_luce import log_prob
from experiments.adapter.data import Examples, prepare
from experiments.config_files import load_yaml_config
from rsd_env.io import atomic_path, write_json
from rsd_env.verifiers.hf_model import peft_wrapping
from rsd_env.verifiers.model_store import BUNDLED_MODEL, bundled_model_dir

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML file whose keys set these options' defaults")
    p.add_argument("--model", default=None, help="base model folder (default: the bundled Gemma 3 270M)")
    p.add_argument("--data", type=Path, default=Path(".cache_adapter/examples.npz"))
    p.add_argument("--prepare-only", action="store_true", help="build the example file and stop")
    p.add_argument("--teacher", default=None, help="MiniLM folder (default: from the all-minilm-l6-v2 wheel)")
    p.add_argument("--teacher-device", default="cpu")
    p.add_argument("--movielens", default=None, help="ML-100K folder (default: from the recbole wheel)")
    p.add_argument("--ir-samples-per-query", type=int, default=60)
    p.add_argument("--easy-fraction", type=float, default=0.5,
                   help="share of IR tasks with 5-15 passages of other DL20 queries (easy negatives)")
    p.add_argument("--rec-orders", type=int, default=2, help="presentation orders per ML-100K train user")
    p.add_argument("--rec-users", type=int, default=None, help="first K ML-100K train users (default: all)")
    p.add_argument("--full-list-orders", type=int, default=0,
                   help="add each DL20 query's whole BM25 top-N (--full-list-n) in this many shuffled orders")
    p.add_argument("--full-list-n", type=int, default=100, help="candidates of a full-list example")
    p.add_argument("--passage-tokens", type=int, nargs="+", default=[40, 48, 64, 80])
    p.add_argument("--work-dir", type=Path, default=Path(".cache_adapter/run"), help="checkpoints, logs")
    p.add_argument("--out", type=Path, default=Path("rsd_env/verifiers/adapters/gemma3-270m-rank-lora"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--accum", type=int, default=8, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--targets", nargs="+", default=LORA_TARGETS, help="module names that get LoRA")
    p.add_argument("--first-layer", type=int, default=0,
                   help="LoRA only on layers >= this one (backward stops there: cheaper on CPU)")
    p.add_argument("--probe-layer", type=int, default=12,
                   help="hidden state (after this many layers) that the pointwise probe reads")
    p.add_argument("--probe-weight", type=float, default=1.0,
                   help="weight of the pointwise loss at each passage's closing tag (0 turns it off)")
    p.add_argument("--rank-weight", type=float, default=1.0, help="weight of the first-slot RankNet loss")
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from the adapter and probe of this checkpoint.pt, or from a saved adapter folder "
                        "(e.g. the shipped one; fresh probe): a second stage with a fresh optimizer")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="checkpoint and save the adapter after this long (this run); rerun to resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"])
    args = p.parse_args(argv)
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ValueError as err:
            p.error(str(err))
        known = set(vars(args)) - {"config"}  # every option's dest: argparse fills in each default
        unknown = sorted(set(config) - known)
        if unknown:
            p.error(f"{args.config}: unknown option(s) {', '.join(unknown)}; the trainer's options are "
                    f"{', '.join(sorted(known))} (YAML keys use _ where the flags use -)")
        p.set_defaults(**config)
        args = p.parse_args(argv)
    return args


def load_config(path: Path) -> dict[str, Any]:
    """The options a trainer YAML sets. ``extends: other.yaml`` (a path beside this file) supplies every key this
    file does not set, so the curriculum's stages keep one shared recipe and list only what differs."""
    return load_yaml_config(path, "trainer config", "experiments/configs/adapter.yaml")


def ranking_losses(scores: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Plackett-Luce NLL, weighted RankNet) for identifier logits ``scores`` [B, N slots, N items].

    ``perm`` [B, N] is the teacher order (item indices, best first); slot k's row was computed with
    the teacher's first k items already in the answer, so it is masked to the unused ones.
    """
    b, n, _ = scores.shape
    scores = scores.float()
    rank_of = torch.empty_like(perm)
    rank_of.scatter_(1, perm, torch.arange(n, device=perm.device).expand(b, n))
    used = rank_of.unsqueeze(1) < torch.arange(n, device=perm.device).view(1, n, 1)  # [B, slot, item]
    logp = scores.masked_fill(used, float("-inf")).log_softmax(-1)
    pl = -logp.gather(2, perm.unsqueeze(2)).squeeze(2).mean()
    first = scores[:, 0].gather(1, perm)  # first-slot scores in teacher order
    i, j = torch.triu_indices(n, n, 1, device=perm.device)
    weight = 1.0 / (i + j + 2).float()  # FIRST: 1 / (rank_i + rank_j), ranks from 1
    pair = torch.nn.functional.softplus(first[:, j] - first[:, i])
    ranknet = (pair * weight).sum(1).mean() / weight.sum()
    return pl, ranknet


def identifier_scores(model: Any, ids: torch.Tensor, mask: torch.Tensor, starts: torch.Tensor,
                      ident_ids: torch.Tensor, n: int, probe_layer: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of the N identifiers at the N answer slots: final hidden state x the identifier rows of
    ``lm_head`` (exact here - Gemma 3 has no final logit soft-capping - and 13000x cheaper than the
    full vocabulary); plus the hidden states after ``probe_layer`` layers when asked."""
    base = model.get_base_model()
    out = base.model(input_ids=ids, attention_mask=mask, output_hidden_states=probe_layer is not None)
    hidden = out.last_hidden_state
    pos = starts.unsqueeze(1) - 1 + torch.arange(n, device=ids.device)
    picked = hidden.gather(1, pos.unsqueeze(2).expand(-1, -1, hidden.shape[-1]))
    # fp32: identifier logits differ by far less than bf16's resolution at their magnitude (~0.1 at 20)
    with torch.autocast(ids.device.type, enabled=False):
        scores = picked.float() @ base.lm_head.weight[ident_ids].float().T
    return scores, (out.hidden_states[probe_layer] if probe_layer is not None else None)


def make_probe(width: int) -> torch.nn.Module:
    """Norm (Gemma's residual stream runs to the hundreds) + a zero-initialised linear score: starts at
    the uniform loss instead of swamping the gradient."""
    linear = torch.nn.Linear(width, 1)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    return torch.nn.Sequential(torch.nn.LayerNorm(width, elementwise_affine=False), linear)


def probe_loss(probe: torch.nn.Module, hidden: torch.Tensor, tags: torch.Tensor, perm: torch.Tensor,
               ) -> torch.Tensor:
    """Pointwise-to-listwise auxiliary loss: a linear probe on each passage's closing tag must rank the
    passages like the teacher. Why: the listwise answer loss alone gives the small model one weak signal
    per slot and it settles on uniform scores; this makes every closing tag carry its passage's relevance,
    which the answer slots then only have to copy. The probe is discarded after training."""
    at = hidden.gather(1, tags.unsqueeze(2).expand(-1, -1, hidden.shape[-1]))
    scores = probe(at.float()).squeeze(-1)
    # per-position mean, on the same scale as the answer-slot PL loss
    return -log_prob(scores, perm, torch.ones_like(perm, dtype=torch.bool)).mean() / perm.shape[1]


def micro_batch_losses(model: Any, probe: torch.nn.Module, batch: tuple, ident_ids: torch.Tensor,
                       probe_layer: int | None, autocast: Any = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(answer-slot PL, first-slot RankNet, probe loss or 0, first-slot top-1 = teacher top-1) of one
    ``collate`` batch; ``ident_ids`` are the identifiers of the largest N (a prompt of N uses the first N)."""
    ids, mask, starts, perm, tags = batch
    n = perm.shape[1]
    with autocast or nullcontext():
        scores, hidden = identifier_scores(model, ids, mask, starts, ident_ids[:n], n, probe_layer)
    pl, ranknet = ranking_losses(scores, perm)
    aux = probe_loss(probe, hidden, tags, perm) if hidden is not None else scores.new_zeros(())
    top1 = (scores[:, 0].argmax(-1) == perm[:, 0]).float().mean()
    return pl, ranknet, aux, top1


def micro_batches(data: Examples, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Seeded shuffle; batches of one N (the losses need one shape) and similar length (less padding),
    then the batches shuffled. With a single N this is the plan the 20-candidate runs always had."""
    order = rng.permutation(len(data))
    lengths = np.diff(data.offsets)
    chunks = [order[k : k + 64 * size] for k in range(0, len(order), 64 * size)]
    batches = []
    for chunk in chunks:
        chunk = chunk[np.lexsort((lengths[chunk], data.sizes[chunk]))]  # stable: by N, then by length
        for n in np.unique(data.sizes[chunk]):
            same = chunk[data.sizes[chunk] == n]
            batches += [same[k : k + size] for k in range(0, len(same), size)]
    return [batches[k] for k in rng.permutation(len(batches))]


def collate(data: Examples, idx: np.ndarray, pad_id: int, device: torch.device):
    """Right-padded (ids, mask, answer starts, teacher perms, closing-tag positions) for one micro-batch
    of examples with the same N."""
    sizes = {data.n(i) for i in idx}
    if len(sizes) != 1:
        raise ValueError(f"a micro-batch mixes examples of {sorted(sizes)} candidates: build it with micro_batches")
    seqs = [data.sequence(i)[:-1] for i in idx]  # the last answer token is never an input
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, : len(s)], mask[r, : len(s)] = s, 1
    starts = np.diff(data.offsets)[idx]
    perms = np.stack([data.perm(i) for i in idx])
    tags = np.stack([data.closing_tags(i) for i in idx])
    tensors = (ids, mask, starts, perms, tags)
    return tuple(torch.as_tensor(t, device=device) for t in tensors)


def load_base(model_path: str, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    if getattr(model.config, "final_logit_softcapping", None):
        raise ValueError("identifier_scores needs a model without final logit soft-capping")
    return model.to(device)


def add_lora(base: Any, rank: int, alpha: int, dropout: float, targets: list[str], first_layer: int) -> Any:
    """The trainable LoRA model: ``targets`` of layers >= ``first_layer`` (backward stops there)."""
    from peft import LoraConfig, get_peft_model

    layers = list(range(first_layer, base.config.num_hidden_layers))
    with peft_wrapping():  # peft's own deprecated transformers call
        return get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                               target_modules=list(targets), layers_to_transform=layers,
                                               task_type="CAUSAL_LM"))


def load_adapter_folder(model: Any, folder: Path) -> None:
    """Load a saved adapter (``save_adapter``'s folder) into ``model``; its LoRA shape must match."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    saved = json.loads((folder / "adapter_config.json").read_text())
    ours = model.peft_config["default"]
    for key in ("r", "lora_alpha", "layers_to_transform"):
        mine, theirs = getattr(ours, key), saved.get(key)
        if mine != theirs:
            raise SystemExit(f"--init-from {folder}: its {key} is {theirs}, this run's is {mine}; set rank/alpha/"
                             "first_layer to the adapter's (see its training_meta.json)")
    result = set_peft_model_state_dict(model, load_peft_weights(str(folder), device=str(model.device)))
    if result.unexpected_keys:
        raise SystemExit(f"--init-from {folder}: {len(result.unexpected_keys)} weights do not fit this model "
                         f"(e.g. {result.unexpected_keys[0]}); set targets to the adapter's")


def save_adapter(model: Any, out: Path, meta: dict) -> None:
    """peft adapter in bf16 (a few MB), pointing at the bundled base by name, plus training metadata.

    Written to a staging folder beside ``out`` and swapped in whole, so a kill mid-save leaves the previous
    adapter (or none), never a folder mixing two versions.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    weights = staging / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(weights).items()}, weights)
    cfg_path = staging / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = BUNDLED_MODEL
    write_json(cfg_path, cfg, indent=2, sort_keys=True)
    write_json(staging / "training_meta.json", meta, indent=2, sort_keys=True)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.replace(old)
    staging.replace(out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from peft import set_peft_model_state_dict
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    model_path = args.model or str(bundled_model_dir())
    if not args.data.exists():
        from transformers import AutoTokenizer

        from experiments.adapter.data import MiniLMTeacher

        print(f"building {args.data} (MiniLM teacher on {args.teacher_device}) ...", flush=True)
        t0 = time.time()
        prepare(args.data, AutoTokenizer.from_pretrained(model_path), args.ir_samples_per_query,
                args.rec_orders, args.passage_tokens, args.seed,
                MiniLMTeacher(args.teacher, args.teacher_device), args.movielens, args.easy_fraction,
                args.rec_users, args.full_list_orders, args.full_list_n)
        print(f"built {args.data} in {time.time() - t0:.0f} s", flush=True)
    if args.prepare_only:
        return
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    data = Examples(args.data)
    sizes, counts = np.unique(data.sizes, return_counts=True)
    print(f"{len(data)} examples: " + ", ".join(f"{c} of N = {n}" for n, c in zip(sizes, counts)), flush=True)
    base = load_base(model_path, device)
    model = add_lora(base, args.rank, args.alpha, args.dropout, args.targets, args.first_layer)
    probe = make_probe(base.config.hidden_size).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    per_epoch = math.ceil(len(data) / args.micro_batch)
    total = args.max_steps or max(1, int(per_epoch * args.epochs) // args.accum)
    sched = get_linear_schedule_with_warmup(opt, args.warmup, total)
    rng = np.random.default_rng(args.seed)
    plan = [b for _ in range(math.ceil(args.epochs) + 1) for b in micro_batches(data, args.micro_batch, rng)]
    ckpt, step, elapsed = args.work_dir / "checkpoint.pt", 0, 0.0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    def load_weights(path: Path) -> dict:
        state = torch.load(path, map_location=device, weights_only=False)
        set_peft_model_state_dict(model, state["adapter"])
        probe.load_state_dict(state["probe"])
        return state

    if args.init_from is not None and not ckpt.exists():
        if args.init_from.is_dir():
            load_adapter_folder(model, args.init_from)
            print(f"initialised from the adapter in {args.init_from} (fresh probe)", flush=True)
        else:
            state = load_weights(args.init_from)
            print(f"initialised from {args.init_from} (step {state['step']} of that run)", flush=True)
    if ckpt.exists():
        state = load_weights(ckpt)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, elapsed = state["step"], state["elapsed"]
        print(f"resumed from {ckpt} at step {step}", flush=True)
    run = _wandb(args, total)
    ident = torch.as_tensor(data.ident_ids, device=device)
    pad_id = int(model.config.pad_token_id or 0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    model.train()
    bar = tqdm(total=total, initial=step, desc="adapter", dynamic_ncols=True)
    t0 = time.time() - elapsed  # training time over all runs of this work dir
    started = time.time()  # --max-minutes counts this run only, so a rerun always makes progress
    probe_at = args.probe_layer if args.probe_weight > 0 else None
    while step < total:
        sums = np.zeros(4)
        for k in range(args.accum):
            batch = collate(data, plan[step * args.accum + k], pad_id, device)
            pl, ranknet, aux, top1 = micro_batch_losses(model, probe, batch, ident, probe_at, autocast)
            loss = pl + args.rank_weight * ranknet + args.probe_weight * aux
            (loss / args.accum).backward()
            sums += [pl.item(), ranknet.item(), top1.item(), aux.item()]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        pl_m, rn_m, top1_m, aux_m = sums / args.accum
        bar.update(1)
        bar.set_postfix(pl=f"{pl_m:.3f}", ranknet=f"{rn_m:.3f}", top1=f"{top1_m:.2f}", probe=f"{aux_m:.3f}")
        if run is not None:
            run.log({"loss/pl": pl_m, "loss/ranknet": rn_m, "train/top1": top1_m, "loss/probe": aux_m,
                     "lr": sched.get_last_lr()[0]}, step=step)
        out_of_time = args.max_minutes is not None and time.time() - started > 60 * args.max_minutes
        if step % args.ckpt_every == 0 or step == total or out_of_time:
            _checkpoint(ckpt, model, probe, opt, sched, step, time.time() - t0)
        if out_of_time:
            print(f"time limit: stopping at step {step}/{total}; rerun to resume", flush=True)
            break
    bar.close()
    elapsed = time.time() - t0
    meta = {"steps": step, "total_steps": total, "examples_seen": step * args.accum * args.micro_batch,
            "train_seconds": round(elapsed, 1), "device": _device_name(device),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    save_adapter(model, args.out, meta)
    print(f"saved {args.out} after {step}/{total} steps, {elapsed:.0f} s on {meta['device']}", flush=True)
    if run is not None:
        run.finish()


def _checkpoint(path: Path, model: Any, probe: torch.nn.Module, opt: Any, sched: Any, step: int,
                elapsed: float) -> None:
    from peft import get_peft_model_state_dict

    with atomic_path(path) as tmp:
        torch.save({"adapter": get_peft_model_state_dict(model), "probe": probe.state_dict(),
                    "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step, "elapsed": elapsed}, tmp)


def _wandb(args: argparse.Namespace, total: int) -> Any:
    """An offline wandb run unless disabled or wandb is missing (it is optional on remote machines)."""
    if args.wandb == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        print("wandb is not installed: logging to the progress bar only", flush=True)
        return None
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return wandb.init(project="rsd-adapter", mode=args.wandb, dir=str(args.work_dir),
                      config={**config, "total_steps": total})


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
