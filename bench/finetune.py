"""No fine-tuning vs full fine-tuning vs LoRA vs QLoRA on real PCam, at the same data and step budget.

A tiny `PathVLM` is aligned on captions (stage 1) once; each method then fine-tunes a fresh copy of it on the same instruction
rows for the same number of steps, in its own process (so that the peak resident memory is the method's own), and is scored on
the same validation patches: accuracy / AUC of `PathVLM.classify` probabilities, CIDEr of its captions (`pathllm.evaluate`).
The QLoRA model is then merged (`merge_qlora`) and re-quantised for serving, with the size at each step.

Writes `OUT/finetune.json` and `OUT/finetune.md` (default `bench/results/finetune`).

    python bench/finetune.py                                # real PCam from `pathllm.data.pcam_dir()`
    python bench/finetune.py --n-train 400 --n-valid 100 --max-rows 800 --out /tmp/ft   # 20 min on 2 busy cores
    python bench/finetune.py --tiny --out /tmp/ft            # synthetic patches, a few rows: every method in seconds (CI)
"""
import argparse, json, os, platform, resource, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
import multiprocessing as mp
import numpy as np

METHODS = ('frozen', 'full', 'lora', 'qlora')
CLS_KEYS, TXT_KEYS = ('accuracy', 'auc'), ('cider', 'bleu4', 'hallucination')


def _rss_mb()->float: # resident memory of this process now
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


class _Scored:
    "Only `classify` and `caption` of a model, batched: what `evaluate_model` scores here"
    def __init__(self, model, bs, max_new_tokens): self.model, self.bs, self.mnt = model, bs, max_new_tokens
    def _b(self, f, imgs, **kw): return [f(imgs[i:i+self.bs], **kw) for i in range(0, len(imgs), self.bs)]
    def classify(self, imgs):
        import torch
        return dict(probs=torch.cat([o['probs'] for o in self._b(self.model.classify, imgs, generate=False)]))
    def caption(self, imgs): return [c for o in self._b(self.model.caption, imgs, max_new_tokens=self.mnt) for c in o]


def run_method(a:dict)->dict:
    "Fine-tune the aligned base with one method and score it (runs in a fresh process)"
    import torch
    torch.set_num_threads(a['threads'])
    from fastai.torch_core import set_seed
    from pathllm.data import load_patches
    from pathllm.tokenizer import PathTokenizer
    from pathllm.fusion import PathVLM, vlm_dataloaders
    from pathllm.finetune import finetune_run, merge_qlora, quantize_linears, model_bytes
    from pathllm.evaluate import evaluate_model
    out, root = Path(a['out']), Path(a['root'])
    tok = PathTokenizer.load(out/'base')
    dls = vlm_dataloaders(root, tok, bs=a['bs'], max_rows=a['max_rows'], seed=0)
    vds = load_patches(a['source']).subset(a['valid_idx'])
    rss0 = _rss_mb(); set_seed(0)
    m, st = finetune_run(PathVLM.from_pretrained(out/'base').train(), dls, a['method'], a['epochs'], a['lr'], out_dir=out/f"ft_{a['method']}")
    st.update(peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), start_rss_mb=round(rss0, 1))
    t0 = time.time()
    met, _ = evaluate_model(_Scored(m, 50, a['max_new_tokens']), vds)
    st.update({k: met.get(k) for k in CLS_KEYS + TXT_KEYS}, eval_seconds=round(time.time() - t0, 1))
    if a['method'] == 'qlora':
        disk = lambda p: sum(f.stat().st_size for f in Path(p).glob('*.safetensors'))
        merged = merge_qlora(m); merged.save_pretrained(out/'qlora_merged')
        served = merged; quantize_linears(served.lm); served.save_pretrained(out/'qlora_served')
        st['serving'] = [dict(step='QLoRA: 4-bit LM + adapters (adapters on disk)', weight_bytes=st['train_bytes'] and model_bytes(m), disk_bytes=st['disk_bytes']),
                         dict(step='merged fp32', weight_bytes=None, disk_bytes=disk(out/'qlora_merged')),
                         dict(step='re-quantised NF4 (LM linears)', weight_bytes=model_bytes(served), disk_bytes=disk(out/'qlora_served'))]
        st['serving'][1]['weight_bytes'] = model_bytes(PathVLM.from_pretrained(out/'qlora_merged'))
    return st


