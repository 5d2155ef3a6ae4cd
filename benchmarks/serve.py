"""Speed of the service against the model's raw onnxruntime speed, in one run.

    .venv/bin/python benchmarks/serve.py --model runs/demo/model            # starts dr-serve on 127.0.0.1 itself
    .venv/bin/python benchmarks/serve.py --model runs/demo/model --url http://127.0.0.1:8000   # a server already running

Measures: p50/p95 latency of POST /predict at concurrency 1, throughput at concurrency 16, the same model's raw in-process
onnxruntime latency and throughput (prepared input, same threads as the server), the whole pipeline in-process (no HTTP),
onnxruntime on batches of 8 against single photos (whether dynamic batching could pay), and onnxruntime against PyTorch
per image. Ratios are printed last.
Targets (issue 7): throughput >= 0.9x raw; p50 at concurrency 1 <= raw latency + 10 ms.
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

def raw_ort(model_dir, data, threads, conc, n) -> tuple[list[float], float]:
    "In-process onnxruntime on the prepared input of `data`: per-call latencies (sequential) and images/s with `conc` callers."
    from dr_detection.serve import ServedModel
    m = ServedModel(model_dir, threads=threads)
    x, _ = m.inputs(data)
    for _ in range(5): m.run(x)
    lat = []
    for _ in range(n): t = time.perf_counter(); m.run(x); lat.append(time.perf_counter() - t)
    with ThreadPoolExecutor(conc) as ex:
        t = time.perf_counter(); list(ex.map(lambda _: m.run(x), range(n))); tput = n / (time.perf_counter() - t)
    full = []
    for _ in range(max(10, n // 3)): t = time.perf_counter(); m.predict(data); full.append(time.perf_counter() - t)
    return lat, tput, full

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
        lat, R['steps_ms'] = latency(url, name, data, a.n)
        R['p50_ms'], R['p95_ms'] = pct(lat, 50), pct(lat, 95)
        print(f'server, concurrency 1:   p50 {R["p50_ms"]:.1f} ms   p95 {R["p95_ms"]:.1f} ms   '
              f'(server-side medians, ms: {R["steps_ms"]}; the quality check runs alongside preprocessing + inference)', flush=True)
        R['tput'] = throughput(url, name, data, a.n, 16)
        print(f'server, concurrency 16:  {R["tput"]:.1f} photos/s', flush=True)
        rl, R['raw_tput'], full = raw_ort(model_dir, data, threads, conc, a.n)
        R['raw_p50_ms'], R['inproc_p50_ms'] = pct(rl, 50), pct(full, 50)
        print(f'raw onnxruntime in-process ({conc} callers x {threads} thread): latency p50 {R["raw_p50_ms"]:.1f} ms, {R["raw_tput"]:.1f} photos/s', flush=True)
        print(f'in-process whole pipeline (quality check + preprocessing + onnxruntime, no HTTP): p50 {R["inproc_p50_ms"]:.1f} ms', flush=True)
        if not a.no_batch_compare:
            R['ort_batch8'], R['ort_batch1'] = ort_batching(model_dir, data, cores, a.n)
            print(f'onnxruntime alone: batches of 8 on {cores} threads {R["ort_batch8"]:.1f} photos/s, single photos x {cores} parallel calls {R["ort_batch1"]:.1f} photos/s', flush=True)
        tv = torch_vs_ort(model_dir, cores, max(10, a.n // 5))
        if tv: R['torch_ms'], R['ort_ms'] = tv[0] * 1000, tv[1] * 1000; print(f'per image, batch 1, {cores} threads: PyTorch {R["torch_ms"]:.1f} ms, onnxruntime {R["ort_ms"]:.1f} ms')
    finally:
        for pr in procs: pr.terminate(); pr.wait(10)
    if a.json: Path(a.json).write_text(json.dumps(R, indent=2))
    print('\nratios')
    print(f'throughput server/raw:            {R["tput"]/R["raw_tput"]:.2f}x   (target >= 0.90)')
    print(f'p50 latency server - raw:         {R["p50_ms"] - R["raw_p50_ms"]:+.1f} ms (target <= +10 ms)')
    print(f'p50 latency server - in-process pipeline: {R["p50_ms"] - R["inproc_p50_ms"]:+.1f} ms (the HTTP layer alone)')
    if 'ort_batch8' in R: print(f'batching gain at the onnxruntime level: {R["ort_batch8"]/R["ort_batch1"]:.2f}x   (upper bound of what dynamic batching could add)')
    if 'torch_ms' in R: print(f'onnxruntime vs PyTorch speed-up:  {R["torch_ms"]/R["ort_ms"]:.2f}x   (per image, batch 1, this CPU)')

if __name__ == '__main__': main()
