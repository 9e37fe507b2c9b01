"""Serving benchmark: what dynamic batching buys, and the server under load (issues 19 and 22).

Starts the server (`pathllm.serve.serve`) on 127.0.0.1 (`pathllm.serve.server_process`) twice on the same model, machine and
run: with dynamic batching (the default) and without it (`max_batch=1`: one request at a time, as before).
Everything is reported as ratios measured in this one run:

- in-process latency of one image (`Pipeline.classify`, no HTTP), and the REST /classify p95 latency at 8 concurrent
  clients as a multiple of it (target <= 3x);
- REST throughput at 16 concurrent clients over 1 client, for /classify (target >= 3x) and /caption (target >= 5x);
- the load section (`pathllm.serve.load_test`): requests/s and p50/p95 at 1, 8 and 32 clients, each with 30 idle
  sockets held open beside them (target: no failures; 503 'server busy' is the only documented refusal).

By default the model is a random-init model with the architecture of the `small` config (ResNet-10-T on the centre
64 px, the small LM): speed does not depend on the weights. `--model DIR` benchmarks a saved model instead.
Beside each target, the best ratio perfect batching could reach, from the in-process costs of the same
run (`ceilings`). A target beyond its ceiling needs a cheaper model per image (more threads, a faster variant), not
better batching. Writes `<out>.json` and `<out>.md` (default `bench/results/serve.*`).

    python bench/serve.py
    python bench/serve.py --model runs/demo/model --threads 2
    python bench/serve.py --variant bf16_vision       # the vision tower in bfloat16, channels-last (CPUs with AMX/AVX512-BF16)
    python bench/serve.py --workers 2                 # two server processes (`pathllm serve --workers 2`), a model each
    python bench/serve.py --tiny --out /tmp/serve     # a few requests, one round: checks the script (CI)
    python bench/serve.py --render results/serve/serve.json   # rewrite serve.md from a run's JSON (no measuring)
"""
import argparse, json, os, platform, secrets, statistics, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1'); os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
import torch
import pathllm
from pathllm.data import synth_patch
from pathllm.serve import Limits, Pipeline, server_process, load_test, data_url
from pathllm.optimize import VARIANTS

TARGETS = dict(classify_p95_8_vs_inprocess=('<=', 3.), classify_rps_16_vs_1=('>=', 3.), caption_rps_16_vs_1=('>=', 5.))


def small_like(out: Path, seed: int = 0) -> Path:
    "A random-init `PathVLM` with the architecture of the `small` config, saved to `out`"
    from fastai.torch_core import set_seed
    from pathllm.captions import text_corpus
    from pathllm.lm import LMConfig
    from pathllm.tokenizer import PathTokenizer
    from pathllm.fusion import PathVLM
    from pathllm.train import load_config, vlm_config
    cfg = load_config('small')
    tok = PathTokenizer.train(text_corpus('pcam', n=200, seed=seed), cfg.vocab_size)
    set_seed(seed)
    vc = vlm_config(cfg).with_lm(LMConfig(vocab_size=len(tok), **cfg.lm_kw))
    PathVLM(vc, tok).eval().save_pretrained(out)
    return out


def median_ms(f, n: int) -> float:
    f(); ts = []
    for _ in range(n): t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000


