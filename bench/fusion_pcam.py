"""The main job on real PCam: image-only baseline vs fused model, and the caption groundings compared.

Runs `pathllm.train.run_train` (the `small` config by default: a from-scratch ResNet-10-T baseline on the centre 64 pixels
of all training patches, its encoder frozen in the fused model, both scored with dihedral TTA) and summarises its
`report.json`: the table of `pathllm.results.train_table` (the renderer of the README's table), the project's targets, and
the caption metrics of each grounding mode of `PathVLM.caption` that `run_train` scored (`eval_groundings`). Nothing is
scored twice: the numbers are the report's.

Writes `OUT/fusion_pcam.md`; the run itself (report, plots, model) is in `OUT/run`. Publish a run with
`pathllm results --publish OUT/run --to small/seed0` (one folder per seed: `--seed 1`, `--seed 2`).

    python bench/fusion_pcam.py                          # real PCam from `pathllm.data.pcam_dir()`, config 'small'
    python bench/fusion_pcam.py --seed 1 --out bench/results/fusion_pcam_s1 --resume
    python bench/fusion_pcam.py --tiny --out /tmp/fp     # the bench's `tiny` config on synthetic patches: checks the script (CI)
"""
import argparse, os
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
from pathllm.data import pcam_dir, atomic_write
from pathllm.train import run_train, load_config
from pathllm.evaluate import GROUNDED_KEYS
from pathllm.bench import bench_config
from pathllm.results import train_table, md_table, mean_sd

TARGETS = dict(accuracy=0.85, auc=0.92)  # the project's targets for the fused model on real PCam
MARGIN = 0.01  # ... and at most this far below the image-only baseline


def targets_met(rep: dict) -> bool:
    "The fused model reaches `TARGETS` and is within `MARGIN` of the baseline on each"
    return all(rep[k] >= t and rep[k] >= rep['baseline'][k] - MARGIN for k, t in TARGETS.items())


def markdown(rep: dict, label: str) -> str:
    "The run's table, its targets and its caption groundings, all read from `report.json`"
    g = rep.get('groundings') or {}
    keys = [k for k in GROUNDED_KEYS if any(k in v for v in g.values())]
    lines = [f"# The main job: image-only baseline vs fused model (`{label}`)", '', train_table({label: [rep]}), '',
             f"Targets (fused accuracy >= {TARGETS['accuracy']}, AUC >= {TARGETS['auc']}, each within {MARGIN} of the baseline): "
             f"{'met' if targets_met(rep) else 'NOT met'}.", '']
    if g: lines += [f"Captions of {rep.get('n_captioned')} validation patches by grounding mode of `PathVLM.caption`:", '',
                    md_table(['grounding', *keys], [[m, *[mean_sd([v.get(k)]) for k in keys]] for m, v in g.items()]), '']
    return '\n'.join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', default=None, help="PCam folder (default: pathllm.data.pcam_dir())")
    ap.add_argument('--config', default='small', help="named config or JSON file for run_train")
    ap.add_argument('--seed', type=int, default=None, help="overrides the config's seed")
    ap.add_argument('--out', default='bench/results/fusion_pcam', help="output folder")
    ap.add_argument('--resume', action='store_true', help="skip the finished stages of OUT/run")
    ap.add_argument('--tiny', action='store_true', help="the bench's `tiny` config on synthetic patches: checks the script in seconds (CI)")
    a = ap.parse_args()
    seed = {} if a.seed is None else dict(seed=a.seed)
    cfg = bench_config('tiny', **seed).train_config() if a.tiny else load_config(a.config, **seed)
    data = None if a.tiny else (a.data or pcam_dir())  # run_train writes synthetic patches when there is no data
    if data is None and not a.tiny: raise SystemExit("data: no real PCam found (set PATHLLM_PCAM or pass --data)")
    out = Path(a.out)
    rep = run_train(cfg, data, out/'run', resume=a.resume, progress=not a.tiny)
    md = markdown(rep, cfg.name)
    atomic_write(out/'fusion_pcam.md', md)
    print(md)


if __name__ == '__main__': main()
