"""Quantized variants and distilled students of a trained `PathVLM`, measured in one run on the same patches.

Variants (`pathllm.optimize.VARIANTS`: fp32, fp16, bf16, int8_dynamic, bnb_int8, bnb_nf4, bnb_fp4, ort_fp32, ort_int8): size on
disk, peak memory, ms/image of `classify` at batch 1 and at `--bs`, greedy generation tokens/s, each timing as a ratio to fp32
from the same interleaved rounds (median and [min, max]), and accuracy / AUC / CIDEr with their ratios to fp32.
Distillation (`--distill-epochs N > 0`): a student (the teacher's vision encoder, frozen; a smaller LM) trained alone on the
labels and trained with `distill` (token KD, class-decision KD, both), as fractions of the teacher, over `--seeds` seeds.

Writes `<out>/optimize.json`, `<out>/optimize.md`, `<out>/speed.json`, `<out>/speed.md` and `<out>/optimize.png`.
`--batching` instead times only the fused model's stage-2 epochs with random, length-sorted and packed batches, the packed ones
attended row by row and through one mask (`pathllm.optimize.batching_speed`, on the teacher's own training rows) and writes `<out>/batching.json`. `--pipeline` instead
times only the baseline's training input pipelines (`pathllm.optimize.pipeline_speed`: per item, batched, batched in
channels_last, and in bfloat16 where the CPU computes it, `--pipeline-bf16` to time emulated bfloat16 too) with the encoder of `small` (or `--pipeline-config`) and writes `<out>/pipeline.json` and `<out>/pipeline.md`.

    python bench/optimize.py                                    # trains the bench's `debug` teacher on real PCam (or synthetic) first
    python bench/optimize.py --model runs/train                 # a `run_train` folder: its model, data and validation patches
    python bench/optimize.py --tiny --out /tmp/opt              # the bench's `tiny` teacher on synthetic patches: every code path (CI)
    python bench/optimize.py --pipeline --out results/optimize/pipeline   # the baseline's input pipelines on real PCam
    python bench/optimize.py --pipeline --pipeline-config small-96 --out results/optimize/pipeline-96   # the whole-patch encoder
"""
import argparse, json, os, time
from dataclasses import replace
from pathlib import Path

for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'TRANSFORMERS_OFFLINE'): os.environ.setdefault(k, '1')
import warnings; warnings.filterwarnings('ignore', message='.*(kernels|deprecated|MatMul8bitLt).*')
import numpy as np, torch
from pathllm.data import pcam_dir, make_synthetic, load_patches, atomic_write, environment_info, data_fingerprint, native_bf16
from pathllm.captions import measure, caption
from pathllm.fusion import PathVLM, vlm_dataloaders, vlm_learner, init_vision
from pathllm.fit import fit_stage
from pathllm.train import run_train, load_config
from pathllm.bench import bench_config
from pathllm.evaluate import classification_metrics, cider
from pathllm.optimize import (VARIANTS, compare_variants, distill, variant_outputs, speed_report, speed_markdown, compile_model,
                              train_step_seconds, GradAccum, pipeline_speed, batching_speed)
from pathllm.captions import read_corpus
from pathllm.lm import lm_loss, pack_tokens



