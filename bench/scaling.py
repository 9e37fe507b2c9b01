"""Scaling grid of pathllm models on real PCam (or synthetic patches): validation loss against parameters, data and compute, with power-law fits.

Axes, each a set of short runs with the functions of `pathllm.optimize`:
- `size`: LM width x depth, the same number of steps (loss vs N at equal data),
- `isoflop`: the same widths on fixed FLOP budgets (a bigger model gets fewer steps): loss vs N per budget, loss vs compute,
- `data`: one LM on growing fractions of the training text, the same steps,
- `tokenizer`: characters vs BPE vocabularies on one budget: bits per character,
- `vision`: `PathVLM` runs over vision backbones and image-token counts (pixel-shuffle factor), the same steps,
- `vlm_data`: one `PathVLM` on growing numbers of training patches.

Writes `<out>/scaling.json`, `<out>/scaling.md` and `<out>/scaling.png`.

    python bench/scaling.py --tiny --out /tmp/scaling        # every code path on synthetic patches, seconds (CI)
    python bench/scaling.py --grid reduced                  # longer, on 2 CPU cores
    python bench/scaling.py --grid full --n-train 4000      # the full grid (GPU when available)
"""
import argparse, json, math, os, platform, time
from pathlib import Path

for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'TRANSFORMERS_OFFLINE'): os.environ.setdefault(k, '1')
import warnings; warnings.filterwarnings('ignore', message='.*(kernels|deprecated).*')
import numpy as np, torch
from pathllm.data import pcam_dir, load_patches, make_synthetic, atomic_write
from pathllm.captions import caption_dataset
from pathllm.tokenizer import PathTokenizer, CharTokenizer
from pathllm.lm import LMConfig, pack_tokens
from pathllm.fusion import VLMConfig, vlm_records, vlm_dataloaders
from pathllm.optimize import lm_scaling_run, vlm_scaling_run, tokenizer_run, fit_power_law, flat_point, plot_scaling

GRIDS = dict(
    tiny=dict(widths=(16, 32), depths=(1,), steps=10, budgets=(1e9, 4e9), data_fracs=(1/8, 1/4, 1/2, 1.), vocabs=(300,),
              vit=('pathvit_nano',), shuffles=(1, 2), vlm_steps=10, vlm_rows=(16, 32)),  # checks every code path in a few minutes
    reduced=dict(widths=(32, 64, 96), depths=(1, 2), steps=150, budgets=(1e10, 4e10), data_fracs=(1/32, 1/8, 1/2, 1.), vocabs=(300, 512, 1024),
                 vit=('pathvit_nano',), shuffles=(1, 2, 3), vlm_steps=40, vlm_rows=(100, 400, 1600)),
    full=dict(widths=(32, 64, 128, 192, 256), depths=(1, 2, 4), steps=600, budgets=(1e11, 4e11, 1.6e12), data_fracs=(1/64, 1/16, 1/4, 1.),
              vocabs=(300, 512, 1024, 2048), vit=('pathvit_nano', 'pathvit_small', 'pathvit_tiny'), shuffles=(1, 2, 3), vlm_steps=300,
              vlm_rows=(250, 1000, 4000, 16000)),
)


def _data(a, out):
    "A captioned subset of `--data`: its folder, records and texts"
    src = a.data or (str(pcam_dir()) if pcam_dir() else make_synthetic(out/'synth', 'pcam', n=max(400, a.n_train + a.n_valid), seed=a.seed, progress=False))
    ds = load_patches(src); rng = np.random.default_rng(a.seed)
    pick = lambda s, n: rng.permutation(np.flatnonzero((ds.items.split == s).to_numpy()))[:n].tolist()
    vs = next(s for s in ('valid', 'test') if s in ds.splits)
    root = caption_dataset(ds.subset(pick('train', a.n_train) + pick(vs, a.n_valid)), out=out/'data', progress=False)
    return str(src), root


