"""Speed of the service against the model's raw onnxruntime speed, in one run.

    .venv/bin/python benchmarks/serve.py --model runs/demo/model            # starts dr-serve on 127.0.0.1 itself
    .venv/bin/python benchmarks/serve.py --model runs/demo/model --url http://127.0.0.1:8000   # a server already running

Measures: p50/p95 latency of POST /predict at concurrency 1, throughput at concurrency 16, and two in-process baselines
with the server's thread settings (`cores` calls at once, 1 onnxruntime thread each):
  A. raw onnxruntime inference alone, on the already prepared input (the baseline issue 7's targets name);
  B. the raw in-process full pipeline: exactly the server's work per photo (decode, 01's quality check, 02's prepare_file,
     the cache's JPEG re-encoding, onnxruntime), called directly, no HTTP.
Also onnxruntime on batches of 8 against single photos (whether dynamic batching could pay), and onnxruntime against
PyTorch per image. Ratios are printed last, against both baselines, each target marked met or not.
Targets (issue 7): throughput at concurrency 16 >= 0.9x raw; p50 at concurrency 1 <= raw latency + 10 ms.
"""
import argparse, io, json, os, socket, statistics, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
import httpx

def photo_bytes(model_dir:Path, path=None) -> tuple[str, bytes]:
    "The photo to send: `path`, else a test-split photo of the model's run (manifest.csv), else scikit-image's sample retina."
    if path: return Path(path).name, Path(path).read_bytes()
    man = model_dir.parent/'manifest.csv'
    if man.exists():
        import pandas as pd
        m = pd.read_csv(man, keep_default_na=False)
        for p in m[m.split == 'test'].path.tolist() + m.path.tolist():
            if Path(p).exists(): return Path(p).name, Path(p).read_bytes()
    from skimage import data
    from PIL import Image
    b = io.BytesIO(); Image.fromarray(data.retina()).save(b, 'JPEG', quality=90)
    return 'skimage-retina.jpeg', b.getvalue()

def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def start_server(model_dir, *args):
    port = free_port(); url = f'http://127.0.0.1:{port}'
    p = subprocess.Popen([sys.executable, '-c', 'from dr_detection.serve import main; main()', '--model', str(model_dir),
                          '--port', str(port), '--log-level', 'warning', *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            if httpx.get(url + '/ready', timeout=2).status_code == 200: return p, url
        except httpx.HTTPError: pass
        if p.poll() is not None: raise SystemExit('dr-serve exited at start')
        time.sleep(0.2)
    p.terminate(); raise SystemExit('dr-serve not ready')

def latency(url, name, data, n) -> tuple[list[float], dict]:
    "Seconds per request, one at a time; and the median of the server's own timing of each step (ms)."
    out, steps = [], []
    with httpx.Client(base_url=url, timeout=120) as c:
        for i in range(n + 5):
            t = time.perf_counter(); r = c.post('/predict', files={'file': (name, data, 'image/jpeg')}); dt = time.perf_counter() - t
            assert r.status_code == 200, r.text
            if i >= 5: out.append(dt); steps.append(r.json()['timing_ms'])
    return out, {k: statistics.median(s[k] for s in steps) for k in ('quality', 'preprocess', 'inference', 'total')}

def throughput(url, name, data, n, conc) -> float:
    "Requests per second with `conc` requests in flight."
    with httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=conc)) as c, ThreadPoolExecutor(conc) as ex:
        def one(_): r = c.post('/predict', files={'file': (name, data, 'image/jpeg')}); assert r.status_code == 200, r.text
        list(ex.map(one, range(conc)))  # warm connections
        t = time.perf_counter(); list(ex.map(one, range(n))); return n / (time.perf_counter() - t)

def _rate(fn, conc, n) -> float:
    "Calls per second of `fn()` with `conc` callers at once."
    with ThreadPoolExecutor(conc) as ex:
        list(ex.map(lambda _: fn(), range(conc)))  # warm the threads
        t = time.perf_counter(); list(ex.map(lambda _: fn(), range(n))); return n / (time.perf_counter() - t)

def _lat(fn, n) -> list[float]:
    "Seconds per call of `fn()`, one at a time, after 5 warm-up calls."
    for _ in range(5): fn()
    out = []
    for _ in range(n): t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return out

