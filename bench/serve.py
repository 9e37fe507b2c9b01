"""Load-test the pathllm REST server: latency percentiles and throughput under a bounded concurrent load.

Starts `python -m pathllm.serve` on 127.0.0.1 in a subprocess (`pathllm.serve.server_process`), sends `--requests`
requests with at most `--concurrency` in flight (a round-robin mix of /classify, /caption and /question, one PNG
patch each), and reports p50/p95 latency per endpoint and overall, requests/s and failed requests. For context it
also times the same calls made in-process on a `Pipeline` (no HTTP), one at a time.

Writes `<out>.json` and `<out>.md` (default `bench/results/serve.*`).

    python bench/serve.py                                   # trains a tiny model on synthetic patches first
    python bench/serve.py --model runs/demo/model --requests 500 --concurrency 16
"""
import argparse, asyncio, io, json, os, platform, secrets, statistics, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1'); os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
import numpy as np, torch, httpx
from PIL import Image
import pathllm
from pathllm.data import synth_patch, make_synthetic
from pathllm.serve import Pipeline, server_process

QUESTION = 'Is the centre of this patch normal or tumor?'


def tiny_model(out: Path, n: int, seed: int) -> Path:
    "Train a tiny `PathVLM` on `n` synthetic PCam patches (one short epoch per stage); return its folder"
    from pathllm.fusion import train_vlm
    data = make_synthetic(out / 'data', 'pcam', n=n, seed=seed, n_workers=1, progress=False)
    train_vlm(data, out / 'model', size='tiny', stage1_epochs=1, stage2_epochs=1, bs=16, vocab_size=400, max_rows=400, seed=seed)
    return out / 'model'


def png(seed: int) -> bytes:
    b = io.BytesIO(); Image.fromarray(synth_patch('pcam', seed % 2, seed)).save(b, 'PNG'); return b.getvalue()


def request_args(i: int, endpoints: list, tokens: int, images: list) -> tuple:
    "Endpoint, form fields and file of request `i`"
    ep = endpoints[i % len(endpoints)]
    data = {} if ep == 'classify' else dict(max_new_tokens=tokens)
    if ep == 'question': data['question'] = QUESTION
    return ep, data, images[i % len(images)]


async def load(url: str, key: str, a, images: list) -> list:
    "Send `a.requests` requests, `a.concurrency` at a time; per request (endpoint, status, seconds)"
    sem, out = asyncio.Semaphore(a.concurrency), []
    async with httpx.AsyncClient(base_url=url, headers={'X-API-Key': key}, timeout=300,
                                 limits=httpx.Limits(max_connections=a.concurrency)) as c:
        async def one(i):
            ep, data, img = request_args(i, a.endpoints, a.max_new_tokens, images)
            async with sem:
                t0 = time.perf_counter()
                try: status = (await c.post('/' + ep, data=data, files=[('image', ('p.png', img, 'image/png'))])).status_code
                except httpx.HTTPError as e: status = type(e).__name__
                out.append((ep, status, time.perf_counter() - t0))
        for i in range(a.warmup): await one(i)  # not counted
        out.clear(); t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(a.requests)))
        return out, time.perf_counter() - t0


def direct(p: Pipeline, a, images: list) -> dict:
    "In-process latency of the same calls, one at a time (no HTTP): median seconds per endpoint"
    ts = {}
    call = dict(classify=lambda x: p.classify(x), caption=lambda x: p.caption(x, max_new_tokens=a.max_new_tokens),
                question=lambda x: p.answer(x, QUESTION, max_new_tokens=a.max_new_tokens))
    for ep in a.endpoints:
        call[ep](images[0]); t = []
        for i in range(a.direct):
            t0 = time.perf_counter(); call[ep](images[i % len(images)]); t.append(time.perf_counter() - t0)
        ts[ep] = statistics.median(t)
    return ts


def stats(lat: list) -> dict:
    ms = np.array(lat) * 1000
    return dict(n=len(ms), p50_ms=round(float(np.percentile(ms, 50)), 1), p95_ms=round(float(np.percentile(ms, 95)), 1),
                mean_ms=round(float(ms.mean()), 1), max_ms=round(float(ms.max()), 1))


