"""A bounded, reproducible load test of `dr-serve` on 127.0.0.1 (issue 14): N mixed requests (70% photos, 30% bad inputs)
from C client threads; prints status counts by kind, p50/p95 latency, and the server's RSS at start, max and end. With
--memory, also the peak RSS one request at the pixel limit adds (JPEG, PNG, TIFF, 16-bit PNG, 25 MP), and the peak of
C such requests at once (the figure for a container's memory).

    .venv/bin/python benchmarks/load.py                       # runs/demo/model, 10,000 requests, 8 at a time
    .venv/bin/python benchmarks/load.py --n 2000 --memory     # fewer requests, and the memory table
It starts its own server on a free port of 127.0.0.1 and stops it at the end; nothing leaves the machine."""
import argparse, io, json, os, random, socket, subprocess, sys, threading, time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import httpx
import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent

def status_mb(pid:int, key:str='VmRSS:') -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith(key): return int(line.split()[1]) / 1024

def fundus(seed:int=0) -> Image.Image:
    "The sample retina of scikit-image if installed, else a synthetic orange disc."
    try:
        from skimage import data
        return Image.fromarray(data.retina())
    except ImportError:
        yy, xx = np.mgrid[:1024, :1024]; disc = np.hypot(yy - 512, xx - 512) < 480
        a = np.zeros((1024, 1024, 3), np.uint8); a[disc] = (190, 95, 45); return Image.fromarray(a)

def enc(img, fmt, **kw) -> bytes: b = io.BytesIO(); img.save(b, fmt, **kw); return b.getvalue()

def inputs() -> tuple[dict, dict]:
    "Photos (name -> bytes) and bad inputs (name -> bytes)."
    r = fundus(); small = r.resize((512, 512))
    photos = {'jpeg 2MP': enc(r, 'JPEG', quality=90), 'jpeg 0.25MP': enc(small, 'JPEG', quality=90), 'png': enc(small, 'PNG'),
              'dark': enc(Image.fromarray((np.asarray(small) * 0.05).astype(np.uint8)), 'JPEG'),
              'blurred': enc(small.filter(ImageFilter.GaussianBlur(8)), 'JPEG')}
    good = photos['jpeg 2MP']
    bad = {'empty': b'', 'truncated': good[:len(good)//2], 'not an image': b'%PDF-1.4\n' + bytes(2000),
           'gif': enc(r.resize((64, 64)), 'GIF'), 'bomb': enc(Image.new('L', (10000, 8000)), 'PNG'),
           'too large': b'\xff\xd8' + bytes(21 * 2**20)}
    return photos, bad

def at_limit(pixels:int=25_000_000) -> dict:
    "25-megapixel uploads (each under the 20 MB upload limit) in each lossless format and as JPEG."
    h = int((pixels / 1.5) ** 0.5); w = pixels // h
    big = fundus().resize((384, 256)).resize((w, h), Image.BILINEAR)
    return {'JPEG': enc(big, 'JPEG', quality=90), 'PNG': enc(big, 'PNG', compress_level=1),
            'TIFF (deflate)': enc(big, 'TIFF', compression='tiff_deflate'),
            '16-bit PNG': enc(Image.fromarray(np.asarray(big.convert('L'), np.uint16) * 257), 'PNG', compress_level=1)}

def start(model:str, concurrency:int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).parent/'dr-serve'), '--model', model, '--host', '127.0.0.1', '--port', str(port),
           '--concurrency', str(concurrency), '--log_level', 'warning']
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); url = f'http://127.0.0.1:{port}'
    for _ in range(300):
        try:
            if httpx.get(url + '/ready', timeout=2).status_code == 200: return p, url
        except httpx.HTTPError: time.sleep(0.3)
    p.terminate(); raise SystemExit('dr-serve did not become ready')

def load(url:str, pid:int, n:int, clients:int, seed:int) -> dict:
    photos, bad = inputs(); rng = random.Random(seed)
    kinds = [('photo', rng.choice(list(photos))) if rng.random() < 0.7 else ('bad', rng.choice(list(bad))) for _ in range(n)]
    rss = {'start': status_mb(pid), 'max': status_mb(pid)}; done = threading.Event()
    def watch():
        while not done.wait(0.05): rss['max'] = max(rss['max'], status_mb(pid))
    threading.Thread(target=watch, daemon=True).start()
    def one(k):
        data = photos[k[1]] if k[0] == 'photo' else bad[k[1]]
        t = time.perf_counter(); r = c.post('/predict', files={'file': ('x', data)})
        return k, r.status_code, (time.perf_counter() - t) * 1000
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as c, ThreadPoolExecutor(clients) as ex:
        res = list(ex.map(one, kinds))
    dt = time.perf_counter() - t0; done.set(); time.sleep(0.5); rss['end'] = status_mb(pid)
    ms = np.array([m for _, _, m in res])
    by = Counter(f'{k[0]}:{k[1]} -> {s}' for k, s, _ in res)
    return dict(requests=n, clients=clients, seconds=round(dt, 1), per_s=round(n / dt, 1),
                status=dict(Counter(str(s) for _, s, _ in res)), by_kind=dict(sorted(by.items())),
                p50_ms=round(float(np.percentile(ms, 50)), 1), p95_ms=round(float(np.percentile(ms, 95)), 1),
                rss_mb={k: round(v, 1) for k, v in rss.items()})

def memory(url:str, pid:int, concurrency:int) -> dict:
    "Peak RSS above idle of one 25-MP request per format, and of `concurrency` at once of the worst."
    ups, out = at_limit(), {}
    with httpx.Client(base_url=url, timeout=300) as c:
        for name, data in ups.items():
            c.post('/predict', files={'file': ('w', data)}); time.sleep(0.3)
            idle = status_mb(pid); Path(f'/proc/{pid}/clear_refs').write_text('5')
            code = c.post('/predict', files={'file': ('w', data)}).status_code
            out[name] = dict(upload_mb=round(len(data) / 2**20, 1), status=code, peak_above_idle_mb=round(status_mb(pid, 'VmHWM:') - idle, 1))
        worst = max(out, key=lambda k: out[k]['peak_above_idle_mb'])
        time.sleep(0.3); idle = status_mb(pid); Path(f'/proc/{pid}/clear_refs').write_text('5')
        with ThreadPoolExecutor(concurrency) as ex:
            codes = list(ex.map(lambda _: c.post('/predict', files={'file': ('w', ups[worst])}).status_code, range(concurrency)))
        out[f'{concurrency} x {worst} at once'] = dict(status=codes, idle_mb=round(idle, 1),
                                                      peak_mb=round(status_mb(pid, 'VmHWM:'), 1))
    return out

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default=str(ROOT/'runs'/'demo'/'model'))
    ap.add_argument('--n', type=int, default=10_000); ap.add_argument('--clients', type=int, default=8)
    ap.add_argument('--concurrency', type=int, default=2); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--memory', action='store_true', help='also the per-request peak memory at the pixel limit')
    a = ap.parse_args()
    proc, url = start(a.model, a.concurrency)
    try:
        report = {'load': load(url, proc.pid, a.n, a.clients, a.seed) if a.n else None}
        if a.memory: report['memory'] = memory(url, proc.pid, a.concurrency)
        report['server_alive'] = proc.poll() is None
        print(json.dumps(report, indent=1))
    finally: proc.terminate(); proc.wait(10)
