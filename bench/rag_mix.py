"""RAG's settings, chosen on dev: `pathllm.rag.rag_sweep` on a trained run's `dev` patches.

The `dev` split is carved from the training patches by `pathllm train` (its `data/captions.csv`); valid is never read.
The index holds the run's training patches, embedded by its model, with the captions it was trained on (as the
prompting comparison's). Rows: no RAG; the weight of the neighbours' vote in the class probabilities (`mix`); then,
at the weight of the best AUC, the caption written from the image or with the references in its prompt, with and
without re-sampling to the class. `pathllm.rag.RAG_MIX` and `rag_answer`'s caption defaults are what this chose.
Writes `<out>/rag_sweep.json` (the table, run, patches, seconds, environment).

    python bench/rag_mix.py --run runs/small-s0 --n 1000 --out results/small/choices   # real PCam
    python bench/rag_mix.py --tiny --out /tmp/rag    # the bench's tiny config on synthetic patches (CI)
"""
import argparse, json, os, time
from pathlib import Path

for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'TRANSFORMERS_OFFLINE'): os.environ.setdefault(k, '1')
import numpy as np, torch
from PIL import Image
from pathllm.data import atomic_write, environment_info
from pathllm.captions import measure, claim_counts
from pathllm.bench import tiny_run, dev_rows
from pathllm.fusion import PathVLM
from pathllm.rag import PatchIndex, image_embeddings, rag_sweep


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--run', default=None, help='a `pathllm train` output folder (`model/`, `data/captions.csv`)')
    p.add_argument('--n', type=int, default=1000, help='dev patches (a seeded sample; all when fewer)')
    p.add_argument('--k', type=int, default=4, help='references per prompt')
    p.add_argument('--mixes', default='0,0.2,0.4,0.6,0.8,1.0', help="weights of the neighbours' vote")
    p.add_argument('--tries', type=int, default=8, help='re-samples of a caption that does not state the class')
    p.add_argument('--max-new-tokens', type=int, default=48, help='caption length (as the prompting comparison)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default='bench/results/rag_mix')
    p.add_argument('--tiny', action='store_true', help="train the bench's tiny config on synthetic patches (CI)")
    a = p.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True); torch.set_num_threads(a.threads); t0 = time.time()
    if a.tiny: a.run, a.n, a.mixes, a.tries, a.max_new_tokens = tiny_run(out), 8, '0,0.5,1', 2, 16
    if a.run is None: raise SystemExit('--run: a trained run folder is needed (or --tiny)')
    run = Path(a.run); trn, dev = dev_rows(run, a.n)
    model = PathVLM.from_pretrained(run/'model').eval()
    img = lambda f: Image.open(run/'data'/f).convert('RGB')
    emb = image_embeddings(model, [img(f) for f in trn.image], bs=128)
    ix = PatchIndex(emb.shape[1]).add(emb, list(trn.image), trn.label.tolist(), trn.caption.tolist())
    imgs, y = [img(f) for f in dev.image], dev.label.to_numpy()
    ms = [measure(np.asarray(i)) for i in imgs]
    claims = lambda texts: claim_counts(texts, ms, list(y), model.cfg.vlm_kind, thr=model.thresholds)
    tab = rag_sweep(model, ix, imgs, y, claims, None, a.k, tuple(float(m) for m in a.mixes.split(',')), a.tries,
                    a.max_new_tokens)
    res = dict(run=str(run), split='dev', n=len(dev), index=len(ix), k=a.k, tries=a.tries,
               max_new_tokens=a.max_new_tokens, table=tab.round(4).to_dict('records'),
               seconds=round(time.time() - t0, 1), environment=environment_info())
    atomic_write(out/'rag_sweep.json', json.dumps(res, indent=1))
    print(tab.round(4).to_string(index=False))


if __name__ == '__main__': main()
