"""Benchmark pathllm's `LM` against `transformers.LlamaForCausalLM` with identical dims and weights.

Measures, in one run and on the same batch/sequence sizes:
- training throughput: tokens/s of forward + backward (+ optimizer step), and
- generation throughput: new tokens/s of greedy decoding with a KV cache.

Writes `bench/results/lm.json` and `bench/results/lm.md` (ratios pathllm / HF; > 1 means pathllm is faster).

    python bench/lm.py                      # small CPU config
    python bench/lm.py --n-layer 8 --n-embd 512 --device cuda
    python bench/lm.py --tiny --out /tmp/lm           # seconds: checks the script (CI)
"""
import argparse, json, os, platform, statistics, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
import torch
from pathllm.lm import LM, LMConfig, lm_to_llama


def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def train_step(model, x, y, opt, hf):
    "One forward + backward + AdamW step"
    loss = model(input_ids=x, labels=y).loss if hf else model(x, targets=y)[1]
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()


def _interleaved(fns, dev, reps):
    "Median seconds of each function, alternating them rep by rep so that background load hits both alike"
    for f in fns: f()  # warmup
    ts = [[] for _ in fns]
    for _ in range(reps):
        for f, t in zip(fns, ts):
            _sync(dev); t0 = time.perf_counter(); f(); _sync(dev); t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def train_fn(model, hf, a, dev):
    "A closure running `a.steps` training steps"
    x = torch.randint(0, a.vocab, (a.bs, a.seq_len), device=dev)
    # HF shifts labels internally; ours expects shifted targets: same amount of work either way
    y = x if hf else torch.roll(x, -1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    return lambda: [train_step(model, x, y, opt, hf) for _ in range(a.steps)]


def gen_fn(model, hf, a, dev):
    "A closure generating `a.new_tokens` greedy tokens with a KV cache, and its output"
    torch.manual_seed(0)
    p = torch.randint(3, a.vocab, (a.gen_bs, a.prompt_len), device=dev)
    model.eval()
    if hf:
        model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, 0
        fn = lambda: model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=a.new_tokens, do_sample=False, use_cache=True)[:, p.shape[1]:]
    else: fn = lambda: model.generate(p, max_new_tokens=a.new_tokens)
    fn = torch.no_grad()(fn)
    out = fn()
    assert out.shape[1] == a.new_tokens, out.shape
    return fn, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in dict(n_layer=4, n_embd=256, n_head=8, n_kv_head=4, vocab=1024, bs=8, seq_len=128, steps=3,
                     gen_bs=1, prompt_len=16, new_tokens=64, reps=5, threads=0).items():
        ap.add_argument('--' + k.replace('_', '-'), type=int, default=v)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results'))
    ap.add_argument('--tiny', action='store_true', help='tiny dims, one rep: checks the script in seconds (CI)')
    a = ap.parse_args()
    if a.tiny: a.n_layer, a.n_embd, a.n_head, a.n_kv_head, a.vocab, a.bs, a.seq_len, a.steps, a.new_tokens, a.reps = 1, 32, 2, 1, 300, 2, 32, 1, 8, 1
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=a.vocab, n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_head, n_kv_head=a.n_kv_head)
    ours = LM(cfg).to(dev)
    theirs = lm_to_llama(ours).to(dev)
    if hasattr(theirs.config, '_attn_implementation'): theirs.config._attn_implementation = 'sdpa'
    res = dict(config=dict(vars(a)), n_params=cfg.n_params, device=str(dev), torch=torch.__version__,
               threads=torch.get_num_threads(), machine=platform.processor() or platform.machine())
    import transformers; res['transformers'] = transformers.__version__
    (g1, out_ours), (g2, out_hf) = gen_fn(ours, False, a, dev), gen_fn(theirs, True, a, dev)
    res['greedy_outputs_equal'] = bool(torch.equal(out_ours.cpu(), out_hf.cpu()))
    tg = _interleaved([g1, g2], dev, a.reps)
    res['gen_tok_s'] = dict(pathllm=a.gen_bs * a.new_tokens / tg[0], hf_llama=a.gen_bs * a.new_tokens / tg[1])
    tt = _interleaved([train_fn(ours, False, a, dev), train_fn(theirs, True, a, dev)], dev, a.reps)
    res['train_tok_s'] = dict(pathllm=a.bs * a.seq_len * a.steps / tt[0], hf_llama=a.bs * a.seq_len * a.steps / tt[1])
    res['ratio'] = {k: res[k]['pathllm'] / res[k]['hf_llama'] for k in ('train_tok_s', 'gen_tok_s')}
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out / 'lm.json').write_text(json.dumps(res, indent=2))
    md = [f"# LM benchmark ({res['device']}, {res['threads']} threads, torch {res['torch']}, transformers {res['transformers']})", '',
          f"dims: n_layer={a.n_layer} n_embd={a.n_embd} n_head={a.n_head} n_kv_head={a.n_kv_head} vocab={a.vocab} "
          f"({cfg.n_params/1e6:.2f}M params); train bs={a.bs} seq={a.seq_len}; generation bs={a.gen_bs} prompt={a.prompt_len} new={a.new_tokens}", '',
          '| metric | pathllm | HF Llama | ratio |', '|---|---|---|---|']
    for k, name in (('train_tok_s', 'train tokens/s (fwd+bwd+step)'), ('gen_tok_s', 'generation tokens/s (KV cache, greedy)')):
        md.append(f"| {name} | {res[k]['pathllm']:.0f} | {res[k]['hf_llama']:.0f} | {res['ratio'][k]:.2f}x |")
    md.append(f"\ngreedy outputs identical: {res['greedy_outputs_equal']}")
    (out / 'lm.md').write_text('\n'.join(md) + '\n')
    print('\n'.join(md))


if __name__ == '__main__': main()