def _md(rows, cols):
    f = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
    return '\n'.join(['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)] + ['| ' + ' | '.join(f(r.get(c, '')) for c in cols) + ' |' for r in rows])


def _model(a, out):
    "The teacher: `--model` (a model folder, or a `run_train` folder), or one trained with `run_train` on `--data`; its captioned data and split"
    if a.model and (Path(a.model)/'data.json').exists():
        run = Path(a.model); prep = json.loads((run/'data.json').read_text())
        return PathVLM.from_pretrained(run/'model'), run/prep['root'], dict(run=str(run), report={k: json.loads((run/'report.json').read_text()).get(k) for k in ('accuracy', 'auc')}), prep
    if a.model: return PathVLM.from_pretrained(a.model), (Path(a.root) if a.root else None), None, None
    # the teacher: the bench's training config ('debug': `pathllm.bench.BENCH_CONFIGS['debug']`; --tiny: the bench's 'tiny'), or a run_train config
    cfg = bench_config('tiny' if a.tiny else 'debug', seed=a.seed).train_config() if a.tiny or a.config == 'debug' else load_config(a.config, seed=a.seed)
    t0 = time.time(); rep = run_train(cfg, data=a.data, out=out/'train', progress=False)
    prep = json.loads((out/'train'/'data.json').read_text())
    trained = dict(config=cfg.__dict__, seconds=round(time.time() - t0, 1), report={k: rep.get(k) for k in ('accuracy', 'auc', 'cider', 'bleu4')})
    return PathVLM.from_pretrained(out/'train'/'model'), out/'train'/prep['root'], trained, prep


def _eval_set(a, data, prep, split):
    """Patches to score: 'valid' (the teacher's validation patches), 'valid_all' (the data's valid/test split), or 'dev': training-split
    patches the teacher was not trained on (settings are chosen there; 'valid' is scored once per published configuration)"""
    ds = load_patches(data)
    if split == 'dev':
        used = set(prep['train']) if prep else set()
        idx = [i for i in np.flatnonzero((ds.items.split == 'train').to_numpy()) if i not in used]
    elif prep and prep.get('valid') and split == 'valid': idx = prep['valid']
    else: idx = np.flatnonzero((ds.items.split == next(s for s in ('valid', 'test', 'train') if s in ds.splits)).to_numpy())
    idx = [int(i) for i in np.random.default_rng(a.seed + 1).permutation(idx)[:a.n_eval]]
    imgs, y = [ds.image(i) for i in idx], [int(ds.labels[i]) for i in idx]
    refs = [[caption(m, l, ds.kind, seed=s) for s in range(3)] for m, l in zip([measure(im, ds.kind) for im in imgs[:a.n_captions]], y)]
    return imgs, y, refs, dict(source=str(data), split=split, n=len(idx), n_captions=min(a.n_captions, len(idx)), fingerprint=data_fingerprint(ds))


def _vision_of(m):
    "What `init_vision` starts a student from: the teacher's encoder, with its readout heads when the teacher reads concept tokens"
    return m.vision if m.readout is None else torch.nn.ModuleDict(dict(encoder=m.vision, readout=m.readout))


STUDENTS = dict(plain=None, kd_tokens=dict(alpha=0.5), kd_class=dict(alpha=0., cls_weight=2.), kd_both=dict(alpha=0.5, cls_weight=2.))


def _student(a, teacher, root, score, imgs):
    "Students (the teacher's vision encoder, copied and frozen; a smaller LM) trained alone and with `distill`, over seeds"
    scfg = replace(teacher.cfg, lm_n_layer=a.student_layers, lm_n_embd=a.student_embd, lm_n_head=max(2, a.student_embd // 24), lm_n_kv_head=None,
                   lm_kw={}, lm_path=None)
    dls = lambda seed: vlm_dataloaders(root, teacher.tok, tasks=['class', 'caption'], bs=a.bs, img_size=teacher.cfg.vit_img_size,
                                       max_rows=a.distill_rows, repeat={'class': a.class_repeat}, max_valid_rows=200, seed=seed)
    n = lambda m: sum(p.numel() for p in m.parameters())
    t = score(variant_outputs(teacher, imgs, a.bs)['probs'], []) | dict(model='teacher', seed=a.seed, params=n(teacher))
    rows = [t]
    for seed in range(a.seed, a.seed + a.seeds):
        for name in a.students.split(','):
            torch.manual_seed(seed); s = init_vision(PathVLM(scfg, teacher.tok), _vision_of(teacher)); t0, d = time.time(), dls(seed)
            if STUDENTS[name] is None: h = fit_stage(vlm_learner(d, s, stage=2, lr=a.distill_lr, freeze_vision=True), a.distill_epochs, a.distill_lr)
            else: h = distill(teacher, s, d, epochs=a.distill_epochs, lr=a.distill_lr, T=a.kd_T, freeze_vision=True, **STUDENTS[name])
            probs = variant_outputs(s.eval(), imgs, a.bs)['probs']
            r = score(probs, []) | dict(model=name, seed=seed, params=n(s), train_seconds=round(time.time() - t0, 1), valid_loss=h['valid_loss'][-1],
                                        frac_predicted_1=float(probs.argmax(-1).float().mean()))
            rows.append(r | {f'{k}_frac': r[k] / t[k] for k in ('params', 'accuracy', 'auc')})
    return rows


def _summary(rows):
    "Per student kind: mean, min and max over seeds of its accuracy fraction of the teacher"
    out = []
    for name in dict.fromkeys(r['model'] for r in rows[1:]):
        v = [r['accuracy_frac'] for r in rows if r['model'] == name]
        out.append(dict(model=name, seeds=len(v), params_frac=rows[[r['model'] for r in rows].index(name)]['params_frac'],
                        accuracy_frac_mean=float(np.mean(v)), accuracy_frac_min=min(v), accuracy_frac_max=max(v),
                        accuracy_mean=float(np.mean([r['accuracy'] for r in rows if r['model'] == name]))))
    return out


def _train_speed(a, teacher, root):
    """Training step time of the teacher's LM (packed text windows) and of the whole fused model (stage-2 rows), eager and compiled
    (inductor, dynamic shapes), in interleaved rounds after a warm-up that pays the compilation; and fused-model samples/s of
    one epoch at batch `bs` against `bs/4` with `GradAccum(4)` (the same effective batch)"""
    import copy
    tok, steps = teacher.tok, a.train_steps
    win = pack_tokens([tok.encode(t, add_bos=True, add_eos=True) for t in read_corpus(root, 'train')], 128)
    lm_b = [(w[:, :-1], w[:, 1:]) for w in win[:a.bs * 4].split(a.bs)]
    d = vlm_dataloaders(root, tok, bs=a.bs, img_size=teacher.cfg.vit_img_size, max_rows=a.bs * 4, seed=a.seed)
    vlm_b = [tuple(t.cpu() for t in b) for b in d.train]
    cases = dict(lm=(teacher.lm, lm_b, lambda m, b: lm_loss(m(b[0])[0], b[1])), fused=(teacher, vlm_b, lambda m, b: lm_loss(m(*b[:3]), b[3])))
    rows = []
    for name, (model, batches, loss) in cases.items():
        eager, comp = copy.deepcopy(model), compile_model(copy.deepcopy(model))
        warm = train_step_seconds(comp, batches, loss, steps=0, warmup=a.compile_warmup)['warmup_seconds']
        train_step_seconds(eager, batches, loss, steps=0, warmup=2)
        te, tc = [], []
        for _ in range(a.rounds):
            te.append(np.median(train_step_seconds(eager, batches, loss, steps=steps, warmup=0)['seconds']))
            tc.append(np.median(train_step_seconds(comp, batches, loss, steps=steps, warmup=0)['seconds']))
        rat = [c / e for c, e in zip(tc, te)]
        rows.append(dict(model=name, bs=a.bs, eager_s=float(np.median(te)), compiled_s=float(np.median(tc)), compiled_ratio=float(np.median(rat)),
                         compiled_ratio_min=min(rat), compiled_ratio_max=max(rat), compile_warmup_s=round(warm, 1), rounds=a.rounds, steps_per_round=steps))
    acc = []
    for _ in range(a.rounds):
        r = {}
        for k, (bs, cbs) in dict(batch=(a.bs, []), accum=(a.bs // 4, [GradAccum(4)])).items():
            torch.manual_seed(0); m = copy.deepcopy(teacher).train()
            dl = vlm_dataloaders(root, tok, bs=bs, img_size=teacher.cfg.vit_img_size, max_rows=a.bs * 8, max_valid_rows=8, seed=a.seed)
            learn = vlm_learner(dl, m, stage=2, lr=1e-4, cbs=cbs)
            t0 = time.perf_counter(); fit_stage(learn, 1, 1e-4); r[k] = a.bs * 8 / (time.perf_counter() - t0)
        acc.append(r)
    rat = [r['accum'] / r['batch'] for r in acc]
    grad = dict(model='fused', rows=a.bs * 8, batch=a.bs, micro_batch=a.bs // 4, n_acc=4, samples_per_s_batch=float(np.median([r['batch'] for r in acc])),
                samples_per_s_accum=float(np.median([r['accum'] for r in acc])), accum_ratio=float(np.median(rat)), accum_ratio_min=min(rat), accum_ratio_max=max(rat))
    return rows, grad


def _pipeline(a, data):
    """The baseline's input pipelines (per item, batched, batched in channels_last, and in bfloat16 where the CPU computes it or
    `a.pipeline_bf16`), with the encoder and stain jitter of config `a.pipeline_config` (`small`), on `data`'s patches"""
    c = load_config(a.pipeline_config)
    n, bs = (64, 16) if a.tiny else (1024, c.bs)
    native = native_bf16('cpu')
    r = pipeline_speed(load_patches(data), n=n, bs=bs, rounds=a.rounds, arch=c.vit_name, sigma=c.stain_sigma, bias=c.stain_bias,
                       bf16=a.pipeline_bf16 or native, **c.vit_kw)
    return dict(r, config=c.name, encoder=f"{c.vit_name} {c.vit_kw}", threads=torch.get_num_threads(), bf16_native=native)


def _pipeline_md(pipe):
    feeds = [t['feed'] for t in pipe['table']]
    cl = ', batched in channels_last (`ChannelsLast`)' if 'batched_channels_last' in feeds else ''
    bf = (', batched in bfloat16 (`Autocast`) and bfloat16 in channels_last' if 'batched_bf16' in feeds else
          ' (no bfloat16 feeds: this CPU emulates bfloat16)' if pipe.get('bf16_native') is False else '')
    return (f"\n## Baseline input pipeline: training images/s, per item (`get_dls`) vs batched (`tensor_dls` + `BatchAugment`)"
            f"{cl}{bf}; {pipe['n']} patches, batch {pipe['bs']}, config "
            f"{pipe.get('config', 'small')}'s encoder {pipe['encoder']}, "
            f"{pipe['threads']} torch thread(s) (median images/s; ratio to per item, median [min, max] over {pipe['rounds']} interleaved rounds; "
            f"one-off decode of the batched feeds {pipe['decode_s']:.1f} s)\n\n{_md(pipe['table'], list(pipe['table'][0]))}\n")


def _plot(rows, path):
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 3, figsize=(12, 3.5))
    for r in rows:
        for ax, yk in zip(axs, ('accuracy', 'ms_b1', 'tokens_per_s')):
            ax.scatter(r['size_mb'], r[yk]); ax.annotate(r['variant'], (r['size_mb'], r[yk]), fontsize=7); ax.set(xlabel='size on disk (MB)', ylabel=yk)
    plt.tight_layout(); atomic_write(path, lambda p: fig.savefig(p, format='png', dpi=90)); plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', default=None, help='patches for training and evaluation (default: real PCam when present, else synthetic)')
    ap.add_argument('--model', default=None, help='an existing PathVLM folder, or a run_train output folder (skips training)')
    ap.add_argument('--root', default=None, help='captioned data folder for the distillation (with --model)')
    ap.add_argument('--config', default='debug', help="run_train config of the teacher when --model is not given ('debug': the bench's)")
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'optimize'))
    ap.add_argument('--variants', default=','.join(VARIANTS))
    ap.add_argument('--students', default=','.join(STUDENTS), help=f'student kinds, from {list(STUDENTS)}')
    ap.add_argument('--split', default='valid', choices=['valid', 'valid_all', 'dev'],
                    help="'valid': the teacher's validation patches; 'valid_all': the data's whole valid split; 'dev': unseen training-split patches, for choosing settings")
    ap.add_argument('--tiny', action='store_true', help='a tiny teacher and few patches: checks every code path in minutes')
    ap.add_argument('--train-speed', action='store_true', help='also time training steps eager vs compiled, and gradient accumulation')
    ap.add_argument('--batching', action='store_true', help="only time stage-2 epochs with random vs length-sorted ('sortish') vs packed batches (row by row, and one mask)")
    ap.add_argument('--pipeline', action='store_true', help="only time the baseline's input pipelines (per item, batched, batched in channels_last, and in bfloat16)")
    ap.add_argument('--pipeline-bf16', action='store_true', help="--pipeline: also the bfloat16 feeds on a CPU that emulates bfloat16 (many times slower)")
    ap.add_argument('--pipeline-config', default='small', help="--pipeline: the run_train config whose encoder, stain jitter and batch size are timed (e.g. small-96)")
    for k, v in dict(n_eval=400, n_captions=32, bs=32, n_tokens=32, rounds=5, threads=1, seed=0, seeds=3, distill_epochs=4, distill_rows=2400,
                     class_repeat=3, student_layers=2, student_embd=48, train_steps=5, compile_warmup=4).items():
        ap.add_argument('--' + k.replace('_', '-'), type=int, default=v)
    for k, v in dict(distill_lr=3e-3, kd_T=2.0).items(): ap.add_argument('--' + k.replace('_', '-'), type=float, default=v)
    a = ap.parse_args()
    if a.tiny: a.n_eval, a.n_captions, a.n_tokens, a.rounds, a.seeds, a.distill_epochs, a.distill_rows, a.data, a.train_steps, a.bs = 32, 4, 8, 2, 1, 1, 128, None, 2, 8
    if a.threads: torch.set_num_threads(a.threads)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    a.data = a.data or (str(pcam_dir()) if pcam_dir() and not a.tiny else None)
    t0 = time.time()
    if a.pipeline:  # the baseline's training input pipelines only: no teacher needed
        pipe = _pipeline(a, a.data or make_synthetic(out/'data', 'pcam', n=96, seed=a.seed, progress=False))
        res = dict(config=vars(a), environment=environment_info(('torch', 'numpy', 'fastai', 'timm')), seconds=round(time.time() - t0, 1), pipeline=pipe)
        atomic_write(out/'pipeline.json', json.dumps(res, indent=2, default=str)); atomic_write(out/'pipeline.md', '# Training speed' + _pipeline_md(pipe))
        return print(_pipeline_md(pipe))
    teacher, root, trained, prep = _model(a, out)
    if a.batching:  # the fused model's stage 2 only: random against length-sorted and packed batches of its own rows
        n, bs = (48, 8) if a.tiny else (1024, 64)
        r = batching_speed(teacher, root, n=n, bs=bs, rounds=a.rounds, max_len=teacher.cfg.vlm_max_len)
        res = dict(config=vars(a), teacher_training=trained, environment=environment_info(('torch', 'numpy', 'fastai')), threads=torch.get_num_threads(),
                   seconds=round(time.time() - t0, 1), batching=r)
        atomic_write(out/'batching.json', json.dumps(res, indent=2, default=str))
        return print(f"rows/s against random: sortish {r['ratio']:.2f} [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}], packed "
                     f"{r['ratio_packed']:.2f} [{r['ratio_packed_min']:.2f}, {r['ratio_packed_max']:.2f}]; packed row by row against one mask "
                     f"{r['ratio_rows']:.2f} [{r['ratio_rows_min']:.2f}, {r['ratio_rows_max']:.2f}]; tokens per real token "
                     f"random {r['pad_random']:.2f}, sortish {r['pad_sortish']:.2f}, packed {r['pad_packed']:.2f}; wrote {out/'batching.json'}")
    imgs, y, refs, ev = _eval_set(a, a.data or out/'train'/'data', prep, a.split)
    def score(probs, caps):
        m = classification_metrics(y, probs[:, 1].numpy())
        return dict(accuracy=m['accuracy'], auc=m['auc'], **({'cider': cider(caps, refs[:len(caps)])} if caps else {}))
    rows, _ = compare_variants(teacher, imgs, tuple(a.variants.split(',')), score=score, bs=a.bs, n_tokens=a.n_tokens, rounds=a.rounds,
                               n_captions=a.n_captions)
    kd = _student(a, teacher, root, score, imgs) if a.distill_epochs and root else []
    ts, ga = _train_speed(a, teacher, root) if a.train_speed and root else ([], {})
    pipe = _pipeline(a, a.data) if a.train_speed and a.data else {}
    res = dict(config=vars(a), eval=ev, teacher_training=trained, environment=environment_info(('torch', 'onnxruntime', 'onnx', 'bitsandbytes', 'numpy')),
               seconds=round(time.time() - t0, 1), variants=rows, distillation=kd, distillation_summary=_summary(kd) if kd else [],
               train_speed=ts, grad_accum=ga, pipeline=pipe)
    atomic_write(out/'optimize.json', json.dumps(res, indent=2, default=str))
    speed_report(rows, out, dict(eval=ev, bs=a.bs, n_tokens=a.n_tokens, rounds=a.rounds, threads=torch.get_num_threads()))
    vc = ['variant', 'size_mb', 'size_ratio', 'peak_mb', 'agreement', 'max_prob_diff', 'accuracy', 'accuracy_retained', 'auc', 'auc_retained',
          'cider', 'cider_retained']
    kc = ['model', 'seed', 'params', 'params_frac', 'accuracy', 'accuracy_frac', 'auc', 'auc_frac', 'frac_predicted_1', 'valid_loss', 'train_seconds']
    env = res['environment']
    md = (f"# Optimization benchmark\n\n{ev['n']} `{ev['split']}` patches of `{ev['source']}` ({ev['n_captions']} captioned), {env['device']}, "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, {res['seconds']} s in all. Ratios are to fp32 (or the teacher) "
          f"measured in this run.\n\n## Quantization: quality and size\n\n{_md(rows, vc)}\n\n## Quantization: speed (ms/image; batch 1 and {a.bs}; "
          f"generation tokens/s; median [min, max] over {a.rounds} interleaved rounds)\n\n{speed_markdown(rows)}\n")
    if kd: md += (f"\n## Distillation (student: teacher's vision encoder frozen, {a.student_layers}-layer {a.student_embd}-wide LM; "
                  f"{a.distill_epochs} epochs, class rows x{a.class_repeat}, T={a.kd_T}; seeds {a.seed}..{a.seed + a.seeds - 1})\n\n{_md(kd, kc)}\n\n"
                  f"{_md(res['distillation_summary'], ['model', 'seeds', 'params_frac', 'accuracy_mean', 'accuracy_frac_mean', 'accuracy_frac_min', 'accuracy_frac_max'])}\n")
    if ts: md += (f"\n## Training steps: compiled (inductor, dynamic shapes) vs eager, seconds per step at batch {a.bs} (median of {a.rounds} "
                  f"interleaved rounds of {a.train_steps} steps)\n\n{_md(ts, list(ts[0]))}\n\n## Gradient accumulation: one epoch of {ga['rows']} rows, "
                  f"batch {ga['batch']} vs {ga['micro_batch']} x {ga['n_acc']} accumulated\n\n{_md([ga], list(ga))}\n")
    if pipe: md += _pipeline_md(pipe)
    atomic_write(out/'optimize.md', md)
    _plot(rows, out/'optimize.png')
    print(md)


if __name__ == '__main__': main()