def baselines(model_dir, data, threads):
    """The two in-process baselines, as functions of no argument, on one `ServedModel` with the server's thread setting:
    A. `m.run(x)`: onnxruntime inference alone on the prepared input; B. `m.predict(data)`: the server's whole work per photo."""
    from dr_detection.serve import ServedModel
    m = ServedModel(model_dir, threads=threads)
    x, _ = m.inputs(data)
    return (lambda: m.run(x)), (lambda: m.predict(data))

def ort_batching(model_dir, data, cores, n) -> tuple[float, float]:
    """Images/s of onnxruntime alone: batches of 8 in one call using all cores, against single images in `cores` parallel calls (1 thread each).
    The first is the most dynamic batching could give the service; if it is not faster, batching cannot raise throughput."""
    from dr_detection.serve import ServedModel
    m1, mall = ServedModel(model_dir, threads=1), ServedModel(model_dir, threads=cores)
    x, _ = m1.inputs(data); x8 = np.repeat(x, 8, 0)
    for _ in range(3): mall.run(x8); m1.run(x)
    t = time.perf_counter()
    for _ in range(max(2, n // 8)): mall.run(x8)
    b8 = max(2, n // 8) * 8 / (time.perf_counter() - t)
    with ThreadPoolExecutor(cores) as ex:
        t = time.perf_counter(); list(ex.map(lambda _: m1.run(x), range(n))); b1 = n / (time.perf_counter() - t)
    return b8, b1

def torch_vs_ort(model_dir, threads, n) -> tuple[float, float] | None:
    "Seconds per image, batch 1, for PyTorch (from model.safetensors) and onnxruntime, with the same thread count."
    if not (Path(model_dir)/'model.safetensors').exists(): return None
    try: import torch; from dr_detection.train import load_model
    except ImportError: return None
    import onnxruntime as ort
    net, meta = load_model(model_dir); S = meta['input_size']
    torch.set_num_threads(threads)
    x = torch.randn(1, 3, S, S)
    with torch.no_grad():
        for _ in range(3): net(x)
        t = time.perf_counter()
        for _ in range(n): net(x)
        pt = (time.perf_counter() - t) / n
    o = ort.SessionOptions(); o.intra_op_num_threads = threads
    s = ort.InferenceSession(str(Path(model_dir)/'model.onnx'), o, providers=['CPUExecutionProvider'])
    xn = x.numpy()
    for _ in range(3): s.run(None, {'image': xn})
    t = time.perf_counter()
    for _ in range(n): s.run(None, {'image': xn})
    return pt, (time.perf_counter() - t) / n

def pct(v, q): return float(np.percentile(np.asarray(v) * 1000, q))

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='runs/demo/model', help='model folder (for the raw measurements, and the server this script starts)')
    p.add_argument('--url', default=None, help='a running server on 127.0.0.1 (default: start dr-serve here)')
    p.add_argument('--photo', default=None, help='photo to send (default: a test photo of the run, else the scikit-image retina)')
    p.add_argument('--n', type=int, default=100, help='requests for the latency and throughput runs')
    p.add_argument('--rounds', type=int, default=3, help='rounds of (server, A, B) measurements, interleaved so that load changes on a shared machine hit all three alike; medians reported')
    p.add_argument('--no-batch-compare', action='store_true', help='skip the batching measurement')
    p.add_argument('--json', default=None, help='also write the figures to this JSON file')
    a = p.parse_args(argv)
    model_dir = Path(a.model)
    name, data = photo_bytes(model_dir, a.photo)
    cores = len(os.sched_getaffinity(0))
    procs, R = [], {}
    try:
        if a.url: url = a.url
        else: proc, url = start_server(model_dir); procs.append(proc)
        settings = {k: v for k, v in httpx.get(url + '/model').json().items() if k in ('model_version', 'arch', 'input_size')}
        conc, threads = cores, 1  # the server's defaults: `cores` predictions at once, 1 onnxruntime thread each
        print(f'model {settings}; photo {name} ({len(data)/1e3:.0f} kB); {cores} cores; server {url}', flush=True)
        A, B = baselines(model_dir, data, threads)
        lat, lA, lB, tS, tA, tB, steps = [], [], [], [], [], [], []
        for r in range(a.rounds):  # interleaved: server, A, B in every round
            l, st = latency(url, name, data, a.n); lat += l; steps.append(st)
            tS.append(throughput(url, name, data, a.n, 16))
            lA += _lat(A, a.n); tA.append(_rate(A, conc, a.n))
            lB += _lat(B, a.n); tB.append(_rate(B, conc, a.n))
            print(f'round {r+1}/{a.rounds}: photos/s server {tS[-1]:.1f}, A {tA[-1]:.1f}, B {tB[-1]:.1f}', flush=True)
        med = statistics.median
        R['steps_ms'] = {k: med(s_[k] for s_ in steps) for k in steps[0]}
        R['p50_ms'], R['p95_ms'], R['tput'] = pct(lat, 50), pct(lat, 95), med(tS)
        R['raw_p50_ms'], R['raw_tput'] = pct(lA, 50), med(tA)
        R['pipe_p50_ms'], R['pipe_tput'] = pct(lB, 50), med(tB)
        print(f'server, concurrency 1:   p50 {R["p50_ms"]:.1f} ms   p95 {R["p95_ms"]:.1f} ms   '
              f'(server-side medians, ms: {R["steps_ms"]}; the quality check runs alongside preprocessing + inference)', flush=True)
        print(f'server, concurrency 16:  {R["tput"]:.1f} photos/s (median of {a.rounds} rounds)', flush=True)
        print(f'A. raw onnxruntime inference alone, in-process ({conc} callers x {threads} thread): latency p50 {R["raw_p50_ms"]:.1f} ms, {R["raw_tput"]:.1f} photos/s', flush=True)
        print(f'B. raw in-process full pipeline (decode + quality check + prepare + re-encode + onnxruntime, no HTTP; {conc} callers x {threads} thread): '
              f'latency p50 {R["pipe_p50_ms"]:.1f} ms, {R["pipe_tput"]:.1f} photos/s', flush=True)
        if not a.no_batch_compare:
            R['ort_batch8'], R['ort_batch1'] = ort_batching(model_dir, data, cores, a.n)
            print(f'onnxruntime alone: batches of 8 on {cores} threads {R["ort_batch8"]:.1f} photos/s, single photos x {cores} parallel calls {R["ort_batch1"]:.1f} photos/s', flush=True)
        tv = torch_vs_ort(model_dir, cores, max(10, a.n // 5))
        if tv: R['torch_ms'], R['ort_ms'] = tv[0] * 1000, tv[1] * 1000; print(f'per image, batch 1, {cores} threads: PyTorch {R["torch_ms"]:.1f} ms, onnxruntime {R["ort_ms"]:.1f} ms')
    finally:
        for pr in procs: pr.terminate(); pr.wait(10)
    if a.json: Path(a.json).write_text(json.dumps(R, indent=2))
    met = lambda ok: 'met' if ok else 'NOT met'
    print('\nratios (server = dr-serve over HTTP; issue 7 targets: throughput >= 0.90x, p50 <= baseline + 10 ms)')
    print('against A, raw onnxruntime inference alone (the baseline issue 7 names):')
    print(f'  throughput server/A:   {R["tput"]/R["raw_tput"]:.2f}x     target >= 0.90x: {met(R["tput"]/R["raw_tput"] >= 0.9)}')
    print(f'  p50 latency server-A:  {R["p50_ms"] - R["raw_p50_ms"]:+.1f} ms  target <= +10 ms: {met(R["p50_ms"] - R["raw_p50_ms"] <= 10)}')
    print('against B, raw in-process full pipeline (same work as the server, no HTTP: what the service layer itself costs):')
    print(f'  throughput server/B:   {R["tput"]/R["pipe_tput"]:.2f}x     same threshold 0.90x: {met(R["tput"]/R["pipe_tput"] >= 0.9)}')
    print(f'  p50 latency server-B:  {R["p50_ms"] - R["pipe_p50_ms"]:+.1f} ms  same threshold +10 ms: {met(R["p50_ms"] - R["pipe_p50_ms"] <= 10)}')
    if 'ort_batch8' in R: print(f'batching gain at the onnxruntime level: {R["ort_batch8"]/R["ort_batch1"]:.2f}x   (upper bound of what dynamic batching could add)')
    if 'torch_ms' in R: print(f'onnxruntime vs PyTorch speed-up:  {R["torch_ms"]/R["ort_ms"]:.2f}x   (per image, batch 1, this CPU)')

if __name__ == '__main__': main()
