"""Speed of the service against the model's raw onnxruntime speed, in one run.

    .venv/bin/python benchmarks/serve.py --model runs/demo/model            # starts dr-serve on 127.0.0.1 itself
    .venv/bin/python benchmarks/serve.py --model runs/demo/model --url http://127.0.0.1:8000   # a server already running
    .venv/bin/python benchmarks/serve.py --arch resnet50 --size 512 --photo P.jpeg   # an untrained model of another architecture/size

Measures: p50/p95 latency of POST /predict at concurrency 1, throughput at concurrency 16, and two in-process baselines:
  A. raw onnxruntime inference alone, on the already prepared input (the baseline issue 7's targets name), in the better
     of two arrangements for each figure: latency = the lower p50 of (1 thread) and (onnxruntime's default: all cores);
     throughput = the higher of (`cores` calls at once, 1 thread each) and (one call at a time, all cores);
  B. the raw in-process full pipeline: exactly the server's work per photo (decode, 01's quality check, 02's prepare_file,
     the cache's JPEG re-encoding, onnxruntime), `ServedModel.predict` called directly with the server's settings, no HTTP.
The HTTP client is Python's http.client with the multipart body encoded once (the same bytes httpx or curl would send):
it shares the CPU with the server, so it should cost as little as it can (httpx adds ~1 ms per request).
Also onnxruntime on batches of 8 against single photos (whether dynamic batching could pay), and onnxruntime against
PyTorch per image. Ratios are printed last, against both baselines, each target marked met or not.
Targets (issue 7): throughput at concurrency 16 >= 0.9x raw; p50 at concurrency 1 <= raw latency + 10 ms.
"""
import argparse, http.client, io, json, os, socket, statistics, subprocess, sys, threading, time, uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
import httpx

