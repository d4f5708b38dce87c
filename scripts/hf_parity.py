#!/usr/bin/env python3
"""Logits parity between HuggingFace transformers and tandem on make-model checkpoints.

Generates each preset with `tandem make-model` (F32 weights), loads it with
transformers unchanged, and records what HF computes:
  * the token ids HF's tokenizer gives for fixed prompts,
  * prefill logits at every position,
  * 8 greedy tokens (with the KV cache) and the logits of each decode step,
  * the chat template rendered by HF's apply_chat_template.
The record is written as <out>/<preset>.safetensors; the C++ test
tests/integration/generate/hf_parity_test.cpp recomputes everything with tandem
and compares (relative error < 1e-3, tokens exact). With --check it also runs
that test against the files just written.

Usage: python3 scripts/hf_parity.py --tandem build/src/cli/tandem \
           --out tests/fixtures/hf [--device cpu|cuda] [--check build]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PRESETS = ["tiny-mixtral", "tiny-qwen3-moe"]
# Checkpoints written by transformers itself (random init, BF16, sharded, legacy
# expert names as save_pretrained writes them), committed whole under <out>/<name>/.
HF_WRITTEN = {
    "hf-mixtral": ("MixtralConfig", "MixtralForCausalLM",
                   dict(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
                        rope_theta=1e6)),
    "hf-qwen2-moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                     dict(intermediate_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                          num_experts=8, num_experts_per_tok=2, norm_topk_prob=False, qkv_bias=True,
                          decoder_sparse_step=1, mlp_only_layers=[1], use_sliding_window=False,
                          rope_theta=1e6)),
    "hf-qwen3-moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                     dict(head_dim=16, intermediate_size=64, moe_intermediate_size=32, num_experts=8,
                          num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
                          mlp_only_layers=[], use_sliding_window=False, rope_theta=1e6)),
}
PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Serving mixture-of-experts models: attention here, experts there!",
    "1 2 3 4 5",
]
CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"}]
GREEDY_STEPS = 8
SEED = 0


def record(tandem, preset, out_dir, device):
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, preset)
        subprocess.run([tandem, "make-model", "--preset", preset, "--seed", str(SEED), "--dtype", "F32",
                        "--out", model_dir], check=True, stdout=subprocess.DEVNULL)
        model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                           output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        if problems:
            sys.exit(f"{preset}: transformers did not load the checkpoint cleanly: {problems}")
        model = model.to(device).eval()
        tok = AutoTokenizer.from_pretrained(model_dir)
        rec = {}
        for i, text in enumerate(PROMPTS):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            x = torch.tensor([ids], device=device)
            with torch.no_grad():
                out = model(x, use_cache=True)
            rec[f"p{i}.input_ids"] = torch.tensor(ids, dtype=torch.int32)
            rec[f"p{i}.prefill_logits"] = out.logits[0].float().cpu()
            past, nxt = out.past_key_values, out.logits[0, -1].argmax()
            toks, steps = [], []
            for _ in range(GREEDY_STEPS):
                toks.append(int(nxt))
                with torch.no_grad():
                    o = model(nxt.view(1, 1), past_key_values=past, use_cache=True)
                past = o.past_key_values
                steps.append(o.logits[0, -1].float().cpu())
                nxt = o.logits[0, -1].argmax()
            rec[f"p{i}.greedy_tokens"] = torch.tensor(toks, dtype=torch.int32)
            rec[f"p{i}.step_logits"] = torch.stack(steps)
        chat = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
        meta = {"preset": preset, "seed": str(SEED), "dtype": "F32", "prompts": json.dumps(PROMPTS),
                "chat_messages": json.dumps(CHAT), "chat_rendered": chat,
                "transformers": __import__("transformers").__version__, "torch": torch.__version__,
                "device": device}
        path = os.path.join(out_dir, f"{preset}.safetensors")
        save_file({k: v.contiguous() for k, v in rec.items()}, path, metadata=meta)
        print(f"{preset}: wrote {path} ({os.path.getsize(path)} bytes)")


def run_and_record(model, tok, device):
    rec = {}
    for i, text in enumerate(PROMPTS):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            out = model(x, use_cache=True)
        rec[f"p{i}.input_ids"] = torch.tensor(ids, dtype=torch.int32)
        rec[f"p{i}.prefill_logits"] = out.logits[0].float().cpu()
        past, nxt = out.past_key_values, out.logits[0, -1].argmax()
        toks = []
        for _ in range(GREEDY_STEPS):
            toks.append(int(nxt))
            with torch.no_grad():
                o = model(nxt.view(1, 1), past_key_values=past, use_cache=True)
            past = o.past_key_values
            nxt = o.logits[0, -1].argmax()
        rec[f"p{i}.greedy_tokens"] = torch.tensor(toks, dtype=torch.int32)
    return rec


def record_hf_written(tandem, name, out_dir, device):
    import transformers
    cfg_name, cls_name, extra = HF_WRITTEN[name]
    with tempfile.TemporaryDirectory() as tmp:
        # Borrow tandem's tiny tokenizer (1000 tokens) so prompts are real text.
        src = os.path.join(tmp, "tok")
        subprocess.run([tandem, "make-model", "--preset", "tiny-mixtral", "--out", src], check=True,
                       stdout=subprocess.DEVNULL)
        tok = AutoTokenizer.from_pretrained(src)
        cfg = getattr(transformers, cfg_name)(vocab_size=1024, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=512, rms_norm_eps=1e-6,
                                              tie_word_embeddings=False, **extra)
        torch.manual_seed(1234)
        model = getattr(transformers, cls_name)(cfg).eval()
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():  # wider than HF's 0.02 init so logits and routing margins are not tiny
            for n, p in model.named_parameters():
                if p.dim() == 1 and "bias" not in n:
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    fan_in = p.shape[-1] if p.dim() > 1 else 1
                    p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
        model = model.to(torch.bfloat16)
        dst = os.path.join(out_dir, name)
        if os.path.isdir(dst):
            import shutil
            shutil.rmtree(dst)
        model.save_pretrained(dst, max_shard_size="100KB")
        tok.save_pretrained(dst)
        ref_model = getattr(transformers, cls_name).from_pretrained(dst, dtype=torch.float32).to(device).eval()
        rec = run_and_record(ref_model, tok, device)
        meta = {"prompts": json.dumps(PROMPTS), "transformers": transformers.__version__,
                "torch": torch.__version__, "device": device, "weights": "bf16 file, fp32 compute"}
        save_file({k: v.contiguous() for k, v in rec.items()}, os.path.join(dst, "reference.safetensors"),
                  metadata=meta)
        total = sum(os.path.getsize(os.path.join(dst, f)) for f in os.listdir(dst))
        print(f"{name}: wrote {dst} ({total} bytes, files: {sorted(os.listdir(dst))})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tandem", required=True, help="path to the tandem binary")
    ap.add_argument("--out", default="tests/fixtures/hf")
    ap.add_argument("--device", default="cpu", help="where transformers runs the reference: cpu (default), cuda, cuda:N")
    ap.add_argument("--check", metavar="BUILD_DIR", help="then run the C++ parity test from this build dir")
    a = ap.parse_args()
    if a.device.startswith("cuda"):
        if not torch.cuda.is_available():
            sys.exit(f"--device {a.device}: torch sees no CUDA device")
        # Deterministic cuBLAS needs a fixed workspace, or use_deterministic_algorithms
        # raises at the first matmul; cuBLAS reads this when torch first creates its handle.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # The reference must be FP32 all the way: no TF32 in matmuls or convolutions.
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    # Some CUDA kernels the MoE blocks may hit (scatter/index adds, bincount) have
    # no deterministic version and would raise; on a GPU they only warn. The CPU
    # path is unchanged.
    torch.use_deterministic_algorithms(True, warn_only=a.device != "cpu")
    os.makedirs(a.out, exist_ok=True)
    for preset in PRESETS:
        record(a.tandem, preset, a.out, a.device)
    for name in HF_WRITTEN:
        record_hf_written(a.tandem, name, a.out, a.device)
    if a.check:
        env = dict(os.environ, TANDEM_HF_FIXTURES=os.path.abspath(a.out))
        r = subprocess.run(["ctest", "--output-on-failure", "-R", "HfParity"], cwd=a.check, env=env)
        sys.exit(r.returncode)


if __name__ == "__main__":
    main()