def inprocess_ms(model: Path, image, n: int) -> dict:
    "In-process (no HTTP) median latency of one image for /classify and /caption's pipeline calls, and ms/image in one list of 16"
    p, calls = Pipeline.from_pretrained(model, device='cpu'), dict(classify=lambda x: p.classify(x), caption=lambda x: p.caption(x, rag=False, max_new_tokens=32))
    out = {k: round(median_ms(lambda: f(image), n), 2) for k, f in calls.items()}
    out.update({f'{k}_per_image_at_16': round(median_ms(lambda: f([image] * 16), max(3, n // 4)) / 16, 2) for k, f in calls.items()})
    return out


def measure(model: Path, key: str, max_batch: int, a, load: bool) -> dict:
    "Throughput and latency of /classify (1, 8, 16 clients) and /caption (1, 16), and the load section, on one server"
    img = data_url(synth_patch('pcam', 1, 0))
    cap = dict(image=[img], max_new_tokens=32, rag=False)
    with server_process(model, api_key=key, device='cpu', max_concurrency=64, max_batch=max_batch, max_new_tokens=64,
                        batch_wait_ms=a.wait_ms, workers=a.workers, timeout=300) as url:
        load_test(url, key, concurrency=(8,), requests=16, idle=0)            # warm-up
        r = dict(classify=load_test(url, key, '/classify', concurrency=(1, 8, 16), requests=a.requests, idle=0),
                 caption=load_test(url, key, '/caption', cap, concurrency=(1, 16), requests=a.caption_requests, idle=0))
        if load: r['load'] = load_test(url, key, '/classify', concurrency=(1, 8, 32), requests=a.requests, idle=30)
    return r


def level(rows: list, clients: int) -> dict: return next(r for r in rows if r['clients'] == clients)


def ratios(r: dict, inproc: dict) -> dict:
    return dict(classify_p95_8_vs_inprocess=round(level(r['classify'], 8)['p95_ms'] / inproc['classify'], 2),
                classify_rps_16_vs_1=round(level(r['classify'], 16)['req_per_s'] / level(r['classify'], 1)['req_per_s'], 2),
                caption_rps_16_vs_1=round(level(r['caption'], 16)['req_per_s'] / level(r['caption'], 1)['req_per_s'], 2))


def ceilings(res: dict) -> dict:
    """The best each target ratio could be with perfect batching and free HTTP, from the in-process costs of this run.
    A list of up to 16 images costs at least the per-image time measured in a list of 16 (batching gets cheaper per image
    as the batch grows), so: 16 clients get at most 1000 / that ms requests/s; and 8 closed-loop clients wait at least
    8 x that ms per request on average (Little's law: latency = clients / throughput), which bounds their p95 from below.
    With `w` server processes (`--workers`), each batching alone on its own core, both bounds improve w-fold (no more
    than the machine's cores)."""
    ip, one = res['inprocess_ms'], lambda ep: level(res['batching'][ep], 1)['req_per_s']
    w = min(res.get('workers', 1), os.cpu_count() or 1)
    return dict(classify_p95_8_vs_inprocess=round(8 / w * ip['classify_per_image_at_16'] / ip['classify'], 2),
                classify_rps_16_vs_1=round(w * 1000 / ip['classify_per_image_at_16'] / one('classify'), 2),
                caption_rps_16_vs_1=round(w * 1000 / ip['caption_per_image_at_16'] / one('caption'), 2))


def met(name: str, v: float) -> bool:
    op, t = TARGETS[name]
    return v <= t if op == '<=' else v >= t


def markdown(res: dict) -> str:
    b, nb, ce = res['batching'], res['no_batching'], ceilings(res)
    rows = ['| measure | dynamic batching (each round) | one at a time (`--max-batch 1`) | best possible (ideal batching) | target | met | reachable by batching |',
            '|---|---|---|---|---|---|---|']
    for k, (op, t) in TARGETS.items():
        per = ', '.join(str(r['batching']['ratios'][k]) for r in res['rounds'])
        rows.append(f"| {k} | {b['ratios'][k]} ({per}) | {nb['ratios'][k]} | {ce[k]} | {op} {t:g} | {'yes' if b['met'][k] else 'no'} "
                    f"| {'yes' if met(k, ce[k]) else 'no'} |")
    tp = ['Round 1 of the throughput and latency measurements:', '', '| endpoint | clients | req/s (batching) | p50 ms | p95 ms | req/s (one at a time) | p50 ms | p95 ms |', '|---|---|---|---|---|---|---|---|']
    for ep in ('classify', 'caption'):
        for x, y in zip(b[ep], nb[ep]):
            tp.append(f"| /{ep} | {x['clients']} | {x['req_per_s']} | {x['p50_ms']} | {x['p95_ms']} | {y['req_per_s']} | {y['p50_ms']} | {y['p95_ms']} |")
    ld = ['| clients (+30 idle sockets) | requests | ok | 503 busy | failed | req/s | p50 ms | p95 ms |', '|---|---|---|---|---|---|---|---|']
    for x in b['load']:
        ld.append(f"| {x['clients']} | {x['requests']} | {x['ok']} | {x['busy']} | {x['failed']} | {x['req_per_s']} | {x['p50_ms']} | {x['p95_ms']} |")
    return (f"# pathllm serve benchmark\n\nModel `{res['model']}` ({res['n_params']:,} parameters) as `{res.get('variant', 'fp32')}`, cpu, {res.get('workers', 1)} server process(es) with {res['threads']} torch thread(s) "
            f"each, batch wait {res.get('wait_ms', 5.):g} ms, {res['platform']}, pathllm {res['version']}, {res['date']}. In-process latency of one image: "
            f"/classify {res['inprocess_ms']['classify']} ms, /caption (32 tokens) {res['inprocess_ms']['caption']} ms; in one list of 16 "
            f"images: {res['inprocess_ms']['classify_per_image_at_16']} and {res['inprocess_ms']['caption_per_image_at_16']} ms/image.\n\n"
            f"## Targets (ratios in this run: the median of {len(res['rounds'])} interleaved rounds)\n\n" + '\n'.join(rows) + "\n\nDynamic batching over one request at a time, at 16 clients: "
            f"/classify {res['batching_vs_one_at_a_time']['classify_rps_16']}x the throughput, /caption {res['batching_vs_one_at_a_time']['caption_rps_16']}x; "
            f"/classify p95 at 8 clients {res['batching_vs_one_at_a_time']['classify_p95_8']}x lower." + "\n\n## Throughput and latency\n\n" + '\n'.join(tp) +
            "\n\n## Load (dynamic batching)\n\n" + '\n'.join(ld) + '\n')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', default=None, help='model or pipeline folder (default: random-init, architecture of the small config)')
    ap.add_argument('--requests', type=int, default=256, help='/classify requests per level (16 per client at 16 clients)')
    ap.add_argument('--caption-requests', type=int, default=160, help='/caption requests per level (10 per client at 16 clients)')
    ap.add_argument('--inprocess', type=int, default=20, help='in-process calls timed per endpoint')
    ap.add_argument('--threads', type=int, default=1, help='torch threads of the server and of the in-process baseline')
    ap.add_argument('--workers', type=int, default=1, help='server processes, each with its own model (`pathllm serve --workers`)')
    ap.add_argument('--rounds', type=int, default=3, help='repeats; ratios are the median over rounds')
    ap.add_argument('--wait-ms', type=float, default=Limits.batch_wait_ms, help="the server's batch wait (`Limits.batch_wait_ms`)")
    ap.add_argument('--variant', default='fp32', choices=VARIANTS,
                    help="serve the model as this `quantize_model` variant (e.g. 'bf16_vision' on a CPU with bfloat16 units)")
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'serve'), help='output path without suffix')
    ap.add_argument('--tiny', action='store_true', help='a few requests per level, one round: checks the script (CI)')
    ap.add_argument('--render', help="a serve.json this script wrote: rewrite its .md (ceilings included) and stop")
    a = ap.parse_args()
    if a.render:
        f = Path(a.render); f.with_suffix('.md').write_text(md := markdown(json.loads(f.read_text()))); print(md); return
    if a.tiny: a.requests, a.caption_requests, a.inprocess, a.rounds = 8, 4, 2, 1
    os.environ['OMP_NUM_THREADS'] = str(a.threads); torch.set_num_threads(a.threads)
    model = Path(a.model) if a.model else small_like(Path(tempfile.mkdtemp(prefix='pathllm-bench-')) / 'model')
    if a.variant != 'fp32':  # served (and timed in-process) as `pathllm optimize` writes it
        from pathllm.optimize import optimize_model
        model = Path(optimize_model(model, a.variant, Path(tempfile.mkdtemp(prefix='pathllm-bench-')) / a.variant)['out'])
    key, img = secrets.token_urlsafe(16), synth_patch('pcam', 1, 0)
    inproc = inprocess_ms(model, img, a.inprocess)
    res = dict(model=a.model or 'random init, small config architecture', variant=a.variant, version=pathllm.__version__, threads=a.threads, workers=a.workers, wait_ms=a.wait_ms,
               n_params=sum(t.numel() for t in Pipeline.from_pretrained(model, device='cpu').model.parameters()),
               platform=f'{platform.machine()}, {os.cpu_count()} CPUs', date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), inprocess_ms=inproc)
    rounds = []  # the machine may be shared: repeat, interleaved, and report the median ratio of the rounds
    for i in range(a.rounds):
        inproc = inproc if i == 0 else inprocess_ms(model, img, a.inprocess)
        rd = dict(inprocess_ms=inproc)
        for name, mb in (('batching', 32), ('no_batching', 1)):
            rd[name] = measure(model, key, mb, a, load=name == 'batching' and i == 0)
            rd[name]['ratios'] = ratios(rd[name], inproc)
        rounds.append(rd)
    res['rounds'] = rounds
    for name in ('batching', 'no_batching'):
        res[name] = dict(rounds[0][name], ratios={k: round(statistics.median(r[name]['ratios'][k] for r in rounds), 2) for k in TARGETS})
        res[name]['met'] = {k: met(k, v) for k, v in res[name]['ratios'].items()}
    res['batching']['load'] = rounds[0]['batching']['load']
    b, nb = res['batching'], res['no_batching']
    med = lambda f: round(statistics.median(f(r['batching'], r['no_batching']) for r in rounds), 2)
    res['batching_vs_one_at_a_time'] = {f'{ep}_rps_16': med(lambda b, nb: level(b[ep], 16)['req_per_s'] / level(nb[ep], 16)['req_per_s']) for ep in ('classify', 'caption')}
    res['batching_vs_one_at_a_time']['classify_p95_8'] = med(lambda b, nb: level(nb['classify'], 8)['p95_ms'] / level(b['classify'], 8)['p95_ms'])
    res['load_failures'] = sum(x['failed'] for x in res['batching']['load'])
    res['ceilings'] = ceilings(res)
    o = Path(a.out); o.parent.mkdir(parents=True, exist_ok=True)
    o.with_suffix('.json').write_text(json.dumps(res, indent=2)); o.with_suffix('.md').write_text(markdown(res))
    print(markdown(res))
    if res['load_failures']: sys.exit(f"{res['load_failures']} requests failed under load")


if __name__ == '__main__': main()