def _lm_axes(a, g, root, res):
    recs, vrecs = vlm_records(root, 'train', conversations=False), vlm_records(root, 'valid')
    texts, vtexts = [r['prompt'] + ' ' + r['response'] for r in recs], [r['prompt'] + ' ' + r['response'] for r in vrecs]
    tok = PathTokenizer.train(texts, a.vocab)
    enc = lambda ts: [tok.encode(s, add_bos=True, add_eos=True) for s in ts]
    tr, va = pack_tokens(enc(texts), a.seq_len), pack_tokens(enc(vtexts), a.seq_len)
    cfg = lambda w, l: LMConfig(vocab_size=len(tok), n_layer=l, n_embd=w, n_head=max(1, w // 32), mlp_hidden=2 * w)
    run = lambda **kw: lm_scaling_run(tr, va, bs=a.bs, seed=a.seed, **kw)
    res['size'] = [run(cfg=cfg(w, l), steps=g['steps']) | dict(width=w, n_layer=l) for l in g['depths'] for w in g['widths']]
    res['isoflop'] = [run(cfg=cfg(w, l), flops=b) | dict(width=w, n_layer=l, budget=b) for b in g['budgets'] for l in g['depths'][:1] for w in g['widths']]
    w = g['widths'][len(g['widths']) // 2]
    subs = [tr[:max(4, int(len(tr) * f))] for f in g['data_fracs']]
    res['data'] = [lm_scaling_run(s, va, cfg(w, 1), steps=g['steps'], bs=a.bs, seed=a.seed) | dict(train_tokens=s[:, 1:].numel(), width=w) for s in subs]
    toks = {'char': CharTokenizer(texts), **{f'bpe{v}': PathTokenizer.train(texts, v) for v in g['vocabs']}}
    res['tokenizer'] = [tokenizer_run(texts, vtexts, t, dict(n_layer=1, n_embd=w, n_head=max(1, w // 32), mlp_hidden=2 * w), g['budgets'][0],
                                      seq_len=a.seq_len, bs=a.bs, seed=a.seed) | dict(tokenizer=k) for k, t in toks.items()]
    return tok


def _vlm_axes(a, g, root, tok, res):
    dl = lambda rows: vlm_dataloaders(root, tok, tasks=['class', 'caption'], bs=a.bs, max_rows=rows, seed=a.seed)
    base = dict(lm_vocab_size=len(tok), lm_n_layer=2, lm_n_embd=64, lm_n_head=2)
    dls = dl(None)
    res['vision'] = [vlm_scaling_run(dls, VLMConfig(vit_name=v, mp_shuffle=s, **base), tok, steps=g['vlm_steps'], seed=a.seed) | dict(vit=v, mp_shuffle=s)
                     for v in g['vit'] for s in g['shuffles']]
    res['vlm_data'] = [vlm_scaling_run(dl(n), VLMConfig(mp_shuffle=2, **base), tok, steps=g['vlm_steps'], seed=a.seed) | dict(max_rows=n)
                       for n in g['vlm_rows']]


def _fits(res):
    f = {}
    def fit(name, rows, x, y='valid_loss', offset=False):
        xs, ys = [r[x] for r in rows], [r[y] for r in rows]
        try: f[name] = fit_power_law(xs, ys, offset=offset) | dict(x=x, n=len(rows))
        except (ValueError, RuntimeError) as e: f[name] = dict(error=str(e))
        if offset and 'error' not in f[name]: f[name]['flat_point_2pct'] = flat_point(f[name], 0.02)
    d0 = min(r['n_layer'] for r in res['size'])
    fit('lm_loss_vs_params', [r for r in res['size'] if r['n_layer'] == d0], 'params')
    fit('lm_loss_vs_data', res['data'], 'train_tokens', offset=len(res['data']) >= 4)
    front = sorted(res['size'] + res['isoflop'], key=lambda r: r['flops'])
    best, env = math.inf, []
    for r in front:
        if r['valid_loss'] < best: best = r['valid_loss']; env.append(r)
    fit('lm_compute_frontier', env, 'flops')
    if 'vision' in res: fit('vlm_loss_vs_params', res['vision'], 'params')
    if 'vlm_data' in res: fit('vlm_loss_vs_rows', res['vlm_data'], 'max_rows')
    return f


def _plot(res, fits, path):
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, axs = plt.subplots(2, 3, figsize=(13, 7))
    for l in sorted({r['n_layer'] for r in res['size']}):
        rs = [r for r in res['size'] if r['n_layer'] == l]
        plot_scaling([r['params'] for r in rs], [r['valid_loss'] for r in rs], fits.get('lm_loss_vs_params') if l == 1 else None, axs[0, 0])
    axs[0, 0].set_title('LM: loss vs N (equal steps; one colour per depth)')
    for b in sorted({r['budget'] for r in res['isoflop']}):
        rs = [r for r in res['isoflop'] if r['budget'] == b]
        axs[0, 1].plot([r['params'] for r in rs], [r['valid_loss'] for r in rs], 'o-', label=f'{b:.0e}')
    axs[0, 1].set(xscale='log', yscale='log', xlabel='parameters', ylabel='validation loss', title='iso-FLOP curves'); axs[0, 1].legend(fontsize=7)
    allr = res['size'] + res['isoflop']
    plot_scaling([r['flops'] for r in allr], [r['valid_loss'] for r in allr], fits.get('lm_compute_frontier') if 'alpha' in fits.get('lm_compute_frontier', {}) else None,
                 axs[0, 2], xlabel='training FLOPs'); axs[0, 2].set_title('LM: loss vs compute (frontier fit)')
    fd = fits.get('lm_loss_vs_data', {})
    plot_scaling([r['train_tokens'] for r in res['data']], [r['valid_loss'] for r in res['data']], fd if 'alpha' in fd else None, axs[1, 0], xlabel='training tokens')
    if fd.get('flat_point_2pct'): axs[1, 0].axvline(fd['flat_point_2pct'], ls=':', c='k')
    axs[1, 0].set_title('LM: loss vs data (dotted: <2% per doubling)')
    tk = res['tokenizer']; axs[1, 1].bar([r['tokenizer'] for r in tk], [r['bits_per_char'] for r in tk]); axs[1, 1].set(ylabel='bits per character', title='tokenizer (one budget)')
    if 'vision' in res:
        for r in res['vision']: axs[1, 2].scatter(r['params'], r['valid_loss']); axs[1, 2].annotate(f"{r['vit']}/{r['image_tokens']}", (r['params'], r['valid_loss']), fontsize=6)
        axs[1, 2].set(xscale='log', xlabel='VLM parameters', ylabel='validation loss', title='vision backbone / image tokens')
    plt.tight_layout(); atomic_write(path, lambda p: fig.savefig(p, format='png', dpi=90)); plt.close(fig)


def _md(rows, cols):
    f = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
    return '\n'.join(['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)] + ['| ' + ' | '.join(f(r.get(c, '')) for c in cols) + ' |' for r in rows])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', default=None, help='patches (default: real PCam when present, else synthetic)')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'scaling'))
    ap.add_argument('--grid', default='reduced', choices=list(GRIDS))
    ap.add_argument('--no-vlm', action='store_true', help='skip the PathVLM axes (vision, vlm_data)')
    ap.add_argument('--tiny', action='store_true', help="the 'tiny' grid on 60 + 20 synthetic patches: checks every code path (CI)")
    for k, v in dict(n_train=1000, n_valid=200, vocab=512, seq_len=64, bs=16, threads=1, seed=0).items():
        ap.add_argument('--' + k.replace('_', '-'), type=int, default=v)
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    out, t0 = Path(a.out), time.time(); out.mkdir(parents=True, exist_ok=True)
    if a.tiny: a.grid, a.n_train, a.n_valid, a.data = 'tiny', 60, 20, str(make_synthetic(out/'synth', 'pcam', n=100, seed=a.seed, progress=False))
    g = GRIDS[a.grid]
    src, root = _data(a, out)
    res = {}
    tok = _lm_axes(a, g, root, res)
    if not a.no_vlm: _vlm_axes(a, g, root, tok, res)
    fits = _fits(res)
    info = dict(data=src, grid=a.grid, config=vars(a), device='cuda' if torch.cuda.is_available() else f'cpu ({torch.get_num_threads()} threads)',
                torch=torch.__version__, platform=platform.platform(), seconds=round(time.time() - t0, 1))
    atomic_write(out/'scaling.json', json.dumps(dict(info=info, fits=fits, runs=res), indent=2, default=str))
    lc = ['width', 'n_layer', 'params', 'steps', 'tokens', 'flops', 'valid_loss']
    md = [f"# Scaling benchmark\n\n{a.grid} grid on `{src}` ({a.n_train} train / {a.n_valid} valid patches), {info['device']}, {info['seconds']} s.\n",
          '## Power-law fits `loss = a x^-alpha + c`\n', _md([dict(name=k, **v) for k, v in fits.items()], ['name', 'x', 'n', 'a', 'alpha', 'c', 'r2', 'flat_point_2pct', 'error']),
          '\n## LM size (equal steps)\n', _md(res['size'], lc), '\n## Iso-FLOP\n', _md(res['isoflop'], ['budget'] + lc),
          '\n## Data\n', _md(res['data'], ['width', 'train_tokens', 'steps', 'valid_loss']),
          '\n## Tokenizer\n', _md(res['tokenizer'], ['tokenizer', 'vocab', 'chars_per_token', 'steps', 'valid_loss', 'bits_per_char', 'ppl_per_char'])]
    if 'vision' in res:
        vc = ['vit', 'mp_shuffle', 'image_tokens', 'params_vision', 'params', 'tokens', 'flops', 'valid_loss', 'valid_accuracy']
        md += ['\n## Vision backbone and image tokens\n', _md(res['vision'], vc), '\n## VLM training rows\n', _md(res['vlm_data'], ['max_rows'] + vc[2:])]
    atomic_write(out/'scaling.md', '\n'.join(md) + '\n')
    _plot(res, fits, out/'scaling.png')
    print('\n'.join(md))


if __name__ == '__main__': main()
