"""Prompting techniques and retrieval-augmented generation on real PCam, on one validation subset.

Trains a small fused model with `pathllm.train.run_train` (the `small` config, subsampled and shortened) on the real PCam folder of
`pathllm.data.pcam_dir()`, or takes one already trained (`--model DIR`). Then, on the same seeded validation patches:

- the techniques of `pathllm.prompting`: zero-shot (with and without a system prompt), few-shot with example images
  and with text examples, chain-of-thought, self-consistency, constrained answers, zero-shot and few-shot captioning;
- `pathllm.rag`: no RAG vs RAG with k = 1, 4, 8 reference cases vs a kNN classifier on the model's image embeddings.

Reports accuracy and AUC (classification), CIDEr and ROUGE-L of the descriptions against the validation patches'
reference captions, tokens generated and seconds per image. Writes `bench/results/prompting/results.json` and
`results.md` (gitignored).

    python bench/prompting.py                         # train (1000 patches, ~10 min on 2 free CPU cores), then compare
    python bench/prompting.py --model runs/x/model    # compare only
    python bench/prompting.py --tiny --out /tmp/pr    # the bench's `tiny` model on synthetic patches: checks the script (CI)
"""
import argparse, json, os, platform, time
from functools import partial
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('HF_DATASETS_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
import numpy as np, torch
from pathllm.data import pcam_dir, load_patches, make_synthetic
from pathllm.captions import measure, caption
from pathllm.fusion import PathVLM
from pathllm.prompting import (zero_shot, few_shot, chain_of_thought, self_consistency, constrained, pick_examples,
                               compare_techniques, paraphrase_eval)
from pathllm.rag import build_index, rag_answer, knn_answer
from pathllm.evaluate import cider, rouge_l


def train(a, out: Path) -> Path:
    "Train the `small` config on a subsample of real PCam; return the model folder"
    from pathllm.train import run_train, load_config
    from pathllm.bench import bench_config
    cfg = bench_config('tiny').train_config() if a.tiny else \
          load_config('small', max_train=a.max_train, max_valid=a.n_valid, vision_epochs=a.vision_epochs, stage2_epochs=a.stage2_epochs,
                      max_rows=a.max_rows, eval_captions=16)
    run_train(cfg, data=a.data, out=out/'run', progress=False)
    return out/'run'/'model'


def text_metrics(texts, refs): return dict(cider=cider(texts, refs), rouge_l=rouge_l(texts, refs))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=None, help='PCam folder (default: pathllm.data.pcam_dir())')
    p.add_argument('--model', default=None, help='a trained model folder (default: train one)')
    p.add_argument('--out', default='bench/results/prompting')
    p.add_argument('--max-train', type=int, default=1000, help='training patches when training')
    p.add_argument('--vision-epochs', type=int, default=3, help='image-only baseline epochs when training')
    p.add_argument('--stage2-epochs', type=int, default=1, help='instruction-tuning epochs when training')
    p.add_argument('--max-rows', type=int, default=1500, help='instruction rows per stage-2 epoch when training')
    p.add_argument('--n-valid', type=int, default=200, help='validation patches compared')
    p.add_argument('--n-index', type=int, default=1000, help='training patches in the retrieval index')
    p.add_argument('--shots', type=int, default=2, help='few-shot examples')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--tiny', action='store_true', help="the bench's `tiny` model on 96 synthetic patches, 8 compared: checks the script (CI)")
    a = p.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True); t0 = time.time()
    if a.tiny: a.data, a.n_valid, a.n_index, a.shots, a.threads = str(make_synthetic(out/'synth', 'pcam', n=96, seed=0, progress=False)), 8, 32, 1, 1
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    a.data = a.data or pcam_dir()
    if a.data is None: raise SystemExit('no real PCam: set PATHLLM_PCAM or put it in ../shared/data/pcam')
    mdir = Path(a.model) if a.model else train(a, out)
    train_s = time.time() - t0
    model, ds = PathVLM.from_pretrained(mdir), load_patches(a.data)
    rng = np.random.default_rng(0)
    va = ds.split('valid'); va = va.subset(sorted(rng.permutation(len(va))[:a.n_valid]))
    imgs, y, vids = [va.image(i) for i in range(len(va))], np.asarray(va.labels), va.ids
    refs = [caption(measure(np.asarray(im), 'pcam'), int(l), 'pcam', seed=i) for i, (im, l) in enumerate(zip(imgs, y))]
    t1 = time.time()
    ix = build_index(mdir, a.data, out/'index', split='train', n=a.n_index)
    index_s = time.time() - t1
    pos = {s: i for i, s in enumerate(ds.ids)}
    assert not set(vids) & set(ix.ids)  # validation patches are not indexed: RAG and kNN cannot retrieve the query itself
    ex = pick_examples(ix.captions, ix.labels, k=a.shots, images=_Lazy(ds, [pos[s] for s in ix.ids]))
    techs = {
        'zero-shot': partial(zero_shot, model),
        'zero-shot + system prompt': partial(zero_shot, model, prompt='class_system'),
        f'few-shot (k={a.shots}, images)': partial(few_shot, model, examples=ex),
        f'few-shot (k={a.shots}, text)': partial(few_shot, model, examples=ex, with_images=False),
        'chain-of-thought': partial(chain_of_thought, model, max_new_tokens=48),
        'self-consistency (n=5)': partial(self_consistency, model, n=5),
        'constrained': partial(constrained, model),
        'caption zero-shot': partial(zero_shot, model, prompt='describe', max_new_tokens=64),
        f'caption few-shot (k={a.shots}, images)': partial(few_shot, model, examples=ex, prompt='describe', answer='caption', max_new_tokens=64),
        'no RAG (constrained + caption)': lambda im: rag_answer(model, ix, im, None, k=0),
        **{f'RAG k={k}': (lambda k: lambda im: rag_answer(model, ix, im, None, k=k))(k) for k in (1, 4, 8)},
        'kNN k=10 (image embeddings)': lambda im: knn_answer(model, ix, im, None, k=10),
    }
    rows = {}
    for name, fn in techs.items():  # in batches, so that long prompts fit in memory
        rows[name] = _batched(fn, imgs, y, refs, bs=50)
        print(f'{name:40s}', {k: round(v, 3) for k, v in rows[name].items()}, flush=True)
    para = paraphrase_eval(model, imgs, y).groupby('group')[['accuracy', 'unknown']].mean()
    res = dict(data=str(a.data), model=str(mdir), n_valid=len(imgs), n_index=len(ix), shots=a.shots, train_seconds=round(train_s, 1),
               index_seconds=round(index_s, 1), threads=a.threads, machine=platform.processor() or platform.machine(),
               config=json.loads((mdir/'config.json').read_text()) if (mdir/'config.json').exists() else None,
               techniques=rows, paraphrases=para.round(4).to_dict('index'), seconds=round(time.time() - t0, 1))
    (out/'results.json').write_text(json.dumps(res, indent=2, default=float))
    (out/'results.md').write_text(_markdown(res))
    print(_markdown(res))


