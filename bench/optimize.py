"""Quantization variants and a distilled student of a trained `PathVLM`, measured in one run on the same validation patches.

For every variant in `pathllm.optimize.VARIANTS` (fp32, fp16, bf16, int8_dynamic, bnb_int8, bnb_nf4, bnb_fp4): size on disk,
peak memory, latency per image, generation tokens/s, accuracy / AUC / CIDEr and their ratios to fp32 measured in the same
process. With `--distill-epochs N > 0` also a student (the teacher's vision encoder, a smaller LM) trained with
`DistillCallback`, and the same student trained without the teacher, as fractions of the teacher.

Writes `<out>/optimize.json` and `<out>/optimize.md`, plus `<out>/optimize.png` (trade-off plots).

    python bench/optimize.py                                    # trains a `debug` model on real PCam (or synthetic) first
    python bench/optimize.py --model runs/train/model           # an existing `run_train` model
    python bench/optimize.py --max-train 400 --n-eval 200 --distill-epochs 2
"""
import argparse, copy, json, os, platform, time
from dataclasses import replace
from pathlib import Path

for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'TRANSFORMERS_OFFLINE'): os.environ.setdefault(k, '1')
import warnings; warnings.filterwarnings('ignore', message='.*(kernels|deprecated|MatMul8bitLt).*')
import numpy as np, torch
from pathllm.data import pcam_dir, load_patches, atomic_write, LABEL_NAMES
from pathllm.captions import measure, caption
from pathllm.fusion import PathVLM, vlm_dataloaders, vlm_learner, init_vision, _fit
from pathllm.train import run_train, load_config
from pathllm.evaluate import classification_metrics, cider
from pathllm.optimize import VARIANTS, compare_variants, distill, median_time, disk_bytes, variant_stats


