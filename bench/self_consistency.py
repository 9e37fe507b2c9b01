"""Self-consistency's temperature and vote, chosen on dev: `pathllm.prompting.sc_sweep` on a trained run's `dev` patches.

The `dev` split is carved from the training patches by `pathllm train` (its `data/captions.csv`); valid is never read.
At each temperature the same greedy and sampled chain-of-thought paths are scored three ways: the greedy path alone,
the majority of the parsed answers, and the mean of each path's class distribution. `pathllm.prompting.SC_TEMPERATURE`
holds the temperatures this chose. Writes `<out>/sc_sweep.json` (the table, run, patches, seconds, environment).

    python bench/self_consistency.py --run runs/small-s0 --n 2000 --out results/small/choices   # real PCam
    python bench/self_consistency.py --tiny --out /tmp/sc    # the bench's tiny config on synthetic patches (CI)
"""
import argparse, json, os, time
from pathlib import Path

for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'TRANSFORMERS_OFFLINE'): os.environ.setdefault(k, '1')
import torch
from PIL import Image
from pathllm.data import atomic_write, environment_info
from pathllm.bench import tiny_run, dev_rows
from pathllm.fusion import PathVLM
from pathllm.prompting import sc_sweep


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--run', default=None, help='a `pathllm train` output folder (`model/`, `data/captions.csv`)')
    p.add_argument('--n', type=int, default=2000, help='dev patches (a seeded sample; all when fewer)')
    p.add_argument('--temperatures', default='0.3,0.5,0.7,1.0')
    p.add_argument('--paths', type=int, default=5, help='paths per vote')
    p.add_argument('--max-new-tokens', type=int, default=48, help='reasoning length (as the prompting comparison)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default='bench/results/self_consistency')
    p.add_argument('--tiny', action='store_true', help="train the bench's tiny config on synthetic patches (CI)")
    a = p.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True); torch.set_num_threads(a.threads); t0 = time.time()
    if a.tiny: a.run, a.n, a.temperatures, a.paths, a.max_new_tokens = tiny_run(out), 8, '0.5,1.0', 3, 16
    if a.run is None: raise SystemExit('--run: a trained run folder is needed (or --tiny)')
    run = Path(a.run); dev = dev_rows(run, a.n)[1]
    model = PathVLM.from_pretrained(run/'model').eval()
    imgs = [Image.open(run/'data'/f).convert('RGB') for f in dev.image]
    temps = tuple(float(t) for t in a.temperatures.split(','))
    tab = sc_sweep(model, imgs, dev.label.to_numpy(), temps, a.paths, max_new_tokens=a.max_new_tokens)
    res = dict(run=str(run), split='dev', n=len(dev), paths=a.paths, max_new_tokens=a.max_new_tokens,
               table=tab.round(4).to_dict('records'), seconds=round(time.time() - t0, 1), environment=environment_info())
    atomic_write(out/'sc_sweep.json', json.dumps(res, indent=1))
    print(tab.round(4).to_string(index=False))


if __name__ == '__main__': main()