def photo_bytes(model_dir:Path, path=None) -> tuple[str, bytes]:
    "The photo to send: `path`, else a test-split photo of the model's run (manifest.csv), else scikit-image's sample retina."
    if path: return Path(path).name, Path(path).read_bytes()
    if (model_dir.parent/'manifest.csv').exists():
        from dr_detection.data import read_table
        m = read_table(model_dir.parent, 'manifest.csv')
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
    p = subprocess.Popen([str(Path(sys.executable).parent/'dr-serve'), '--model', str(model_dir), '--port', str(port),
                          '--log_level', 'warning', *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            if httpx.get(url + '/ready', timeout=2).status_code == 200: return p, url
        except httpx.HTTPError: pass
        if p.poll() is not None: raise SystemExit('dr-serve exited at start')
        time.sleep(0.2)
    p.terminate(); raise SystemExit('dr-serve not ready')

def multipart(name, data, field='file', ctype='image/jpeg') -> tuple[bytes, dict]:
    "A multipart/form-data body with one file, and its headers."
    b = uuid.uuid4().hex
    body = (f'--{b}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\nContent-Type: {ctype}\r\n\r\n').encode() + data + f'\r\n--{b}--\r\n'.encode()
    return body, {'Content-Type': f'multipart/form-data; boundary={b}'}

class Poster:
    "POST /predict over one kept-alive http.client connection per thread."
    def __init__(self, url, name, data):
        self.host, self.port = url.split('//')[1].split(':'); self.body, self.headers = multipart(name, data); self.local = threading.local()
    def __call__(self) -> bytes:
        c = getattr(self.local, 'c', None)
        if c is not None:
            try: return self._post(c)
            except (ConnectionError, http.client.RemoteDisconnected): c.close()  # the server closed an idle kept-alive connection (uvicorn: after 5 s)
        self.local.c = c = http.client.HTTPConnection(self.host, int(self.port), timeout=300)
        return self._post(c)
    def _post(self, c) -> bytes:
        c.request('POST', '/predict', body=self.body, headers=self.headers); r = c.getresponse(); out = r.read()
        assert r.status == 200, out
        return out

def latency(post, n) -> tuple[list[float], dict]:
    "Seconds per request, one at a time; and the median of the server's own timing of each step (ms)."
    out, steps = [], []
    for i in range(n + 5):
        t = time.perf_counter(); r = post(); dt = time.perf_counter() - t
        if i >= 5: out.append(dt); steps.append(json.loads(r)['timing_ms'])
    return out, {k: statistics.median(s[k] for s in steps) for k in ('quality', 'preprocess', 'inference', 'total')}

def throughput(post, n, conc) -> float:
    "Requests per second with `conc` requests in flight."
    with ThreadPoolExecutor(conc) as ex:
        list(ex.map(lambda _: post(), range(conc)))  # open and warm the connections
        t = time.perf_counter(); list(ex.map(lambda _: post(), range(n))); return n / (time.perf_counter() - t)

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
    """The in-process baselines, as functions of no argument: A1 onnxruntime alone on the prepared input with 1 thread, A2 with
    onnxruntime's default (all cores); B `m.predict(data)`: the server's whole work per photo, on a `ServedModel` with the server's settings."""
    from dr_detection.infer import onnx_path, ort_session
    from dr_detection.serve import ServedModel
    m = ServedModel(model_dir, threads=threads)
    x, _ = m.inputs(data); feed = {m.meta.onnx.input: x}
    s1, sall = ort_session(onnx_path(m.dir, m.meta), 1), ort_session(onnx_path(m.dir, m.meta), 0)
    return (lambda: s1.run(None, feed)), (lambda: sall.run(None, feed)), (lambda: m.predict(data))

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
    """Seconds per image, batch 1, for PyTorch (from model.safetensors) and onnxruntime, with the same thread count, medians of 3
    rounds each. onnxruntime first, before torch is even imported: PyTorch's OpenMP threads keep spinning after its calls and made
    a two-thread onnxruntime call measured after them twice as slow in some runs."""
    if not (Path(model_dir)/'model.safetensors').exists(): return None
    from dr_detection.infer import load_meta, onnx_path, ort_session
    meta = load_meta(model_dir); S = meta.input_size
    x = np.random.default_rng(0).standard_normal((1, 3, S, S), dtype=np.float32)
    s = ort_session(onnx_path(model_dir, meta), threads); feed = {meta.onnx.input: x}
    def per(f):
        for _ in range(3): f()
        t = time.perf_counter()
        for _ in range(n): f()
        return (time.perf_counter() - t) / n
    ot = statistics.median(per(lambda: s.run(None, feed)) for _ in range(3))
    try: import torch; from dr_detection.train import load_torch_model
    except ImportError: return None
    net, _ = load_torch_model(model_dir); torch.set_num_threads(threads); xt = torch.from_numpy(x)
    with torch.no_grad(): pt = statistics.median(per(lambda: net(xt)) for _ in range(3))
    return pt, ot

def untrained_model(arch:str, size:int) -> Path:
    "A model folder written by 03_train's own `save_model` for an untrained `arch` at `size` px (speed does not depend on the weights)."
    import tempfile
    from dr_detection.config import load_config
    from dr_detection.train import build_model, save_model
    d = Path(tempfile.mkdtemp(prefix='dr_bench_'))/'model'
    save_model(build_model(arch, pretrained=False), load_config(None, overrides={'train.arch': arch, 'preprocess.size': size}), d)
    return d

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
    p.add_argument('--arch', default=None, help='instead of --model: an untrained model of this architecture (e.g. resnet50), for speed only')
    p.add_argument('--size', type=int, default=512, help='input size of the --arch model (default 512, as configs/eyepacs.yaml)')
    p.add_argument('--torch-vs-ort-only', action='store_true', help=argparse.SUPPRESS)  # the PyTorch comparison, run in a process of its own
    a = p.parse_args(argv)
    if a.torch_vs_ort_only:
        threads = int(os.environ.get('DR_BENCH_THREADS', len(os.sched_getaffinity(0))))
        print(json.dumps(torch_vs_ort(a.model, threads, max(10, a.n // 5)))); return
    model_dir = untrained_model(a.arch, a.size) if a.arch else Path(a.model)
    name, data = photo_bytes(model_dir, a.photo)
    cores = len(os.sched_getaffinity(0))
    # first, in a fresh process, before any other engine has threads in this one or a server runs: idle threads must not share the CPU with the measured engine
    # on 1 thread and on all cores (on this virtual machine, two-thread runs are twice as slow in some minutes; one-thread runs are steady)
    tv = {t: json.loads(subprocess.run([sys.executable, __file__, '--model', str(model_dir), '--n', str(a.n), '--torch-vs-ort-only'],
                                       capture_output=True, text=True, check=True, env={**os.environ, 'DR_BENCH_THREADS': str(t)}).stdout.strip().splitlines()[-1])
          for t in sorted({1, cores})}
    procs, R = [], {}
    try:
        if a.url: url = a.url
        else: proc, url = start_server(model_dir); procs.append(proc)
        settings = {k: v for k, v in httpx.get(url + '/model').json().items() if k in ('model_version', 'arch', 'input_size')}
        conc, threads = cores, 1  # the server's defaults: `cores` predictions at once, 1 onnxruntime thread each
        print(f'model {settings}; photo {name} ({len(data)/1e3:.0f} kB); {cores} cores; server {url}', flush=True)
        A1, A2, B = baselines(model_dir, data, threads)
        post = Poster(url, name, data)
        lat, lA1, lA2, lB, tS, tA1, tA2, tB, steps = [], [], [], [], [], [], [], [], []
        for r in range(a.rounds):  # interleaved: server, A, B in every round
            l, st = latency(post, a.n); lat += l; steps.append(st)
            tS.append(throughput(post, a.n, 16))
            lA1 += _lat(A1, a.n); lA2 += _lat(A2, a.n); tA1.append(_rate(A1, conc, a.n)); tA2.append(_rate(A2, 1, a.n))
            lB += _lat(B, a.n); tB.append(_rate(B, conc, a.n))
            print(f'round {r+1}/{a.rounds}: photos/s server {tS[-1]:.1f}, A {max(tA1[-1], tA2[-1]):.1f}, B {tB[-1]:.1f}', flush=True)
        med = statistics.median
        R['steps_ms'] = {k: med(s_[k] for s_ in steps) for k in steps[0]}
        R['p50_ms'], R['p95_ms'], R['tput'] = pct(lat, 50), pct(lat, 95), med(tS)
        R['raw_1thread_p50_ms'], R['raw_allcores_p50_ms'] = pct(lA1, 50), pct(lA2, 50)
        R['raw_1thread_x_cores_tput'], R['raw_allcores_tput'] = med(tA1), med(tA2)
        R['raw_p50_ms'], R['raw_tput'] = min(R['raw_1thread_p50_ms'], R['raw_allcores_p50_ms']), max(R['raw_1thread_x_cores_tput'], R['raw_allcores_tput'])
        R['pipe_p50_ms'], R['pipe_tput'] = pct(lB, 50), med(tB)
        print(f'server, concurrency 1:   p50 {R["p50_ms"]:.1f} ms   p95 {R["p95_ms"]:.1f} ms   '
              f'(server-side medians, ms: {R["steps_ms"]}; the quality check runs alongside preprocessing)', flush=True)
        print(f'server, concurrency 16:  {R["tput"]:.1f} photos/s (median of {a.rounds} rounds)', flush=True)
        print(f'A. raw onnxruntime inference alone, in-process: latency p50 {R["raw_1thread_p50_ms"]:.1f} ms on 1 thread, {R["raw_allcores_p50_ms"]:.1f} ms on {cores} (default); '
              f'throughput {R["raw_1thread_x_cores_tput"]:.1f} photos/s ({conc} calls x 1 thread), {R["raw_allcores_tput"]:.1f} photos/s (1 call x {cores} threads); '
              f'baseline = the better of each: {R["raw_p50_ms"]:.1f} ms, {R["raw_tput"]:.1f} photos/s', flush=True)
        print(f'B. raw in-process full pipeline (decode + quality check + prepare + re-encode + onnxruntime, no HTTP; server settings): '
              f'latency p50 {R["pipe_p50_ms"]:.1f} ms, {R["pipe_tput"]:.1f} photos/s ({conc} calls at once)', flush=True)
        if not a.no_batch_compare:
            R['ort_batch8'], R['ort_batch1'] = ort_batching(model_dir, data, cores, a.n)
            print(f'onnxruntime alone: batches of 8 on {cores} threads {R["ort_batch8"]:.1f} photos/s, single photos x {cores} parallel calls {R["ort_batch1"]:.1f} photos/s', flush=True)
        for t, v in tv.items():
            if v: R[f'torch_ms_{t}t'], R[f'ort_ms_{t}t'] = v[0] * 1000, v[1] * 1000; print(f'per image, batch 1, {t} thread(s): PyTorch {v[0]*1000:.1f} ms, onnxruntime {v[1]*1000:.1f} ms (measured first, in a process of its own)')
    finally:
        for pr in procs: pr.terminate(); pr.wait(10)
        if a.arch: import shutil; shutil.rmtree(model_dir.parent, ignore_errors=True)
    if a.json: Path(a.json).write_text(json.dumps(R, indent=2))
    met = lambda ok: 'met' if ok else 'NOT met'
    print('\nratios (server = dr-serve over HTTP; issue 7 targets: throughput >= 0.90x, p50 <= baseline + 10 ms)')
    print('against A, raw onnxruntime inference alone (the baseline issue 7 names; its better arrangement for each figure):')
    print(f'  throughput server/A:   {R["tput"]/R["raw_tput"]:.2f}x     target >= 0.90x: {met(R["tput"]/R["raw_tput"] >= 0.9)}')
    print(f'  p50 latency server-A:  {R["p50_ms"] - R["raw_p50_ms"]:+.1f} ms  target <= +10 ms: {met(R["p50_ms"] - R["raw_p50_ms"] <= 10)}')
    print('against B, raw in-process full pipeline (same work as the server, no HTTP: what the service layer itself costs):')
    print(f'  throughput server/B:   {R["tput"]/R["pipe_tput"]:.2f}x     same threshold 0.90x: {met(R["tput"]/R["pipe_tput"] >= 0.9)}')
    print(f'  p50 latency server-B:  {R["p50_ms"] - R["pipe_p50_ms"]:+.1f} ms  same threshold +10 ms: {met(R["p50_ms"] - R["pipe_p50_ms"] <= 10)}')
    if 'ort_batch8' in R: print(f'batching gain at the onnxruntime level: {R["ort_batch8"]/R["ort_batch1"]:.2f}x   (upper bound of what dynamic batching could add)')
    for t in tv:
        if f'torch_ms_{t}t' in R: print(f'onnxruntime vs PyTorch speed-up, {t} thread(s):  {R[f"torch_ms_{t}t"]/R[f"ort_ms_{t}t"]:.2f}x   (per image, batch 1, this CPU)')

if __name__ == '__main__': main()