class _Lazy:
    "A list of the images of `ds` at `idx`, decoded on access (only the few picked examples are read)"
    def __init__(self, ds, idx): self.ds, self.idx = ds, idx
    def __len__(self): return len(self.idx)
    def __getitem__(self, i): return self.ds.image(self.idx[i])


def _batched(fn, imgs, y, refs, bs):
    "`compare_techniques` of one technique, over batches of `bs` images, pooled (time and tokens summed, metrics on all)"
    outs, t0 = [], time.time()
    for i in range(0, len(imgs), bs): outs.append(fn(imgs[i:i+bs]))
    s = time.time() - t0
    cat = {k: (torch.cat([torch.as_tensor(o[k]) for o in outs]) if outs[0].get(k) is not None else None) for k in ('pred', 'probs', 'n_tokens')}
    merged = dict(pred=cat['pred'].numpy(), probs=cat['probs'], n_tokens=cat['n_tokens'].numpy(),
                  text=sum((o['text'] for o in outs), []) if outs[0].get('text') is not None else None)
    row = compare_techniques({'x': lambda _: merged}, imgs, y, refs=refs, text_metrics=text_metrics).iloc[0].to_dict()
    row['s_per_image'] = s / len(imgs)
    return {k: float(v) for k, v in row.items()}


def _markdown(r):
    cols = ['accuracy', 'auc', 'unknown', 'cider', 'rouge_l', 'tokens_per_image', 's_per_image']
    f = lambda v: '—' if v is None or v != v else f'{v:.3f}'
    lines = [f"# Prompting and RAG on real PCam", '',
             f"{r['n_valid']} validation patches (seeded), index of {r['n_index']} training patches, model `{r['model']}` "
             f"(trained in {r['train_seconds']} s), {r['threads']} torch threads, total {r['seconds']} s.", '',
             '| technique | ' + ' | '.join(cols) + ' |', '|---' * (len(cols) + 1) + '|']
    lines += [f'| {n} | ' + ' | '.join(f(row.get(c)) for c in cols) + ' |' for n, row in r['techniques'].items()]
    lines += ['', 'Instruction following (greedy answers to the class question):', '', '| phrasings | accuracy | unknown |', '|---|---|---|']
    lines += [f"| {g} | {v['accuracy']:.3f} | {v['unknown']:.3f} |" for g, v in r['paraphrases'].items()]
    return '\n'.join(lines) + '\n'


if __name__ == '__main__': main()