def markdown(res: dict) -> str:
    rows = ['| endpoint | requests | p50 ms | p95 ms | mean ms | in-process p50 ms |', '|---|---|---|---|---|---|']
    for ep, s in res['endpoints'].items():
        d = res['direct_p50_ms'].get(ep, '')
        rows.append(f"| /{ep} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['mean_ms']} | {d} |")
    o = res['overall']
    rows.append(f"| **all** | {o['n']} | {o['p50_ms']} | {o['p95_ms']} | {o['mean_ms']} | |")
    c = res['config']
    return (f"# pathllm serve benchmark\n\n{res['requests']} requests, {c['concurrency']} concurrent, "
            f"max_new_tokens={c['max_new_tokens']}, model `{res['model']}` ({res['n_params']:,} parameters), {res['device']}, "
            f"{res['torch_threads']} torch thread(s) in the server, {res['platform']}.\n\n"
            f"**{res['req_per_s']} requests/s**, {res['failed']} failed, wall {res['wall_s']} s.\n\n" + '\n'.join(rows) + '\n')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', default=None, help='model or pipeline folder (default: train a tiny one)')
    ap.add_argument('--requests', type=int, default=200); ap.add_argument('--concurrency', type=int, default=8)
    ap.add_argument('--endpoints', default='classify,caption,question', help='comma-separated mix, sent round-robin')
    ap.add_argument('--max-new-tokens', type=int, default=16); ap.add_argument('--warmup', type=int, default=6)
    ap.add_argument('--direct', type=int, default=10, help='in-process calls per endpoint for the baseline (0: skip)')
    ap.add_argument('--train-images', type=int, default=64, help='synthetic patches for the tiny model')
    ap.add_argument('--threads', type=int, default=1, help='torch threads of the server (OMP_NUM_THREADS)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'serve'), help='output path without suffix')
    a = ap.parse_args(); a.endpoints = a.endpoints.split(',')
    os.environ['OMP_NUM_THREADS'] = str(a.threads); torch.set_num_threads(a.threads)
    model_dir = Path(a.model) if a.model else tiny_model(Path(tempfile.mkdtemp(prefix='pathllm-bench-')), a.train_images, a.seed)
    images, key = [png(a.seed * 1000 + i) for i in range(16)], secrets.token_urlsafe(16)
    with server_process(model_dir, api_key=key, max_concurrency=a.concurrency, max_new_tokens=max(a.max_new_tokens, 16)) as url:
        info = httpx.get(url + '/health').json()
        res, wall = asyncio.run(load(url, key, a, images))
    ok = [r for r in res if r[1] == 200]
    failed = {str(s): sum(1 for r in res if r[1] == s) for s in {r[1] for r in res if r[1] != 200}}
    p = Pipeline.from_pretrained(model_dir, device='cpu')
    out = dict(model=a.model or f'tiny, trained by the bench on {a.train_images} synthetic patches', version=pathllm.__version__, device=info['device'], torch_threads=a.threads,
               n_params=sum(t.numel() for t in p.model.parameters()), platform=f'{platform.machine()}, {os.cpu_count()} CPUs',
               config=dict(requests=a.requests, concurrency=a.concurrency, endpoints=a.endpoints, max_new_tokens=a.max_new_tokens),
               requests=len(res), failed=len(res) - len(ok), failures=failed, wall_s=round(wall, 2), req_per_s=round(len(ok) / wall, 2),
               overall=stats([r[2] for r in ok]), endpoints={ep: stats([r[2] for r in ok if r[0] == ep]) for ep in a.endpoints},
               direct_p50_ms={k: round(v * 1000, 1) for k, v in (direct(p, a, images) if a.direct else {}).items()})
    o = Path(a.out); o.parent.mkdir(parents=True, exist_ok=True)
    o.with_suffix('.json').write_text(json.dumps(out, indent=2)); o.with_suffix('.md').write_text(markdown(out))
    print(markdown(out))
    if out['failed']: sys.exit(f'{out["failed"]} requests failed: {failed}')


if __name__ == '__main__': main()
