"""The main job on real PCam: image-only baseline vs fused model, and grounded vs free captions.

Trains everything with `pathllm.train.run_train` (the `small` config by default: a from-scratch ResNet-10-T baseline on
the centre 64 pixels of all training patches, its encoder frozen in the fused model, both scored with dihedral TTA),
then captions the same validation patches with each caption grounding mode of `PathVLM.caption` ('none', 'class',
'rerank') and scores them against the patches' measurements.

Writes `OUT/fusion_pcam.json` and `OUT/fusion_pcam.md`; the run itself (report, plots, model) is in `OUT/run`.

    python bench/fusion_pcam.py                          # real PCam from `pathllm.data.pcam_dir()`, config 'small'
    python bench/fusion_pcam.py --config debug --out /tmp/fp --resume
"""
import argparse, json, os, platform, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
import torch
from pathllm.data import pcam_dir, load_patches, atomic_write
from pathllm.evaluate import evaluate_model
from pathllm.fusion import PathVLM
from pathllm.train import run_train, load_config

CLS_KEYS = ('accuracy', 'balanced_accuracy', 'auc', 'f1')
TXT_KEYS = ('bleu4', 'rouge_l', 'cider', 'hallucination')


class Grounded:
    "Only `caption` and `report` of a `PathVLM`, with one grounding mode, batched: what `evaluate_model` scores"
    def __init__(self, model, ground, bs, max_new_tokens, reports):
        self.model, self.ground, self.bs, self.mnt = model, ground, bs, max_new_tokens
        if reports: self.report = self._report
    def _batched(self, f, imgs, **kw): return [o for i in range(0, len(imgs), self.bs) for o in f(imgs[i:i+self.bs], ground=self.ground, **kw)]
    def caption(self, imgs): return self._batched(self.model.caption, imgs, max_new_tokens=self.mnt)
    def _report(self, imgs): return self._batched(self.model.report, imgs)


def grounding(model_dir, ds, n, bs, max_new_tokens, modes, reports):
    "Caption (and report) the first `n` patches of `ds` with each grounding mode; text metrics and seconds per mode"
    model, out = PathVLM.from_pretrained(model_dir), {}
    for g in modes:
        t0 = time.time()
        met, _ = evaluate_model(Grounded(model, g, bs, max_new_tokens, reports), ds, n=n)
        out[g] = dict({k: v for k, v in met.items() if k in TXT_KEYS or k.startswith('report_')}, seconds=round(time.time() - t0, 1))
    return out


def markdown(res):
    r, b, g = res['fused'], res['baseline'], res['grounding']
    f = lambda v: f'{v:.3f}' if isinstance(v, float) else str(v)
    lines = [f"# Fused model vs image-only baseline on real PCam (config `{res['config']['name']}`)", '',
             f"{res['n_train']} train / {res['n_valid']} valid patches, {res['config']['vit_name']} vision, "
             f"Stage seconds of this invocation ({res['machine']}; 0 = finished earlier and resumed): "
             + ', '.join(f"{k} {v['seconds']:.0f}" for k, v in res['stages'].items()) + '.', '',
             '| model | ' + ' | '.join(CLS_KEYS) + ' |', '|---' * (len(CLS_KEYS) + 1) + '|',
             '| image-only baseline | ' + ' | '.join(f(b.get(k)) for k in CLS_KEYS) + ' |',
             '| fused (class log-likelihood) | ' + ' | '.join(f(r.get(k)) for k in CLS_KEYS) + ' |', '',
             f"Targets: accuracy >= 0.85, AUC >= 0.92, fused within 0.01 of the baseline: "
             f"{'met' if res['targets_met'] else 'NOT met'}.", '',
             f"Captions of {res['n_captioned']} validation patches by grounding mode of `PathVLM.caption`:", '',
             '| grounding | ' + ' | '.join(TXT_KEYS) + ' | seconds |', '|---' * (len(TXT_KEYS) + 2) + '|']
    lines += ['| ' + m + ' | ' + ' | '.join(f(v.get(k)) for k in TXT_KEYS) + f" | {v['seconds']} |" for m, v in g.items()]
    if any('report_hallucination' in v for v in g.values()):
        lines += ['', '| grounding | report_bleu4 | report_hallucination | report_impression_acc |', '|---|---|---|---|']
        lines += [f"| {m} | {f(v.get('report_bleu4'))} | {f(v.get('report_hallucination'))} | {f(v.get('report_impression_acc'))} |" for m, v in g.items()]
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', default=None, help="PCam folder (default: pathllm.data.pcam_dir())")
    ap.add_argument('--config', default='small', help="named config or JSON file for run_train")
    ap.add_argument('--out', default='bench/results/fusion_pcam', help="output folder")
    ap.add_argument('--resume', action='store_true', help="skip the finished stages of OUT/run")
    ap.add_argument('--n-captions', type=int, default=128, help="validation patches captioned per grounding mode")
    ap.add_argument('--modes', default='none,class,rerank', help="comma-separated grounding modes to compare")
    ap.add_argument('--reports', action='store_true', help="also write and score reports per grounding mode")
    a = ap.parse_args()
    data = a.data or pcam_dir()
    if data is None: raise SystemExit("data: no real PCam found (set PATHLLM_PCAM or pass --data)")
    out, cfg = Path(a.out), load_config(a.config)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rep = run_train(cfg, data, out/'run', resume=a.resume, progress=True)
    run_s = rep['config']['seconds'] if rep['config'].get('seconds') else time.time() - t0
    prep = json.loads((out/'run'/'data.json').read_text())
    val = load_patches(data).subset(prep['valid'])
    fused, base = rep, rep['baseline']
    ok = fused['accuracy'] >= 0.85 and fused['auc'] >= 0.92 and all(fused[k] >= base[k] - 0.01 for k in ('accuracy', 'auc'))
    res = dict(config=rep['config']['train'], n_train=len(prep['train']), n_valid=len(prep['valid']), run_seconds=run_s,
               stages=rep['config']['stages'], machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
               baseline={k: base.get(k) for k in CLS_KEYS}, fused={k: fused.get(k) for k in CLS_KEYS}, targets_met=bool(ok),
               run_caption_metrics={k: fused.get(k) for k in TXT_KEYS}, n_captioned=min(a.n_captions, len(val)),
               grounding=grounding(out/'run'/'model', val, a.n_captions, cfg.bs, cfg.caption_tokens, a.modes.split(','), a.reports))
    atomic_write(out/'fusion_pcam.json', json.dumps(res, indent=2))
    atomic_write(out/'fusion_pcam.md', markdown(res))
    print(markdown(res))


if __name__ == '__main__': main()