def _md(rows, cols):
    f = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
    return '\n'.join(['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)] + ['| ' + ' | '.join(f(r.get(c, '')) for c in cols) + ' |' for r in rows])


def _model(a, out):
    "The teacher: `--model`, or a model trained with `run_train` on `--data`; plus the captioned data folder"
    if a.model: return PathVLM.from_pretrained(a.model), (Path(a.root) if a.root else None), None
    cfg = load_config(a.config, max_train=a.max_train, max_valid=a.max_valid, seed=a.seed)
    t0 = time.time(); rep = run_train(cfg, data=a.data, out=out/'train', progress=False)
    prep = json.loads((out/'train'/'data.json').read_text())
    return PathVLM.from_pretrained(out/'train'/'model'), out/'train'/prep['root'], dict(seconds=round(time.time() - t0, 1), report={k: rep.get(k) for k in ('accuracy', 'auc', 'cider', 'bleu4')})


def _eval_set(a, data):
    ds = load_patches(data); split = next(s for s in ('valid', 'test', 'train') if s in ds.splits)
    idx = np.flatnonzero((ds.items.split == split).to_numpy())
    idx = np.random.default_rng(a.seed + 1).permutation(idx)[:a.n_eval].tolist()
    imgs, y = [ds.image(i) for i in idx], [int(ds.labels[i]) for i in idx]
    refs = [[caption(m, l, ds.kind, seed=s) for s in range(3)] for m, l in zip([measure(im, ds.kind) for im in imgs[:a.n_captions]], y)]
    return imgs, y, refs, dict(source=str(data), split=split, n=len(idx), n_captions=min(a.n_captions, len(idx)))


def _student(a, teacher, root, imgs, y, score):
    "KD student and a plain control: teacher's vision encoder (copied), a smaller LM; fractions of the teacher"
    scfg = replace(teacher.cfg, lm_n_layer=a.student_layers, lm_n_embd=a.student_embd, lm_n_head=max(2, a.student_embd // 32), lm_n_kv_head=None,
                   lm_kw={}, lm_path=None)
    dls = vlm_dataloaders(root, teacher.tok, tasks=['class', 'caption'], bs=a.bs, img_size=teacher.cfg.vit_img_size, max_rows=a.distill_rows, seed=a.seed)
    res = {}
    for name in ('student_kd', 'student_plain'):
        torch.manual_seed(a.seed); s = init_vision(PathVLM(scfg, teacher.tok), teacher.vision); t0 = time.time()
        if name == 'student_kd': h = distill(teacher, s, dls, epochs=a.distill_epochs, lr=a.distill_lr, T=a.kd_T, alpha=a.kd_alpha)
        else: h = _fit(vlm_learner(dls, s, stage=2, lr=a.distill_lr), a.distill_epochs, a.distill_lr)
        res[name] = (s.eval(), dict(train_seconds=round(time.time() - t0, 1), valid_loss=h['valid_loss'][-1]))
    rows = []
    for name, (m, extra) in [('teacher', (teacher, {})), *res.items()]:
        st = variant_stats(m, imgs, bs=a.bs, n_latency=a.n_latency, n_tokens=a.n_tokens, reps=a.reps, n_captions=a.n_captions)
        rows.append(dict(model=name, params=sum(p.numel() for p in m.parameters()), size_mb=st['size_bytes'] / 2**20,
                         ms_per_image=1e3 * st['s_per_image'], tokens_per_s=st['tokens_per_s'], **score(st['probs'], st['captions']), **extra))
    t = rows[0]
    for r in rows:
        for k in ('params', 'accuracy', 'auc', 'cider'): r[f'{k}_frac'] = r[k] / t[k] if t[k] else float('nan')
        r['speedup'] = t['ms_per_image'] / r['ms_per_image']
    return rows


def _plot(rows, path):
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 3, figsize=(12, 3.5))
    for r in rows:
        for ax, (x, yk) in zip(axs, [('size_mb', 'accuracy'), ('size_mb', 'ms_per_image'), ('size_mb', 'tokens_per_s')]):
            ax.scatter(r[x], r[yk]); ax.annotate(r['variant'], (r[x], r[yk]), fontsize=7); ax.set(xlabel='size on disk (MB)', ylabel=yk)
    plt.tight_layout(); atomic_write(path, lambda p: fig.savefig(p, format='png', dpi=90)); plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', default=None, help='patches for training and evaluation (default: real PCam when present, else synthetic)')
    ap.add_argument('--model', default=None, help='an existing PathVLM folder (skips training)')
    ap.add_argument('--root', default=None, help='captioned data folder for the distillation (with --model)')
    ap.add_argument('--config', default='debug', help='run_train config of the teacher when --model is not given')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'optimize'))
    ap.add_argument('--variants', default=','.join(VARIANTS))
    for k, v in dict(max_train=400, max_valid=200, n_eval=200, n_captions=32, bs=32, n_latency=16, n_tokens=32, reps=3, threads=1, seed=0,
                     distill_epochs=2, distill_rows=2000, student_layers=1, student_embd=64).items():
        ap.add_argument('--' + k.replace('_', '-'), type=int, default=v)
    for k, v in dict(distill_lr=1e-3, kd_T=2.0, kd_alpha=0.5).items(): ap.add_argument('--' + k.replace('_', '-'), type=float, default=v)
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    a.data = a.data or (str(pcam_dir()) if pcam_dir() else None)
    t0 = time.time()
    teacher, root, trained = _model(a, out)
    imgs, y, refs, ev = _eval_set(a, a.data or out/'train'/'data')
    def score(probs, caps):
        m = classification_metrics(y, probs[:, 1].numpy())
        return dict(accuracy=m['accuracy'], auc=m['auc'], **({'cider': cider(caps, refs[:len(caps)])} if caps else {}))
    rows, _ = compare_variants(teacher, imgs, tuple(a.variants.split(',')), score=score, bs=a.bs, n_latency=a.n_latency,
                               n_tokens=a.n_tokens, reps=a.reps, n_captions=a.n_captions)
    kd = _student(a, teacher, root, imgs, y, score) if a.distill_epochs and root else []
    res = dict(config=vars(a), eval=ev, teacher_training=trained, device='cuda' if torch.cuda.is_available() else f'cpu ({torch.get_num_threads()} threads)',
               torch=torch.__version__, platform=platform.platform(), seconds=round(time.time() - t0, 1), variants=rows, distillation=kd)
    atomic_write(out/'optimize.json', json.dumps(res, indent=2, default=str))
    vc = ['variant', 'size_mb', 'size_ratio', 'peak_mb', 'ms_per_image', 'speedup', 'tokens_per_s', 'gen_speedup', 'agreement', 'max_prob_diff',
          'accuracy', 'accuracy_retained', 'auc', 'auc_retained', 'cider', 'cider_retained']
    kc = ['model', 'params', 'params_frac', 'size_mb', 'ms_per_image', 'speedup', 'tokens_per_s', 'accuracy', 'accuracy_frac', 'auc', 'auc_frac',
          'cider', 'cider_frac', 'valid_loss', 'train_seconds']
    md = (f"# Optimization benchmark\n\n{ev['n']} {ev['split']} patches of `{ev['source']}` ({ev['n_captions']} captioned), {res['device']}, "
          f"torch {torch.__version__}, {res['seconds']} s in all. Ratios are to fp32 (or the teacher) measured in this run.\n\n"
          f"## Quantization (LM and connector linears; vision encoder in fp32 except fp16/bf16)\n\n{_md(rows, vc)}\n")
    if kd: md += f"\n## Distillation (student: teacher's vision encoder, {a.student_layers}-layer {a.student_embd}-wide LM; {a.distill_epochs} epochs, T={a.kd_T}, alpha={a.kd_alpha})\n\n{_md(kd, kc)}\n"
    atomic_write(out/'optimize.md', md)
    _plot(rows, out/'optimize.png')
    print(md)


if __name__ == '__main__': main()
