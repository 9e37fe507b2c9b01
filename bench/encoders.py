"""Which image encoder should `small` use? The image-only baseline of a config and of each variant, chosen on dev.

`pathllm.bench.encoder_sweep`: one data stage shared by every variant, each baseline trained by
`run_train(..., until='baseline')` in `<out>/<variant>` (folders already trained are reused), scored on the `dev` split
carved from the training patches; the valid scores are written beside, not used for the choice.

Writes `<out>/encoders.json` and `<out>/encoders.md`. With `--rules`, also compares the decision-threshold rules on the
same runs (`pathllm.bench.threshold_rules`: bootstrap resamples of dev, scored on the dev patches each left out) and
writes `<out>/thresholds.json` and `<out>/thresholds.md`.

    python bench/encoders.py --config small --set 'bf16=["baseline"]' --threads 2 --out runs/encoders   # real PCam
    python bench/encoders.py --variants my_variants.json       # name -> changed TrainConfig fields, as JSON
    python bench/encoders.py --tiny --rules --out /tmp/enc     # the bench's tiny config on synthetic patches (CI)
"""
import argparse, json, os
from pathlib import Path

for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'TRANSFORMERS_OFFLINE'): os.environ.setdefault(k, '1')
from pathllm.data import pcam_dir, make_synthetic
from pathllm.train import load_config
from pathllm.bench import bench_config, encoder_sweep, threshold_rules

# the encoders tried for `small` (its own: ResNet-10-T on the centre 64 px, 4x4 tokens):
# the whole 96 px patch (6x6 tokens, the centre 3x3 still pooled apart), and a wider, deeper ResNet-18
VARIANTS = {
    'full96': {'vit_kw': {'output_stride': 16}},
    'resnet18': {'vit_name': 'timm:resnet18'},
}
TINY_VARIANTS = {'wide': {'vit_kw': {'pool': 'mean', 'n_embd': 96}}}


def main(a):
    if a.tiny:
        cfg, data = bench_config('tiny').train_config(), make_synthetic(Path(a.out)/'syn', 'pcam', n=160, seed=0, progress=False)
        variants = TINY_VARIANTS
    else:
        sets = dict(s.split('=', 1) for s in a.set)
        cfg = load_config(a.config, **{k: json.loads(v) for k, v in sets.items()}, **({'threads': a.threads} if a.threads else {}))
        data = a.data or pcam_dir()
        variants = json.loads(Path(a.variants).read_text()) if a.variants else VARIANTS
    res = encoder_sweep(cfg, variants, data, a.out, by=a.by, progress=not a.tiny)
    print(Path(a.out, 'encoders.md').read_text())
    if a.rules or a.tiny:  # --tiny checks this code path too
        threshold_rules({k: Path(a.out)/k for k in res['rows']}, a.out, n_boot=a.n_boot)
        print(Path(a.out, 'thresholds.md').read_text())
    return res


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--config', default='small', help='a named TrainConfig or a JSON file')
    ap.add_argument('--set', action='append', default=[], help='FIELD=JSON: a field of the config, changed for every row')
    ap.add_argument('--variants', help='JSON file: variant name -> changed TrainConfig fields (default: VARIANTS above)')
    ap.add_argument('--data', help='patches in any format load_patches reads (default: the shared PCam copy)')
    ap.add_argument('--out', default='runs/encoders')
    ap.add_argument('--by', default='auc', help='dev metric that picks the encoder')
    ap.add_argument('--threads', type=int, default=0, help='torch threads of every run (0: the config\'s)')
    ap.add_argument('--rules', action='store_true', help='also compare the decision-threshold rules on the same runs')
    ap.add_argument('--n-boot', type=int, default=200, help='bootstrap resamples of dev for --rules')
    ap.add_argument('--tiny', action='store_true', help='the bench\'s tiny config on 160 synthetic patches: checks the code path')
    main(ap.parse_args())