def prepare(args)->dict:
    "Balanced PCam subset, captioned; tokenizer; the stage-1 aligned tiny base model"
    import torch
    torch.set_num_threads(args.threads)
    from fastai.torch_core import set_seed
    from pathllm.data import pcam_dir, load_patches
    from pathllm.captions import caption_dataset
    from pathllm.tokenizer import PathTokenizer
    from pathllm.fusion import PathVLM, VLMConfig, vlm_records, vlm_dataloaders, vlm_learner
    src = Path(args.data) if args.data else pcam_dir()
    if src is None: raise SystemExit('no PCam: set PATHLLM_PCAM or put labels.csv under ../shared/data/pcam')
    ds, rng, out = load_patches(src), np.random.default_rng(0), Path(args.out)
    pick = lambda split, n: [int(i) for c in (0, 1) for i in rng.permutation(np.flatnonzero((ds.items.split == split).to_numpy() & (ds.labels == c)))[:n // 2]]
    t0, trn, val = time.time(), pick('train', args.n_train), pick('valid', args.n_valid)
    root = caption_dataset(ds.subset(trn + val), out=out/'data', progress=False)
    t_cap = time.time() - t0
    tok = PathTokenizer.train([t for r in vlm_records(root, 'train') for t in (r['prompt'], r['response'])], args.vocab)
    set_seed(0); base = PathVLM(VLMConfig.from_name(args.size, lm_vocab_size=len(tok)), tok)
    l1 = vlm_learner(vlm_dataloaders(root, tok, tasks=['caption'], bs=args.bs, seed=0), base, 1, 3e-3)
    with l1.no_bar(), l1.no_logging(): l1.fit_one_cycle(1, 3e-3)
    base.save_pretrained(out/'base')
    return dict(root=str(root), source=str(src), valid_idx=val, caption_seconds=round(t_cap, 1), stage1_seconds=round(time.time() - t0 - t_cap, 1),
                stage1_loss=round(float(l1.recorder.losses[-1]), 4), vocab=len(tok))


def markdown(res)->str:
    f = lambda v: '—' if v is None else f'{v:.3f}' if isinstance(v, float) else f'{v:,}' if isinstance(v, int) else str(v)
    cols = ['trainable', 'pct', 'steps', 's_per_step', 'train_bytes', 'peak_rss_mb', 'disk_bytes', 'loss', *CLS_KEYS, *TXT_KEYS]
    lines = [f"# Fine-tuning methods on `{Path(res['source']).name}` ({res['args']['size']} `PathVLM`)", '',
             f"{res['args']['n_train']} train / {res['args']['n_valid']} valid patches ({res['n_rows']} instruction rows, capped at "
             f"{res['args']['max_rows']}), {res['args']['epochs']} epoch(s) at lr {res['args']['lr']}, batch {res['args']['bs']}; "
             f"{res['total_seconds']:.0f} s on {res['machine']}.", '',
             '`train_bytes`: weights + gradients + optimiser state (no activations); `peak_rss_mb`: peak resident memory of the '
             "method's own process (torch and data included); `disk_bytes`: what the method has to store (LoRA/QLoRA: adapters and "
             'the connector copy; the base model is shared). Accuracy/AUC from `classify` probabilities; captions from `PathVLM.caption` '
             'with its default grounding (`cfg.vlm_ground`), scored by `pathllm.evaluate` against 3 reference captions of the measured patch.', '',
             '| method | ' + ' | '.join(cols) + ' |', '|---' * (len(cols) + 1) + '|']
    lines += ['| ' + m + ' | ' + ' | '.join(f(r.get(c)) for c in cols) + ' |' for m, r in res['methods'].items()]
    if 'serving' in res['methods'].get('qlora', {}):
        lines += ['', 'Serving the QLoRA model:', '', '| step | weight bytes | disk bytes |', '|---|---|---|']
        lines += [f"| {s['step']} | {f(s['weight_bytes'])} | {f(s['disk_bytes'])} |" for s in res['methods']['qlora']['serving']]
    return '\n'.join(lines) + '\n'


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default=None, help='PCam folder (default: pathllm.data.pcam_dir())')
    p.add_argument('--out', default='bench/results/finetune')
    p.add_argument('--n-train', type=int, default=200); p.add_argument('--n-valid', type=int, default=60)
    p.add_argument('--size', default='tiny'); p.add_argument('--vocab', type=int, default=512)
    p.add_argument('--bs', type=int, default=16); p.add_argument('--max-rows', type=int, default=320)
    p.add_argument('--epochs', type=int, default=1); p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--max-new-tokens', type=int, default=32); p.add_argument('--threads', type=int, default=2)
    p.add_argument('--methods', default=','.join(METHODS))
    p.add_argument('--resume', action='store_true', help='reuse the captioned subset and aligned base of an earlier run in --out')
    p.add_argument('--tiny', action='store_true', help='48 synthetic patches, a few rows: checks every method in seconds (CI)')
    args = p.parse_args(); t0 = time.time()
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from pathllm.data import make_synthetic
        args.n_train, args.n_valid, args.max_rows, args.max_new_tokens, args.threads, args.bs = 32, 8, 32, 8, 1, 8
        args.data = str(make_synthetic(out/'synth', 'pcam', n=48, seed=0, progress=False))
    ctx = mp.get_context('spawn')
    if args.resume and (out/'prep.json').exists(): prep = json.loads((out/'prep.json').read_text())
    else:
        with ctx.Pool(1) as pool: prep = pool.apply(prepare, (args,))
        (out/'prep.json').write_text(json.dumps(prep))
    res = dict(args=vars(args), machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch threads",
               **{k: v for k, v in prep.items() if k != 'valid_idx'}, methods={})
    res['n_rows'] = sum(1 for _ in open(Path(prep['root'])/'instructions_train.jsonl'))
    for m in args.methods.split(','):
        a = dict(method=m, root=prep['root'], out=str(out), bs=args.bs, max_rows=args.max_rows, epochs=args.epochs, lr=args.lr,
                 max_new_tokens=args.max_new_tokens, threads=args.threads, source=prep['source'], valid_idx=prep['valid_idx'])
        with ctx.Pool(1, maxtasksperchild=1) as pool: res['methods'][m] = pool.apply(run_method, (a,))
        print(m, {k: v for k, v in res['methods'][m].items() if k != 'serving'}, flush=True)
    res['total_seconds'] = round(time.time() - t0, 1)
    (out/'finetune.json').write_text(json.dumps(res, indent=2, default=str))
    (out/'finetune.md').write_text(markdown(res))
    print(markdown(res))


if __name__ == '__main__': main()
